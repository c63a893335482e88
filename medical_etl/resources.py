"""Where the project's own files are: the dbt project, the alert rules, the crontab and the Makefile.

In a checkout they are the checkout's files (``medical_warehouse/``, ``monitor/pipeline_alerts.json``,
``crontab``, ``Makefile``). A built package (``pip install .``, not editable) carries a copy under
``medical_etl/project/`` (see setup.py), used when present, so an installed ``medical-etl`` works
from any folder. ``DBT_PROJECT_DIR`` (a setting) points the transform stage at another dbt project.
"""
from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().with_name("project")
CHECKOUT = Path(__file__).resolve().parents[1]


def project_root() -> Path:
    """The installed copy when this package was built with one, else the checkout around it."""
    return PACKAGED if (PACKAGED / "Makefile").is_file() else CHECKOUT


def dbt_project() -> Path:
    return project_root() / "medical_warehouse"


def alert_rules() -> Path:
    return project_root() / "monitor" / "pipeline_alerts.json"


def crontab_template() -> Path:
    return project_root() / "crontab"


def makefile() -> Path:
    return project_root() / "Makefile"
