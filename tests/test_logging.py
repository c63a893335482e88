"""LOG_LEVEL governs every process of a run: the CLI, the job, the stage processes and dbt."""
import subprocess
import sys
from dataclasses import replace

from helpers import REPO, settings_env

SECRET = "pw-s3cr3t-never-logged-77"


def _run(env, *args):
    return subprocess.run([sys.executable, "-m", "medical_etl", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)


def test_debug_shows_each_batch_node_and_request_window_with_secrets_masked(settings):
    s = replace(settings, telegram_source="sample")
    env = settings_env(s)
    env.update(TELEGRAM_SOURCE="sample", LOG_LEVEL="DEBUG", LOAD_BATCH_ROWS="10", YOLO_BATCH="4",
               DB_PASSWORD=SECRET)  # trust auth: the password is never needed, but it is a registered secret
    r = _run(env, "job", "pipeline")
    assert r.returncode == 0, r.stderr[-3000:]
    err, out = r.stderr, r.stdout
    # each stage process logs at DEBUG, named by its process
    assert "DEBUG stage-scrape medical_etl.trace: scrape CheMed123: request window" in err
    assert "scrape CheMed123: window done" in err
    assert err.count("DEBUG stage-load medical_etl.trace: load batch ") >= 3  # LOAD_BATCH_ROWS=10
    assert "load batch 1: files_read=" in err
    assert err.count("medical_etl.trace: enrich batch ") >= 2  # YOLO_BATCH=4
    # dbt's own log level follows: every node as it starts and ends
    assert "START sql view model staging.stg_telegram_messages" in out + err
    assert "OK created sql" in out + err
    assert SECRET not in out + err
    dbt_log = (REPO / "medical_warehouse" / "logs" / "dbt.log").read_text(errors="replace")
    assert SECRET not in dbt_log

    # -v is the same as LOG_LEVEL=DEBUG, for the stage processes too
    env.update(LOG_LEVEL="INFO")
    r = _run(env, "-v", "job", "scrape-load")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DEBUG stage-scrape medical_etl.trace: scrape" in r.stderr


def test_info_and_warning_hide_the_debug_lines(settings):
    s = replace(settings, telegram_source="sample")
    env = settings_env(s)
    env.update(TELEGRAM_SOURCE="sample", LOAD_BATCH_ROWS="10")
    r = _run(env, "job", "scrape-load")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "load batch" not in r.stderr and "request window" not in r.stderr
    env["LOG_LEVEL"] = "WARNING"
    r = _run(env, "job", "transform")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "START sql" not in r.stdout + r.stderr and " INFO " not in r.stderr
    env["LOG_LEVEL"] = "chatty"
    r = _run(env, "job", "transform")
    assert r.returncode == 2 and "LOG_LEVEL" in r.stderr
