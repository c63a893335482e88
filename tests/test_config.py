import pytest

from medical_etl import secrets
from medical_etl.config import ConfigError, Settings, load_settings


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={}, dotenv_path=None)
    assert s.db_host == "" and s.embedded
    assert s.db_port == 5432
    assert str(s.raw_data_path) == "data/raw" and (tmp_path / "data/raw").is_dir()
    assert str(s.logs_path) == "logs" and (tmp_path / "logs").is_dir()


def test_dotenv_loads_but_never_overrides(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("DB_HOST=from-dotenv\nDB_PORT=6543\nDB_NAME=from_dotenv\n")
    s = load_settings(env={"DB_NAME": "from_env", "RAW_DATA_PATH": str(tmp_path / "r"),
                           "LOGS_PATH": str(tmp_path / "l")}, dotenv_path=env_file)
    assert s.db_host == "from-dotenv"
    assert s.db_port == 6543
    assert s.db_name == "from_env"


@pytest.mark.parametrize("var,value,expected", [
    ("DB_PORT", "abc", "DB_PORT: must be an integer from 1 to 65535, got 'abc'"),
    ("DB_PORT", "70000", "DB_PORT: must be an integer from 1 to 65535, got '70000'"),
    ("YOLO_CONF", "1.5", "YOLO_CONF: must be a number from 0.0 to 1.0, got '1.5'"),
    ("YOLO_CONF", "nan", "YOLO_CONF: must be a number from 0.0 to 1.0, got 'nan'"),
    ("YOLO_DEVICE", "tpu", "YOLO_DEVICE: expected cpu, cuda"),
    ("TELEGRAM_API_ID", "x1", "TELEGRAM_API_ID: must be an integer from 1 to 2147483647, got 'x1'"),
    ("STAGE_TIMEOUT", "99999999999999999999",
     "STAGE_TIMEOUT: must be an integer from 1 to 86400, got '99999999999999999999'"),
    ("STAGE_TIMEOUT", "9" * 5000, "STAGE_TIMEOUT: must be an integer from 1 to 86400"),  # past int()'s digit limit
    ("DB_NAME", 'a"b', "DB_NAME: must not contain '\"'"),
    ("DB_NAME", "a\nb", "DB_NAME: must not contain '\\n'"),
    ("DB_NAME", "x" * 64, "DB_NAME: must be at most 63 bytes"),
    ("DB_USER", 'etl"', "DB_USER: must not contain '\"'"),
])
def test_invalid_values_name_the_variable(tmp_path, var, value, expected):
    with pytest.raises(ConfigError) as info:
        load_settings(env={var: value, "RAW_DATA_PATH": str(tmp_path / "r"),
                           "LOGS_PATH": str(tmp_path / "l")}, dotenv_path=None)
    assert str(info.value).startswith(expected)
    assert info.value.variable == var


def test_uncreatable_path_names_the_variable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as info:
        load_settings(env={"RAW_DATA_PATH": str(blocker / "sub"), "LOGS_PATH": str(tmp_path / "l")},
                      dotenv_path=None)
    assert info.value.variable == "RAW_DATA_PATH"
    assert "cannot create directory" in str(info.value)


def test_secrets_are_masked(tmp_path, caplog):
    pw = "s3cr3t-PassW0rd"
    s = load_settings(env={"DB_PASSWORD": pw, "TELEGRAM_API_HASH": "0123456789abcdef0123",
                           "RAW_DATA_PATH": str(tmp_path / "r"), "LOGS_PATH": str(tmp_path / "l")},
                      dotenv_path=None)
    assert pw not in repr(s)
    assert "0123456789abcdef0123" not in repr(s)
    assert s.db_password.reveal() == pw
    assert s.public_dict()["db_password"] == "***"
    assert secrets.mask(f"failed with password={pw}") == "failed with password=***"
    import logging

    logger = logging.getLogger("test.masking")
    handler_filter = secrets.MaskingFilter()
    record = logger.makeRecord("x", logging.ERROR, __file__, 1, "conn %s failed", (pw,), None)
    handler_filter.filter(record)
    assert pw not in record.getMessage()


def test_settings_object_is_immutable():
    s = Settings()
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        s.db_port = 1  # type: ignore[misc]


@pytest.mark.parametrize("var,value,expected", [
    ("STAGE_TIMEOUT", "99999999999999999999",
     "STAGE_TIMEOUT: must be an integer from 1 to 86400, got '99999999999999999999'"),
    ("DB_NAME", 'a"b', "DB_NAME: must not contain '\"' (dbt and psql cannot quote it), got 'a\"b'"),
])
def test_the_cli_refuses_a_bad_setting_before_any_work(tmp_path, monkeypatch, capsys, var, value, expected):
    from medical_etl.cli import main

    monkeypatch.chdir(tmp_path)  # no .env of the checkout's
    monkeypatch.setenv(var, value)
    assert main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert f"configuration error: {expected}" in err and "Traceback" not in err and "OverflowError" not in err
