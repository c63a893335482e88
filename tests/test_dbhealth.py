"""The database's own health in the run log: size, the largest relations with their dead tuples, the
connections a stage holds; and the shipped alert rules over them (a real server, a database per test)."""
from __future__ import annotations

import json
import time
from datetime import timedelta

import psycopg2
from test_monitor import NOW, rec, run, write_log

from medical_etl.dbhealth import ConnectionWatch, database_health
from medical_etl.monitor.evaluate import DEFAULT_RULES, format_text, run_monitor
from medical_etl.ops.status import pipeline_status


def _bloat(params, rows=2000):
    """A table of ``rows`` rows updated twice: two dead versions per live row (autovacuum cannot have
    run between the statements and this test's reading)."""
    conn = psycopg2.connect(**params.kwargs())
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE public.churn (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = off)")
            cur.execute("INSERT INTO public.churn SELECT g, 0 FROM generate_series(1, %s) AS g", (rows,))
        for _ in range(2):
            with conn, conn.cursor() as cur:
                cur.execute("UPDATE public.churn SET v = v + 1")
    finally:
        conn.close()  # a backend's statistics are flushed when it ends


def test_a_table_updated_twice_shows_its_dead_tuples_and_fires_the_bloat_alert(pg_database, tmp_path):
    _bloat(pg_database)
    health = database_health(pg_database)
    assert health["database_size_bytes"] > 0 and health["max_connections"] >= health["connections"] >= 1
    churn = next(r for r in health["relations"] if r["relation"] == "public.churn")
    assert churn["live_tuples"] == 2000 and churn["dead_tuples"] == 4000 and churn["last_vacuum"] is None
    assert churn["kind"] == "table" and churn["size_bytes"] > 0
    assert len(health["relations"]) <= 10

    records = [rec(run_id="r1", metrics={"database": health})]
    result, code = run(tmp_path, records, DEFAULT_RULES, send=False)
    bloat = [a for a in result["active_alerts"] if a["alert_type"] == "table_bloat"]
    assert [a["message"] for a in bloat] == [
        "public.churn has 4000 dead tuples against 2000 live (2.0x; last vacuum never): run VACUUM"]
    assert code >= 1

    # vacuumed: the alert resolves on the next job's record
    conn = psycopg2.connect(**pg_database.kwargs())
    conn.autocommit = True
    conn.cursor().execute("VACUUM public.churn")
    conn.close()
    after = database_health(pg_database)
    assert next(r for r in after["relations"] if r["relation"] == "public.churn")["dead_tuples"] == 0
    records.append(rec(run_id="r2", at=NOW + timedelta(hours=1), metrics={"database": after}))
    result, _ = run(tmp_path, records, DEFAULT_RULES, now=NOW + timedelta(hours=1), send=False)
    assert not [a for a in result["active_alerts"] if a["alert_type"] == "table_bloat"]


def test_the_connections_a_stage_holds_are_counted(pg_database):
    app = "medical_etl/load/test-run"
    held = [psycopg2.connect(**pg_database.kwargs(), application_name=app) for _ in range(5)]
    other = psycopg2.connect(**pg_database.kwargs(), application_name="someone else")
    metrics: dict = {}
    try:
        with ConnectionWatch(pg_database, app, metrics, interval_s=0.05):
            held.append(psycopg2.connect(**pg_database.kwargs(), application_name=app))  # a sixth, for a while
            time.sleep(0.4)  # (sampled: a session shorter than the interval may be missed)
            held.pop().close()
            time.sleep(0.2)
    finally:
        for c in (*held, other):
            c.close()
    assert metrics["db_connections_peak"] == 6  # the stage's own sessions, the watcher's not counted
    assert metrics["db_connections_server_peak"] >= 7  # and the rest of the server's
    assert metrics["max_connections"] >= 7 and "db_connections_error" not in metrics


def test_an_unreachable_database_is_an_entry_not_a_failure(tmp_path):
    from medical_etl.db import ConnParams

    nowhere = ConnParams("127.0.0.1", 9, "nowhere", "nobody", "s3cret-pass", connect_timeout=1)
    health = database_health(nowhere)
    assert set(health) == {"error"} and "s3cret-pass" not in health["error"]
    metrics: dict = {}
    with ConnectionWatch(nowhere, "medical_etl/load/x", metrics):
        pass
    assert metrics["db_connections_peak"] == 0 and "db_connections_error" in metrics


def _health(size, connections=5, max_connections=100):
    return {"database_size_bytes": size, "connections": connections, "max_connections": max_connections,
            "relations": []}


def test_growth_and_connection_alerts(tmp_path):
    day = timedelta(days=1)
    records = [rec(run_id="d0", at=NOW - 2 * day, metrics={"database": _health(1_000_000_000)}),
               rec(run_id="d1", at=NOW - day, metrics={"database": _health(1_100_000_000)}),
               rec(stage="transform", run_id="d2", at=NOW - timedelta(minutes=5),
                   metrics={"db_connections_peak": 3, "db_connections_server_peak": 85, "max_connections": 100}),
               rec(run_id="d2", metrics={"database": _health(1_500_000_000, connections=10)})]
    result, _ = run(tmp_path, records, DEFAULT_RULES, send=False)
    by_type = {a["alert_type"]: a["message"] for a in result["active_alerts"]}
    assert by_type["database_growth"] == "the database grew 25.0% a day over 2.0 days (to 1500.0 MB from 1000.0 MB)"
    assert by_type["database_connections"] == ("85 PostgreSQL connections during stage transform (run d2): "
                                               "85.0% of max_connections 100")
    text = format_text(result)
    assert "database: 1,500.0 MB, 10 of 100 connections" in text and "transform  peak sessions 3" in text

    # a slow-growing database with few connections: neither fires
    calm = [rec(run_id="c0", at=NOW - 2 * day, metrics={"database": _health(1_000_000_000)}),
            rec(run_id="c1", metrics={"database": _health(1_050_000_000, connections=12)})]
    result, _ = run(tmp_path, calm, DEFAULT_RULES, send=False)
    assert not {"database_growth", "database_connections"} & {a["alert_type"] for a in result["active_alerts"]}


def test_status_and_report_show_the_recorded_health(pg_database, tmp_path):
    _bloat(pg_database, rows=1500)
    logs = tmp_path / "logs"
    logs.mkdir()
    health = database_health(pg_database)
    write_log(logs / "runs.jsonl", [
        rec(stage="load", run_id="j1", metrics={"db_connections_peak": 2, "db_connections_server_peak": 4,
                                               "max_connections": 100}),
        rec(run_id="j1", metrics={"database": health})])
    status = pipeline_status(logs_path=logs, lake_path=tmp_path / "lake", cursor=None)
    h = status["database_health"]
    assert h["run_id"] == "j1" and h["database_size_bytes"] == health["database_size_bytes"]
    assert h["stage_connections"] == {"load": {"peak": 2, "server_peak": 4}}
    assert {"relation", "size_bytes", "live_tuples", "dead_tuples", "last_vacuum", "last_analyze"} <= \
        set(h["relations"][0])
    json.dumps(status, default=str)  # what `medical-etl status --json` prints

    html = tmp_path / "report.html"
    result, _ = run_monitor(logs / "runs.jsonl", state_path=tmp_path / "state.json", html_path=html, send=False,
                            now=NOW)
    assert result["metrics"]["database"]["relations"][0]["relation"] == health["relations"][0]["relation"]
    assert "public.churn" in html.read_text() and "dead tuples" in html.read_text()
