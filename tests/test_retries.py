"""Stage retries: only transient failures are retried, each attempt is recorded, the result equals a clean run."""
import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psycopg2
import pytest
from helpers import REPO, admin_exec, scratch_database
from psycopg2 import sql
from test_jobs import records, warehouse_fingerprint

from medical_etl.config import ConfigError
from medical_etl.jobs import JobError, retry, run_job
from medical_etl.monitor.alerts import METRICS, evaluate
from medical_etl.monitor.evaluate import DEFAULT_RULES
from medical_etl.monitor.rules import load_rules
from medical_etl.monitor.stats import read_log, summarize
from medical_etl.scrape.source import SAMPLE_EXPORT
from medical_etl.scrape.standin import StandInClient, read_desktop_export

SAMPLE_CHANNELS = ("CheMed123", "lobelia4cosmetics", "tikvahpharma")


def _error_of(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
        return exc
    raise AssertionError("no error raised")


def test_transient_reasons_of_real_errors(pg_database):
    unreachable = _error_of(lambda: psycopg2.connect(host="127.0.0.1", port=1, dbname="x", connect_timeout=2))
    assert retry.transient_reason(unreachable) == retry.DB_UNREACHABLE

    # a real serialization failure: two serializable transactions updating the same row
    a, b = psycopg2.connect(**pg_database.kwargs()), psycopg2.connect(**pg_database.kwargs())
    try:
        with a.cursor() as cur:
            cur.execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)")
        a.commit()
        for c in (a, b):
            c.set_session(isolation_level="SERIALIZABLE")
            with c.cursor() as cur:
                cur.execute("SELECT v FROM t WHERE id = 1")
        with a.cursor() as cur:
            cur.execute("UPDATE t SET v = 1 WHERE id = 1")
        a.commit()
        serial = _error_of(lambda: b.cursor().execute("UPDATE t SET v = 2 WHERE id = 1"))
        assert isinstance(serial, psycopg2.errors.SerializationFailure)
        assert retry.transient_reason(serial) == retry.SERIALIZATION
        b.rollback()

        # the server ends the session (as on a restart): 57P01 admin_shutdown
        with b.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        b.commit()
        with a.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        a.commit()
        time.sleep(0.2)
        ended = _error_of(lambda: b.cursor().execute("SELECT 1"))
        assert retry.transient_reason(ended) == retry.DB_RESTARTING
    finally:
        a.close()
        b.close()

    dropped = _error_of(lambda: __import__("socket").create_connection(("127.0.0.1", 1), timeout=2))
    assert isinstance(dropped, ConnectionError)
    assert retry.transient_reason(dropped, "scrape") == retry.TELEGRAM_NETWORK
    assert retry.transient_reason(dropped, "load") == "network error"
    from telethon import errors

    assert retry.transient_reason(errors.ServerError(request=None, message="500"), "scrape") == retry.TELEGRAM_NETWORK
    wrapped = RuntimeError("load failed")
    wrapped.__cause__ = unreachable
    assert retry.transient_reason(wrapped) == retry.DB_UNREACHABLE
    for fatal in (ConfigError("YOLO_MODEL", "bad"), FileNotFoundError("weights.onnx"), ValueError("bad record"),
                  psycopg2.errors.lookup("42P01")("relation does not exist")):
        assert retry.transient_reason(fatal) is None


def test_transient_reasons_of_stage_summaries():
    dbt_test_failed = {"failing_nodes": [{"node": "test.x", "status": "fail", "message": "Got 3 results"}]}
    assert retry.summary_reason("transform", dbt_test_failed) is None
    dbt_lost_db = {"failing_nodes": [{"node": "model.a", "status": "error",
                                      "message": "terminating connection due to administrator command"}]}
    assert retry.summary_reason("transform", dbt_lost_db) == retry.DB_RESTARTING
    assert retry.summary_reason("enrich", {"dbt": dbt_lost_db}) == retry.DB_RESTARTING
    assert retry.summary_reason("enrich", {"dbt": dbt_test_failed}) is None
    net = {"channels": {"a": {"error": "network: ConnectionError: reset (after 5 attempts)"}, "b": {"error": None}}}
    assert retry.summary_reason("scrape", net) == retry.TELEGRAM_NETWORK
    private = {"channels": {"a": {"error": "network: ConnectionError"}, "b": {"error": "ChannelPrivateError: x"}}}
    assert retry.summary_reason("scrape", private) is None
    assert [retry.backoff_s(n, 10, 300) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


def _allow_connections(admin, dbname: str, allow: bool) -> None:
    admin_exec(admin, sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
        sql.Identifier(dbname), sql.SQL("true" if allow else "false")))


