"""What a person sees: stdout holds only the result, progress only on a terminal, dbt and psql
aimed at the configured database (the embedded one included), and the monitor's verdict."""
import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
from helpers import REPO, settings_env


def _etl(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "medical_etl", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_every_result_command_prints_only_json_on_stdout(settings, tmp_path):
    env = settings_env(settings)
    env.update(TELEGRAM_SOURCE="sample")
    export = REPO / "medical_etl" / "sample_export" / "CheMed123"
    commands = [
        ["scrape", "--no-photos"], ["load"], ["transform", "--select", "stg_telegram_messages"],
        ["import-export", str(export), "--channel", "CheMed123"], ["enrich", "--no-dbt"],
        ["job", "scrape-load"], ["monitor", "--json", "--no-deliver", "--state", str(tmp_path / "state.json")],
    ]
    for args in commands:
        r = _etl(env, *args)
        assert r.returncode in (0, 1), (args, r.stderr[-2000:])  # the monitor's 1 is a warning
        result = json.loads(r.stdout)  # nothing but the result: no progress, no dbt console, no logging
        assert isinstance(result, dict) and result, args
    assert "run_id" in json.loads(_etl(env, "load").stdout)


def _with_tty_stderr(env, *args, timeout=600):
    """Run the CLI with a terminal as stderr (a person at a shell, stdout piped); return (rc, stdout, stderr)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "medical_etl", *args], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    out, _ = p.communicate(timeout=timeout)
    os.close(master)
    return p.returncode, out, seen.decode(errors="replace")


def test_job_output_with_a_terminal_keeps_stdout_for_the_result(settings):
    env = settings_env(settings)
    env.update(TELEGRAM_SOURCE="sample")
    rc, out, err = _with_tty_stderr(env, "job", "pipeline")
    assert rc == 0, err[-3000:]
    assert json.loads(out)["status"] == "success"  # dbt's console lines went to stderr, not here
    assert "scrape: channel 1/3" in err


def test_progress_on_a_terminal_and_silence_under_cron(settings):
    env = settings_env(settings)
    env.update(TELEGRAM_SOURCE="sample")
    quiet = _etl(env, "job", "scrape-load")
    assert quiet.returncode == 0, quiet.stderr
    assert "channel 1/3" not in quiet.stderr and "batch 1 committed" not in quiet.stderr

    # the same job again with a terminal as stderr (as a person running it by hand)
    env["RAW_DATA_PATH"] = str(settings.raw_data_path.parent / "raw_tty")
    rc, out, text = _with_tty_stderr(env, "job", "scrape-load")
    assert rc == 0, text
    for line in ("scrape: channel 1/3 CheMed123: 11 new", "scrape: channel 3/3 tikvahpharma: 11 new",
                 "load: batch 1 committed"):
        assert line in text, text
    assert json.loads(out)["status"] == "success" and "channel 1/3" not in out

    # at DEBUG the terminal lines stay, and the DEBUG batch lines come beside them
    env.update(RAW_DATA_PATH=str(settings.raw_data_path.parent / "raw_debug"), LOG_LEVEL="DEBUG")
    rc, out, text = _with_tty_stderr(env, "job", "scrape-load")
    assert rc == 0, text[-3000:]
    assert "load: batch 1 committed" in text and "scrape: channel 1/3" in text
    assert "load batch 1: files_read=" in text


def test_dbt_pass_through_and_env_use_the_settings_database(settings):
    env = settings_env(settings)
    r = _etl(env, "dbt", "debug")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "All checks passed" in r.stdout and f"database: {settings.db_name}" in r.stdout
    bad = _etl(env, "dbt", "run", "--select", "no_such_model_anywhere")
    assert "does not match any enabled nodes" in bad.stdout + bad.stderr

    exports = _etl(env, "env")
    assert exports.returncode == 0
    values = dict(line.removeprefix("export ").split("=", 1) for line in exports.stdout.splitlines()
                  if line.startswith("export "))
    assert values["PGDATABASE"] == values["MEDICAL_ETL_DBT_DBNAME"] == settings.db_name
    assert values["DBT_PROFILES_DIR"].endswith("medical_warehouse")

    env["DB_PASSWORD"] = "pw-only-on-request-7"
    assert "pw-only-on-request-7" not in _etl(env, "env").stdout  # a secret is printed only when asked for
    assert "export PGPASSWORD=pw-only-on-request-7" in _etl(env, "env", "--with-password").stdout


def test_dbt_and_psql_exports_reach_the_embedded_server(tmp_path):
    import shutil
    import tempfile

    # pgserver runs PostgreSQL as its own user when started by root: give it a folder it can enter
    pg = Path(tempfile.mkdtemp(prefix="medetl-embedded-"))
    pg.chmod(0o755)
    env = dict(os.environ, DB_HOST="", DB_NAME="embedded_wh", EMBEDDED_PG_PATH=str(pg / "pg"),
               RAW_DATA_PATH=str(tmp_path / "raw"), LOGS_PATH=str(tmp_path / "logs"))
    try:
        exports = _etl(env, "env")
        assert exports.returncode == 0, exports.stderr
        values = dict(line.removeprefix("export ").split("=", 1) for line in exports.stdout.splitlines()
                      if line.startswith("export "))
        assert values["PGHOST"].startswith("/")  # the embedded server's Unix socket directory
        conn = psycopg2.connect(host=values["PGHOST"], port=values["PGPORT"], dbname=values["PGDATABASE"],
                                user=values["PGUSER"])
        with conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone()[0] == "embedded_wh"
        conn.close()
        # plain dbt with those exports, as the README shows
        dbt = Path(sys.executable).with_name("dbt")
        r = subprocess.run([str(dbt), "debug"], env={**env, **values}, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "All checks passed" in r.stdout, r.stdout[-2000:]
        r = _etl(env, "dbt", "debug")
        assert r.returncode == 0 and "database: embedded_wh" in r.stdout, r.stdout[-2000:]
    finally:
        pid_file = pg / "pg" / "postmaster.pid"
        if pid_file.exists():  # stop the server this test started
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            for _ in range(100):
                if not pid_file.exists():
                    break
                time.sleep(0.1)
        shutil.rmtree(pg, ignore_errors=True)


def test_monitor_after_the_sample_demo_gives_an_ok_verdict_and_says_why(settings, tmp_path):
    from dataclasses import replace

    from medical_etl.db import conn_params
    from medical_etl.jobs import run_job
    from medical_etl.monitor.evaluate import run_monitor

    s = replace(settings, telegram_source="sample")
    run_job("scrape-load", s)
    run_job("scrape-load", s)  # the second run adds nothing: no low-volume alert for a snapshot
    result, rc = run_monitor(s.logs_path / "runs.jsonl", state_path=tmp_path / "st.json", db=conn_params(s), send=False)
    assert rc == 0, result["active_alerts"]
    assert result["verdict"].startswith("OK.") and "shipped sample export" in result["verdict"]
    assert "newest post 2026-01-16" in result["verdict"]

    # live data (the API) is judged by today's date: a channel silent for years is a warning
    api = [json.loads(line) for line in (s.logs_path / "runs.jsonl").read_text().splitlines()]
    for rec in api:
        if rec.get("stage") == "scrape":
            rec["metrics"]["source"] = "api"
    (s.logs_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in api))
    result, rc = run_monitor(s.logs_path / "runs.jsonl", state_path=tmp_path / "st2.json", db=conn_params(s), send=False)
    assert rc == 1 and result["verdict"].startswith("WARNING.")
    assert any("has not posted" in a["message"] for a in result["active_alerts"])


def test_make_system_deps_says_what_it_installs_and_fails_clearly_without_root(tmp_path):
    import shutil

    import pytest

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the target as an unprivileged user")
    bin_dir = tmp_path / "bin"  # a PATH with no chromium, no sudo and no apt-get
    bin_dir.mkdir()
    for tool in ("bash", "sh", "id", "env", "grep", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    tmp_path.chmod(0o755)
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", f"PATH={bin_dir}",
                        shutil.which("make"), "-s", "system-deps"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "installing Debian's chromium with apt-get: the browser tests render" in r.stdout
    assert "cannot install chromium: not root and no password-less sudo" in r.stderr


def test_env_example_lists_every_variable_the_project_reads():
    import re

    from medical_etl.config import VARIABLES

    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M))
    profiles = (REPO / "medical_warehouse" / "profiles.yml").read_text()
    read = (set(VARIABLES) | set(re.findall(r"env_var\('([A-Z0-9_]+)'", profiles))
            | set(re.findall(r"\$\{([A-Z0-9_]+)\}", (REPO / "monitor" / "pipeline_alerts.json").read_text()))
            | set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)[:}]", (REPO / "Makefile").read_text()))) - {"ENV_VAR"}
    assert read - listed == set()
    assert {"LOCK_WAIT", "MEDICAL_ETL_SHARED", "MEDICAL_ETL_DBT_HOST", "MEDICAL_ETL_DBT_THREADS"} <= listed
