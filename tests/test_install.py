"""A built package (``pip install .``, not editable) works outside the checkout: the dbt project,
the alert rules, the crontab and the Makefile's job definitions travel with it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO, SHARED_MODEL, query


def _source_copy(dest: Path) -> Path:
    """The checkout's files as git sees them (committed or not, ignored ones left out)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file() and not src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the built wheel; the dependencies come from this venv (a .pth file),
    not the package itself: the test venv's editable finder is not loaded there."""
    tmp = tmp_path_factory.mktemp("install")
    src = _source_copy(tmp / "src")
    # source distribution first, then the wheel from it: both must carry the project's files
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp / "sdist")], cwd=src, check=True,
                   capture_output=True)
    sdist = next((tmp / "sdist").glob("medical*etl-*.tar.gz"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(sdist)], check=True, capture_output=True)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    wheel = next((tmp / "dist").glob("medical_etl-*.whl"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, env=clean)
    assert (venv / "bin" / "medical-etl").is_file()
    # then the dependencies: this venv's packages, after the package (pip would take this venv's
    # editable medical_etl for an installed one)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, env=clean).stdout.strip())
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _env(settings, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DB_", "VIRTUAL_ENV"))}
    env.update(DB_HOST=settings.db_host, DB_PORT=str(settings.db_port), DB_NAME=settings.db_name,
               DB_USER=settings.db_user, RAW_DATA_PATH=str(home / "lake"), LOGS_PATH=str(home / "logs"),
               TELEGRAM_SOURCE="sample", YOLO_MODEL=str(SHARED_MODEL), YOLO_OFFLINE="1", STAGE_RETRIES="0")
    return env


def test_the_installed_package_carries_its_project_files(installed, tmp_path):
    out = subprocess.run([str(installed / "bin" / "python"), "-c", """
import json, medical_etl
from medical_etl import resources
from medical_etl.jobs import jobs
from medical_etl.transform.catalogue.identity import Resolver
print(json.dumps({"module": medical_etl.__file__, "root": str(resources.project_root()),
                  "dbt": (resources.dbt_project() / "dbt_project.yml").is_file(),
                  "rules": resources.alert_rules().is_file(), "crontab": resources.crontab_template().is_file(),
                  "jobs": jobs(), "lexicon": Resolver().resolve("AMVASC 5mg").generic_name}))
"""], cwd=tmp_path, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert found["module"].startswith(str(installed)) and found["root"].startswith(str(installed))
    assert found["dbt"] and found["rules"] and found["crontab"]
    assert found["lexicon"] == "amlodipine"  # the catalogue's lexicon travels with the package
    assert found["jobs"]["pipeline"] == ["scrape", "load", "transform", "enrich"]
    # cron entries run a checkout's scripts: an installed package says so instead of writing broken lines
    r = subprocess.run([str(installed / "bin" / "medical-etl"), "cron", "show"], cwd=tmp_path, capture_output=True,
                       text=True, env={"PATH": os.environ["PATH"], "RAW_DATA_PATH": str(tmp_path / "raw"),
                                       "LOGS_PATH": str(tmp_path / "logs")})
    assert r.returncode == 1 and "is not a checkout" in r.stderr and r.stdout == ""


def test_the_installed_command_runs_the_pipeline_from_another_folder(installed, settings, tmp_path):
    home = tmp_path / "elsewhere"
    home.mkdir()
    env = _env(settings, home)
    r = subprocess.run([str(installed / "bin" / "medical-etl"), "job", "pipeline"], cwd=home, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["status"] == "success" and list(summary["stages"]) == ["scrape", "load", "transform", "enrich"]
    assert summary["stages"]["transform"]["tests_failed"] == 0 and summary["stages"]["transform"]["models_built"] > 0
    from medical_etl.db import conn_params, connect

    c = connect(conn_params(settings))
    try:
        assert query(c, "SELECT count(*) FROM marts.fct_messages")[0][0] > 0
        assert query(c, "SELECT count(*) FROM marts.fct_image_detections")[0][0] > 0
    finally:
        c.close()
    # dbt wrote its target and logs outside the installed package, and nothing into the checkout
    assert (home / "logs" / "dbt" / "target" / "manifest.json").is_file()
    site_project = next(installed.rglob("medical_etl/project/medical_warehouse"))
    assert not (site_project / "target").exists() and not (site_project / "logs").exists()
    r = subprocess.run([str(installed / "bin" / "medical-etl"), "monitor", "--no-deliver", "--json"], cwd=home,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr[-2000:]  # info or warnings (a first run); the rules file was found
    assert json.loads(r.stdout)["rules_file"].startswith(str(installed))
