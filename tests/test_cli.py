import subprocess
import sys

from helpers import settings_env


def _doctor(env):
    return subprocess.run([sys.executable, "-m", "medical_etl", "doctor"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_doctor_ok_with_working_database(settings):
    r = _doctor(settings_env(settings))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[ok  ] database" in r.stdout


def test_doctor_fails_with_unreachable_database(settings):
    env = settings_env(settings)
    env.update(DB_HOST="127.0.0.1", DB_PORT="1", DB_PASSWORD="pw-never-shown-9")
    r = _doctor(env)
    assert r.returncode == 1
    assert "[FAIL] database" in r.stdout
    assert "pw-never-shown-9" not in r.stdout + r.stderr


def test_bad_config_exits_2_naming_variable(settings):
    env = settings_env(settings)
    env["DB_PORT"] = "not-a-port"
    r = _doctor(env)
    assert r.returncode == 2
    assert "DB_PORT" in r.stderr


def test_console_script_and_module_are_the_same_cli():
    import shutil

    exe = shutil.which("medical-etl") or str(__import__("pathlib").Path(sys.executable).with_name("medical-etl"))
    a = subprocess.run([exe, "--version"], capture_output=True, text=True)
    b = subprocess.run([sys.executable, "-m", "medical_etl", "--version"], capture_output=True, text=True)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and a.stdout.startswith("medical-etl ")


def test_public_api_resolves_to_the_modules_that_define_it_and_help_shows_it(monkeypatch):
    import importlib
    import pydoc

    import medical_etl

    monkeypatch.setenv("HELP_LEAK_CANARY", "canary-secret-7731")  # no default may render the environment

    for name, module in medical_etl._API.items():
        defined = getattr(importlib.import_module(f"medical_etl.{module}"), name)
        assert getattr(medical_etl, name) is defined, name
    assert set(medical_etl._API) <= set(dir(medical_etl)) and "__getattr__" not in dir(medical_etl)
    text = pydoc.render_doc(medical_etl, renderer=pydoc.plaintext)
    for func in ("scrape_telegram_data", "load_raw_to_postgres", "run_dbt_transformations", "run_yolo_enrichment",
                 "run_job", "run_stage", "run_monitor"):
        first_line = getattr(medical_etl, func).__doc__.strip().splitlines()[0]
        assert f"{func}(" in text and first_line in text, func
    assert "class TransientError" in text and "__getattr__" not in text
    assert "canary-secret-7731" not in text
