"""Builds carry the project's own files (dbt project, alert rules, crontab, Makefile) as package
data under medical_etl/project/, so an installed medical-etl works outside a checkout.
Everything else is in setup.cfg."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROJECT_FILES = ["medical_warehouse", "monitor/pipeline_alerts.json", "crontab", "Makefile"]
SKIP = shutil.ignore_patterns("target", "logs", "dbt_packages", ".user.yml", "__pycache__")


class BuildWithProjectFiles(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout itself
            return
        dest = Path(self.build_lib) / "medical_etl" / "project"
        for name in PROJECT_FILES:
            src, out = Path(name), dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, out, ignore=SKIP, dirs_exist_ok=True)
            else:
                shutil.copy2(src, out)


setup(cmdclass={"build_py": BuildWithProjectFiles})
