"""Failing early with a message that says what to do: a job's inputs checked before its first stage, the
CLI's arguments, Telegram's settings."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
from helpers import SHARED_MODEL, settings_env

from medical_etl.jobs import JobError, run_job
from medical_etl.runlog import RunLog

# --- fail early, with a message that says what to do ------------------------------------

def test_job_with_missing_weights_fails_before_the_first_stage(settings):
    s = replace(settings, telegram_source="sample", yolo_model=str(settings.logs_path / "nope.onnx"))
    t0 = time.time()
    with pytest.raises(JobError) as info:
        run_job("pipeline", s)
    assert time.time() - t0 < 30
    assert "YOLO_MODEL" in str(info.value) and "no such file" in str(info.value)
    recs = list(RunLog(s.logs_path).records())
    assert [r["stage"] for r in recs] == [None] and recs[0]["status"] == "failed"
    assert not s.raw_data_path.exists()  # nothing was scraped


def test_job_with_unreachable_database_or_no_telegram_login_fails_at_once(settings):
    with pytest.raises(JobError, match="DB_"):
        run_job("scrape-load", replace(settings, telegram_source="sample", db_port=1, db_connect_timeout_s=1))
    with pytest.raises(JobError, match="TELEGRAM_API_ID"):
        run_job("scrape-load", replace(settings, telegram_source="api"))
    with pytest.raises(JobError, match="TELEGRAM_STRING_SESSION: not a valid Telethon string session"):
        run_job("scrape-load", replace(settings, telegram_source="api", telegram_api_id=1,
                                       telegram_api_hash="0" * 32, telegram_string_session="1not-a-session"))


def test_doctor_fails_when_the_weights_are_missing(settings):
    env = settings_env(settings)
    env["YOLO_MODEL"] = "/nonexistent/weights.onnx"
    r = subprocess.run([sys.executable, "-m", "medical_etl", "doctor"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "[FAIL] yolo" in r.stdout
    env["YOLO_MODEL"] = str(SHARED_MODEL)
    r = subprocess.run([sys.executable, "-m", "medical_etl", "doctor"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert "[ok  ] yolo" in r.stdout


def test_script_without_main_guard_runs_its_job(settings, tmp_path):
    script = tmp_path / "nightly.py"
    script.write_text("from medical_etl import load_settings, run_job\n"
                      "print('status', run_job('scrape-load', load_settings())['status'])\n")
    env = settings_env(settings)
    env["TELEGRAM_SOURCE"] = "sample"
    r = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("status success") == 1


def test_cli_refuses_bad_numbers_and_empty_selections(settings):
    env = settings_env(settings)
    for value in ("0", "-1", "many"):
        r = subprocess.run([sys.executable, "-m", "medical_etl", "load", "--batch-rows", value], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "--batch-rows" in r.stderr
    for args in (["job", "pipeline", "--lock-wait", "nan"], ["job", "pipeline", "--refresh-days", "-2"]):
        r = subprocess.run([sys.executable, "-m", "medical_etl", *args], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and args[2] in r.stderr
    r = subprocess.run([sys.executable, "-m", "medical_etl", "transform", "--select", "nonexistent_model"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "selected no node with --select nonexistent_model" in r.stderr


def test_bad_string_session_and_unreachable_telegram_say_which_setting(settings):
    from medical_etl.scrape.telegram import TelegramConfigError, open_client

    env = settings_env(settings)
    env.update(TELEGRAM_SOURCE="api", TELEGRAM_API_ID="12345", TELEGRAM_API_HASH="0" * 32,
               TELEGRAM_STRING_SESSION="1AZWarzQBu0nh")
    r = subprocess.run([sys.executable, "-m", "medical_etl", "scrape"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "TELEGRAM_STRING_SESSION" in r.stderr and "unpack" not in r.stderr

    # a server that hangs up at once, as Telegram does on a wrong API id/hash
    import socket

    from telethon.crypto import AuthKey
    from telethon.sessions import StringSession

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def hang_up():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.close()

    threading.Thread(target=hang_up, daemon=True).start()
    ss = StringSession()
    ss.set_dc(2, "127.0.0.1", srv.getsockname()[1])
    ss.auth_key = AuthKey(os.urandom(256))
    s = replace(settings, telegram_source="api", telegram_api_id=12345, telegram_api_hash="0" * 32,
                telegram_string_session=ss.save())
    t0 = time.time()
    with pytest.raises(TelegramConfigError, match="TELEGRAM_API_ID / TELEGRAM_API_HASH"):
        open_client(s, timeout_s=5)
    assert time.time() - t0 < 30
    srv.close()