class GatedClient(StandInClient):
    """The sample's posts; the first page request waits for the file ``go`` (after touching ``entered``),
    so a test can act while the job is past its preflight checks and inside the scrape stage."""

    def __init__(self, posts, gate: Path):
        super().__init__(posts)
        self.gate = gate

    async def on_page(self, entity, request_no):
        (self.gate / "entered").touch()
        while not (self.gate / "go").exists():
            await asyncio.sleep(0.05)


def _sample_client(gate: Path) -> GatedClient:
    dirs = sorted(p for p in SAMPLE_EXPORT.iterdir() if (p / "result.json").is_file())
    return GatedClient([post for d in dirs for post in read_desktop_export(d)], gate)


def _wait_file(path: Path, job: threading.Thread, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert job.is_alive() and time.time() - t0 < timeout, f"{path.name} never appeared"
        time.sleep(0.05)


def test_stage_retried_after_database_unreachable_gives_the_clean_runs_warehouse(settings, pg_admin, tmp_path):
    s = replace(settings, telegram_channels=SAMPLE_CHANNELS, stage_timeout_s=900, stage_retries=2,
                stage_retry_backoff_s=5.0, stage_retry_backoff_max_s=5.0)
    gate = tmp_path / "gate"
    gate.mkdir()
    outcome = {}
    job = threading.Thread(target=lambda: outcome.update(summary=run_job("pipeline", s, client=_sample_client(gate))))
    job.start()
    try:
        _wait_file(gate / "entered", job)  # past the preflight checks, inside the scrape stage
        _allow_connections(pg_admin, s.db_name, False)  # the server goes away before the load
        (gate / "go").touch()
        t0 = time.time()
        while not [r for r in records(s) if r["stage"] == "load"]:
            assert job.is_alive() and time.time() - t0 < 300, "the load never failed"
            time.sleep(0.05)
    finally:
        (gate / "go").touch()
        _allow_connections(pg_admin, s.db_name, True)  # the server is back before the retry
    job.join(900)
    summary = outcome["summary"]
    assert summary["status"] == "success" and summary["retries"] == {"load": 1}
    recs = records(s)
    loads = [r for r in recs if r["stage"] == "load"]
    assert [(r["attempt"], r["status"]) for r in loads] == [(1, "failed"), (2, "success")]
    assert loads[0]["reason"] == "transient: database unreachable"
    assert "not currently accepting connections" in loads[0]["error"]["message"]
    assert [r["attempt"] for r in recs if r["stage"] in ("scrape", "transform", "enrich")] == [1, 1, 1]
    (jobrec,) = [r for r in recs if r["stage"] is None]
    assert jobrec["status"] == "success" and jobrec["metrics"]["retries"] == {"load": 1}
    assert jobrec["metrics"]["retry_reasons"] == {"load": "database unreachable"}

    # the monitor: a success, with a warning
    stats = read_log(s.logs_path / "runs.jsonl")
    health = summarize(stats)["health"]["pipeline"]
    assert health["success"] == 1 and health["failed"] == 0 and health["succeeded_on_retry"] == 1
    rules, _ = load_rules(DEFAULT_RULES, set(METRICS))
    alerts, _ = evaluate(rules, stats, None, {})
    fired = {a.alert_type: a for a in alerts if a.state == "firing"}
    assert fired["succeeded_on_retry"].severity == "warning"
    assert "load (database unreachable)" in fired["succeeded_on_retry"].message
    assert "pipeline_failure" not in fired and "pipeline_success" in fired

    c = psycopg2.connect(**{**pg_admin.kwargs(), "dbname": s.db_name})
    retried = warehouse_fingerprint(c)
    c.close()
    with scratch_database(pg_admin) as db:
        clean = replace(s, db_name=db.dbname, raw_data_path=tmp_path / "clean_raw", logs_path=tmp_path / "clean_logs")
        (gate / "go").touch()
        assert run_job("pipeline", clean, client=_sample_client(gate))["status"] == "success"
        c2 = psycopg2.connect(**db.kwargs())
        assert warehouse_fingerprint(c2) == retried
        c2.close()
    assert retried["marts.fct_messages"][0] > 0


def test_preflight_waits_for_a_database_that_is_restarting(settings, pg_admin):
    s = replace(settings, telegram_source="sample", stage_retries=2, stage_retry_backoff_s=3.0,
                stage_retry_backoff_max_s=3.0)
    waiting = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record):
            if "checking again" in record.getMessage():
                waiting.set()

    handler = Seen()
    logging.getLogger("medical_etl.jobs.job").addHandler(handler)
    _allow_connections(pg_admin, s.db_name, False)  # down when the job starts
    outcome = {}
    job = threading.Thread(target=lambda: outcome.update(summary=run_job("scrape-load", s)))
    try:
        job.start()
        assert waiting.wait(120), "the job did not wait for the database"
    finally:
        _allow_connections(pg_admin, s.db_name, True)
        logging.getLogger("medical_etl.jobs.job").removeHandler(handler)
    job.join(600)
    assert outcome["summary"]["status"] == "success" and outcome["summary"]["retries"] == {"preflight": 1}
    (jobrec,) = [r for r in records(s) if r["stage"] is None]
    assert jobrec["metrics"]["retry_reasons"] == {"preflight": "database unreachable"}
    assert [r["attempt"] for r in records(s) if r["stage"]] == [1, 1]

    # a database that stays down fails the job after STAGE_RETRIES checks, naming the setting
    _allow_connections(pg_admin, s.db_name, False)
    try:
        t0 = time.time()
        with pytest.raises(JobError, match="not started: load: DB_"):
            run_job("scrape-load", replace(s, stage_retries=1, stage_retry_backoff_s=0.5))
        assert time.time() - t0 < 60
    finally:
        _allow_connections(pg_admin, s.db_name, True)


