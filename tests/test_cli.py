import subprocess
import sys

from conftest import settings_env


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


def test_public_api_resolves():
    import medical_etl

    for name in medical_etl.__all__:
        assert getattr(medical_etl, name) is not None
    assert callable(medical_etl.run_job) and callable(medical_etl.scrape_telegram_data)