def test_fatal_failures_are_not_retried(settings, conn, tmp_path):
    # missing weights: refused before any stage, at once
    s = replace(settings, telegram_source="sample", stage_retries=2, stage_retry_backoff_s=600.0)
    t0 = time.time()
    with pytest.raises(JobError, match="not started: enrich: YOLO_MODEL"):
        run_job("enrich", replace(s, yolo_model=str(tmp_path / "missing.onnx")))
    assert time.time() - t0 < 120  # no 600 s backoff
    (jobrec,) = [r for r in records(s) if r["stage"] is None]
    assert jobrec["status"] == "failed" and "retries" not in jobrec["metrics"]

    # a failing dbt test: one attempt, no retry
    run_job("scrape-load", s)
    with conn.cursor() as cur:
        cur.execute("UPDATE raw.telegram_messages SET message_date = now() + interval '30 days', "
                    "updated_at = now() WHERE message_id = (SELECT min(message_id) FROM raw.telegram_messages)")
    conn.commit()
    t0 = time.time()
    with pytest.raises(JobError, match="assert_no_future_posts"):
        run_job("transform", s)
    assert time.time() - t0 < 300
    (rec,) = [r for r in records(s) if r["stage"] == "transform"]
    assert rec["attempt"] == 1 and rec["status"] == "failed" and rec["reason"] is None
    assert "retries" not in [r for r in records(s) if r["stage"] is None][-1]["metrics"]


def test_operations_settings_parse_and_are_documented(tmp_path):
    from medical_etl.config import VARIABLES, load_settings

    example = (REPO / ".env.example").read_text()
    for var in ("LOG_LEVEL", "STAGE_RETRIES", "STAGE_RETRY_BACKOFF", "STAGE_RETRY_BACKOFF_MAX", "BACKUP_PATH",
                "BACKUP_KEEP", "LOG_RETENTION_DAYS", "RUNLOG_MAX_MB", "PG_BIN_DIR"):
        assert var in VARIABLES and f"\n{var}=" in example, var
    base = {"RAW_DATA_PATH": str(tmp_path / "raw"), "LOGS_PATH": str(tmp_path / "logs")}
    s = load_settings(base, dotenv_path=REPO / ".env.example")
    assert (s.log_level, s.stage_retries, s.stage_retry_backoff_s, s.stage_retry_backoff_max_s) == ("INFO", 2, 10, 300)
    assert (s.backup_keep, s.log_retention_days, s.runlog_max_mb, s.pg_bin_dir) == (7, 30, 50, None)
    s = load_settings({**base, "LOG_LEVEL": "debug", "STAGE_RETRIES": "0"}, dotenv_path=None)
    assert s.log_level == "DEBUG" and s.stage_retries == 0
    for var, bad in (("LOG_LEVEL", "LOUD"), ("STAGE_RETRIES", "-1"), ("BACKUP_KEEP", "0"), ("RUNLOG_MAX_MB", "x")):
        with pytest.raises(ConfigError, match=var):
            load_settings({**base, var: bad}, dotenv_path=None)


def test_our_errors_say_their_kind_and_the_cli_exit_code_follows_it(tmp_path):
    from medical_etl.errors import ConfigError, PermanentError, StageFailed, TransientError

    assert retry.transient_reason(TransientError("x", reason=retry.DB_RESTARTING, stage="load")) == retry.DB_RESTARTING
    assert retry.transient_reason(PermanentError("weights unreadable", stage="enrich", setting="YOLO_MODEL")) is None
    assert retry.transient_reason(ConfigError("DB_PORT", "not a number")) is None
    assert retry.transient_reason(StageFailed("transform", {}, "a test failed")) is None
    assert StageFailed("scrape", {}, "network", reason=retry.TELEGRAM_NETWORK).transient
    # an error of ours raised from a dropped connection is as transient as its cause; a setting is not
    for ours, expected in ((PermanentError("loading 3 files failed", stage="load"), retry.DB_RESTARTING),
                           (ConfigError("DB_HOST", "unreachable host name"), None)):
        try:
            try:
                raise psycopg2.OperationalError("server closed the connection unexpectedly")
            except psycopg2.OperationalError as exc:
                raise ours from exc
        except PermanentError as exc:
            assert retry.transient_reason(exc) == expected

    # the CLI: an unreachable database is transient (75), a bad setting is a configuration error (2)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    env = {**os.environ, "DB_HOST": "127.0.0.1", "DB_PORT": str(port), "RAW_DATA_PATH": str(tmp_path / "raw"),
           "LOGS_PATH": str(tmp_path / "logs"), "DB_CONNECT_TIMEOUT": "2"}
    r = subprocess.run([sys.executable, "-m", "medical_etl", "load"], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 75, r.stderr[-2000:]
    assert "transient: database unreachable" in r.stderr and "retrying later may succeed" in r.stderr
    r = subprocess.run([sys.executable, "-m", "medical_etl", "job", "scrape-load"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**env, "TELEGRAM_SOURCE": "sample", "STAGE_RETRIES": "0"})
    assert r.returncode == 75 and "transient: database unreachable" in r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "medical_etl", "enrich"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**env, "YOLO_MODEL": str(tmp_path / "no-weights.onnx")})
    assert r.returncode == 1 and "transient" not in r.stderr, r.stderr[-2000:]  # missing weights: permanent
    r = subprocess.run([sys.executable, "-m", "medical_etl", "load"], env={**env, "DB_PORT": "port"}, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "DB_PORT" in r.stderr
