"""Hostile and unlucky inputs: one test per way an unattended run could get stuck, read what it
should not, or die without anyone hearing of it (issue: unattended runs)."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import psycopg2
import pytest
from helpers import REPO, SHARED_MODEL, query, scratch_database, settings_env
from telethon import errors

from medical_etl.db import conn_params
from medical_etl.jobs import JobError, run_job
from medical_etl.jobs.process import stage_environment
from medical_etl.load import load_raw_to_postgres
from medical_etl.monitoring.rules import RulesError, load_rules
from medical_etl.monitoring.run import metric_fields, run_monitor
from medical_etl.runlog import RunLog
from medical_etl.scrape.stage import scrape_telegram_data
from medical_etl.scrape.standin import Post, StandInClient


def msg(mid, text="hello", channel="CheMed123", **kw):
    base = {"channel_username": channel, "channel_title": "CheMed", "channel_id": 1, "message_id": mid,
            "date": "2026-01-10T08:00:00+00:00", "text": text, "views": 10, "forwards": 1, "replies": 0,
            "edit_date": None, "grouped_id": None, "reply_to_msg_id": None, "media_type": None,
            "image_path": None, "scraped_at": "2026-01-11T00:00:00+00:00"}
    base.update(kw)
    return base


def write_raw(lake_dir: Path, day: str, channel: str, text: str) -> Path:
    d = lake_dir / "telegram_messages" / day
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{channel}.json").write_text(text, encoding="utf-8")
    return d / f"{channel}.json"


def write(lake_dir: Path, day: str, channel: str, records) -> Path:
    return write_raw(lake_dir, day, channel, json.dumps(records, ensure_ascii=True))


def raw_rows(conn):
    return query(conn, """SELECT channel, message_id, message_text, views, source_file, source_position
                          FROM raw.telegram_messages ORDER BY 1, 2""")


def rejects(conn):
    return query(conn, "SELECT source_file, position, reason FROM raw.load_rejects ORDER BY 1, 2")


def assert_rerun_changes_nothing(settings, lake_dir, conn):
    before, before_rejects = raw_rows(conn), rejects(conn)
    again = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert again["rows_inserted"] == 0 and again["rows_updated"] == 0
    assert raw_rows(conn) == before and rejects(conn) == before_rejects


def clean_load(pg_admin, lake_dir):
    with scratch_database(pg_admin) as db:
        load_raw_to_postgres(db, lake_dir)
        c = psycopg2.connect(**db.kwargs())
        try:
            return raw_rows(c), rejects(c)
        finally:
            c.close()


# --- poison records in the lake (load) ---------------------------------------------

def test_lone_surrogate_is_stored_as_replacement_character(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    # valid JSON, not valid UTF-8 text: half an emoji in the text and in a rejected record
    write_raw(lake_dir, "2026-01-10", "CheMed123",
              '[' + json.dumps(msg(1, "price 100 birr ")).replace('birr ', 'birr \\ud83d') + ','
              + json.dumps(msg(2, views=-1)).replace('"hello"', '"bad \\udc00"') + ']')
    write(lake_dir, "2026-01-10", "tikvahpharma", [msg(5, channel="tikvahpharma")])
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 2 and s["surrogates_replaced"] == 1 and s["rows_rejected"] == 1
    texts = dict(query(conn, "SELECT message_id, message_text FROM raw.telegram_messages"))
    assert texts == {1: "price 100 birr \ufffd", 5: "hello"}
    (reject,) = query(conn, "SELECT position, reason, payload FROM raw.load_rejects")
    assert reject[0] == 1 and "negative count" in reject[1] and "bad \ufffd" in reject[2]
    assert_rerun_changes_nothing(settings, lake_dir, conn)


@pytest.mark.parametrize("bad, reason", [
    ({"views": 2**63}, "views: 9223372036854775808 is out of range"),
    ({"views": 2**40}, "views: 1099511627776 is out of range"),
    ({"message_id": 2**64}, "message_id: 18446744073709551616 is out of range"),
    ({"message_id": -3}, "message_id: must be positive"),
    ({"channel_id": -(2**70)}, "channel_id: "),
    ({"reply_to_msg_id": 2**33}, "reply_to_msg_id: 8589934592 is out of range"),
])
def test_out_of_range_integers_are_quarantined_and_the_batch_loads(settings, conn, tmp_path, bad, reason):
    lake_dir = tmp_path / "lake"
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1), msg(2, **bad), msg(3)])
    write(lake_dir, "2026-01-11", "CheMed123", [msg(4, date="2026-01-11T08:00:00+00:00")])
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 3 and s["rows_rejected"] == 1
    assert [r[1] for r in raw_rows(conn)] == [1, 3, 4]
    ((file, pos, why),) = rejects(conn)
    assert file.endswith("2026-01-10/CheMed123.json") and pos == 1 and reason in why
    assert_rerun_changes_nothing(settings, lake_dir, conn)


def test_dates_outside_telegram_and_the_clock_are_rejected(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    soon = (datetime.now(timezone.utc) + timedelta(minutes=20)).isoformat()
    write(lake_dir, "2026-01-10", "CheMed123", [
        msg(1, date="2099-01-01T00:00:00+00:00"), msg(2, date="1999-05-01T00:00:00+00:00"),
        msg(3, date=soon), msg(4, edit_date="2099-01-01T00:00:00+00:00"), msg(5),
        msg(6, scraped_at="2099-01-01T00:00:00+00:00"), msg(7, media_status="bogus", media_type="photo"),
        msg(8, media_status="not_included", media_type="a-kind-telegram-adds-next-year")])
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 3  # 20 minutes ahead is clock skew; an unknown media kind only warns in dbt
    reasons = {pos: why for _, pos, why in rejects(conn)}
    assert set(reasons) == {0, 1, 3, 5, 6}
    assert "in the future" in reasons[0] and "predates Telegram" in reasons[1] and "edit_date" in reasons[3]
    assert "scraped_at" in reasons[5] and "media_status: 'bogus' is not one of" in reasons[6]
    # a post from the future becomes valid with time: its file is read again on every run until then
    again = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert again["files_read"] == 1 and again["rows_inserted"] == 0 and len(rejects(conn)) == 5


def test_values_the_loader_accepts_pass_the_dbt_tests(settings, conn, tmp_path):
    """The extremes the loader lets through build and test cleanly in dbt (no stop for everyone)."""
    from medical_etl.transform import run_dbt_transformations

    lake_dir = tmp_path / "lake"
    edge = (datetime.now(timezone.utc) + timedelta(minutes=50)).replace(microsecond=0).isoformat()
    write(lake_dir, "2026-01-10", "CheMed123", [
        msg(2**31 - 1, "Paracetamol 500mg 💵280", views=2**31 - 1, forwards=2**31 - 1, replies=2**31 - 1,
            channel_id=-(2**63), grouped_id=2**63 - 1),
        msg(2, "early", date="2013-08-14T00:00:00+00:00"),
        msg(3, "skewed clock", date=edge)])
    write(lake_dir, "2026-01-10", "tikvahpharma", [
        msg(9, "x\ud83d", channel="tikvahpharma", views=0, media_type="a-new-kind", media_status="not_saved"),
        msg(10, "y", channel="tikvahpharma", media_type="photo", media_status="not_included",
            forward_from_name="\u12a0\u1295\u12f5" * 100, forward_from_id=-(2**63))])
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 5 and s["rows_rejected"] == 0
    summary = run_dbt_transformations(conn_params(settings), check_freshness=False)
    assert summary["status"] == "success", summary["failing_nodes"]
    assert summary["tests_failed"] == 0 and summary["tests_passed"] > 10


def test_same_message_in_two_files_is_resolved_the_same_whatever_the_order(settings, conn, tmp_path, pg_admin):
    lake_dir = tmp_path / "lake"
    older = [msg(1, "old copy", scraped_at="2026-01-11T00:00:00+00:00"), msg(2)]
    newer = [msg(1, "new copy", views=99, scraped_at="2026-01-12T00:00:00+00:00"),
             msg(3, date="2026-01-11T09:00:00+00:00")]
    # the newer copy lives in the lexically smaller path: path order alone would pick the old one
    f_new = write(lake_dir, "2026-01-09", "CheMed123", newer)
    f_old = write(lake_dir, "2026-01-10", "CheMed123", older)
    expected_rows, expected_rejects = clean_load(pg_admin, lake_dir)
    assert [r[2] for r in expected_rows] == ["new copy", "hello", "hello"]
    ((file, pos, why),) = expected_rejects
    assert file.endswith("2026-01-10/CheMed123.json") and pos == 0 and "2026-01-09/CheMed123.json" in why

    # incrementally, older file first, then the newer one appears
    hidden = f_new.read_text()
    f_new.unlink()
    load_raw_to_postgres(conn_params(settings), lake_dir)
    f_new.write_text(hidden)
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_duplicate"] == 1
    assert raw_rows(conn) == expected_rows and rejects(conn) == expected_rejects
    assert_rerun_changes_nothing(settings, lake_dir, conn)

    # editing the losing file does not flip the winner
    edited = [dict(older[0], text="old copy, edited"), older[1]]
    f_old.write_text(json.dumps(edited))
    load_raw_to_postgres(conn_params(settings), lake_dir)
    assert raw_rows(conn)[0][2] == "new copy" and len(rejects(conn)) == 1
    assert raw_rows(conn) == clean_load(pg_admin, lake_dir)[0]


def test_edits_to_a_winning_file_give_the_rows_of_a_clean_load(settings, conn, tmp_path, pg_admin):
    lake_dir = tmp_path / "lake"
    winner = [msg(1, "new copy", scraped_at="2026-01-12T00:00:00+00:00"), msg(2, "kept")]
    f_win = write(lake_dir, "2026-01-09", "CheMed123", winner)
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1, "old copy", scraped_at="2026-01-11T00:00:00+00:00")])
    load_raw_to_postgres(conn_params(settings), lake_dir)
    assert raw_rows(conn)[0][2] == "new copy"

    def same_as_clean():
        rows, rej = clean_load(pg_admin, lake_dir)
        assert raw_rows(conn) == rows and rejects(conn) == rej
        return rows, rej

    # the winner's scrape time drops below the loser's: the other copy wins
    f_win.write_text(json.dumps([dict(winner[0], scraped_at="2026-01-10T00:00:00+00:00"), winner[1]]))
    load_raw_to_postgres(conn_params(settings), lake_dir)
    rows, _ = same_as_clean()
    assert rows[0][2] == "old copy"
    # back up, then the winning file loses the message altogether: the other copy is all there is
    f_win.write_text(json.dumps(winner))
    load_raw_to_postgres(conn_params(settings), lake_dir)
    assert same_as_clean()[0][0][2] == "new copy"
    f_win.write_text(json.dumps([winner[1]]))
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    rows, rej = same_as_clean()
    assert rows[0][2] == "old copy" and rej == [] and s["rows_deleted"] == 1
    # a stored record becomes invalid: it leaves the table and is quarantined
    f_win.write_text(json.dumps([dict(winner[1], date="2099-01-01T00:00:00+00:00")]))
    load_raw_to_postgres(conn_params(settings), lake_dir)
    rows, rej = same_as_clean()
    assert [r[1] for r in rows] == [1] and "in the future" in rej[0][2]
    assert_rerun_changes_nothing(settings, lake_dir, conn)


def test_rows_stored_before_positions_existed_are_read_again_not_a_failure(settings, conn, tmp_path, pg_admin):
    lake_dir = tmp_path / "lake"
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1, "old copy"), msg(2, date="2099-01-01T00:00:00+00:00")])
    load_raw_to_postgres(conn_params(settings), lake_dir)
    with conn.cursor() as cur:  # as a database loaded by the previous version looks after migration 009
        cur.execute("""INSERT INTO raw.telegram_messages (channel, message_id, message_date, message_text,
                           source_file) VALUES ('CheMed123', 2, '2099-01-01', 'from the future',
                           'telegram_messages/2026-01-10/CheMed123.json')""")
        cur.execute("UPDATE raw.telegram_messages SET source_position = NULL")
        cur.execute("UPDATE raw.loaded_files SET size_bytes = -1, sha256 = ''")
    conn.commit()
    write(lake_dir, "2026-01-09", "CheMed123", [msg(1, "new copy", scraped_at="2026-01-12T00:00:00+00:00")])
    load_raw_to_postgres(conn_params(settings), lake_dir)
    rows, rej = clean_load(pg_admin, lake_dir)
    assert raw_rows(conn) == rows and rejects(conn) == rej
    assert [r[2] for r in rows] == ["new copy"] and len(rej) == 2  # the loser and the future post


def test_a_record_the_database_refuses_is_isolated_and_the_other_files_load(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    load_raw_to_postgres(conn_params(settings), lake_dir)  # creates the tables
    with conn.cursor() as cur:  # a server-side rule the loader cannot know about
        cur.execute("ALTER TABLE raw.telegram_messages ADD CONSTRAINT no_poison "
                    "CHECK (message_text <> 'poison for the server')")
    conn.commit()
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1), msg(2, "poison for the server"), msg(3)])
    write(lake_dir, "2026-01-10", "tikvahpharma", [msg(7, channel="tikvahpharma")])
    write(lake_dir, "2026-01-11", "CheMed123", [msg(8, date="2026-01-11T08:00:00+00:00")])
    s = load_raw_to_postgres(conn_params(settings), lake_dir, batch_rows=1000)  # all three files in one batch
    assert s["rows_inserted"] == 4 and s["rows_refused_by_db"] == 1
    assert [r[1] for r in raw_rows(conn)] == [1, 3, 8, 7]  # CheMed123 first, then tikvahpharma
    ((file, pos, why),) = rejects(conn)
    assert pos == 1 and "CheckViolation" in why and "no_poison" in why
    assert_rerun_changes_nothing(settings, lake_dir, conn)


# --- confinement ---------------------------------------------------------------------

def test_image_paths_outside_the_lake_are_rejected_at_load(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    bad = ["../../etc/passwd", "/dev/zero", "images/../../../etc/shadow", "images/CheMed123/../../x.jpg",
           "telegram_messages/2026-01-10/CheMed123.json", "images\\CheMed123\\1.jpg"]
    records = [msg(i + 1, image_path=p) for i, p in enumerate(bad)]
    records.append(msg(50, image_path="images/CheMed123/50.jpg"))
    write(lake_dir, "2026-01-10", "CheMed123", records)
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 1 and s["rows_rejected"] == len(bad)
    assert all("is not a path under the lake's images/ folder" in why for _, _, why in rejects(conn))


def test_lake_file_that_is_a_symlink_or_fifo_is_refused_not_read(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps([msg(1, "secret from outside the lake")]))
    d = lake_dir / "telegram_messages" / "2026-01-10"
    d.mkdir(parents=True)
    (d / "CheMed123.json").symlink_to(outside)
    os.mkfifo(d / "tikvahpharma.json")  # a reader would block forever
    write(lake_dir, "2026-01-11", "CheMed123", [msg(2, date="2026-01-11T08:00:00+00:00")])
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 1 and s["files_rejected"] == 2
    assert query(conn, "SELECT count(*) FROM raw.telegram_messages WHERE message_text LIKE 'secret%'")[0][0] == 0
    reasons = {f.rsplit("/", 1)[1]: why for f, _, why in rejects(conn)}
    assert "symbolic link" in reasons["CheMed123.json"] and "not a regular file" in reasons["tikvahpharma.json"]


def test_scrape_creates_the_telegram_session_file_private(settings, tmp_path):
    from medical_etl.scrape.telegram import build_client

    s = replace(settings, telegram_api_id=12345, telegram_api_hash="0123456789abcdef0123456789abcdef",
                telegram_session=tmp_path / "sessions" / "scraper")
    old = os.umask(0o022)
    try:
        client = build_client(s)
        client.session.close()
    finally:
        os.umask(old)
    path = tmp_path / "sessions" / "scraper.session"
    assert path.is_file() and path.stat().st_mode & 0o777 == 0o600


# --- alerts that reach a person --------------------------------------------------------

class _Hook(BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    class Hook(_Hook):
        bodies = []

    srv = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/hook", Hook.bodies
    srv.shutdown()


def failed_job_log(logs: Path) -> Path:
    RunLog(logs).append({"run_id": "r1", "job": "pipeline", "stage": None, "status": "failed",
                         "started_at": "2026-11-01T02:00:00Z", "finished_at": "2026-11-01T02:01:00Z",
                         "duration_s": 60, "metrics": {"failed_stage": "load"},
                         "error": {"type": "LoadError", "message": "boom"}, "reason": "stage load: boom"})
    return logs / "runs.jsonl"


def sent_messages(bodies) -> list[str]:
    return [a["message"] for b in bodies for a in b["alerts"] if a["state"] == "firing"]


def test_no_deliver_run_does_not_count_alerts_as_sent(tmp_path, webhook):
    url, bodies = webhook
    log = failed_job_log(tmp_path / "logs")
    env = {"MONITOR_WEBHOOK_URL": url}
    result, rc = run_monitor(log, env=env, send=False)
    assert rc == 3 and result["sent"] == [] and bodies == []
    result, rc = run_monitor(log, env=env)
    assert rc == 3 and any("job pipeline failed (run r1)" in m for m in sent_messages(bodies))
    assert [a for a in result["active_alerts"] if a["severity"] == "critical"][0]["new"] is True
    n = len(bodies)
    result, rc = run_monitor(log, env=env)  # delivered once
    assert rc == 3 and len(bodies) == n and result["sent"] == []


@pytest.mark.parametrize("change, expect", [
    ({"message_template": "job {job failed"}, "expected '}'"),
    ({"message_template": "job {job.__class__.__mro__}"}, "not a plain name"),
    ({"message_template": "job {run_id[0]}"}, "not a plain name"),
    ({"message_template": "job {job!r}"}, "conversions and format specs are not allowed"),
    ({"message_template": "job {jbo} failed"}, "{jbo} is not offered by this metric"),
    ({"threshold": float("nan")}, "threshold must be a finite number"),
    ({"threshold": float("inf")}, "threshold must be a finite number"),
])
def test_bad_rules_are_refused_when_read_naming_the_rule(tmp_path, change, expect):
    rules = {"rules": [{"alert_type": "pipeline_failure", "metric": "job_failed", "threshold": 1,
                        "comparison": "ge", "window": 1, "severity": "critical",
                        "message_template": "job {job} failed", **change}]}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))  # json writes NaN and Infinity as Python's json reads them
    with pytest.raises(RulesError, match=r"rule #1 \(pipeline_failure\)") as info:
        load_rules(path, metric_fields())
    assert expect in str(info.value)
    r = subprocess.run([sys.executable, "-m", "medical_etl", "monitor", "--rules", str(path), "--no-warehouse"],
                       env={**os.environ, "LOGS_PATH": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 4 and "pipeline_failure" in r.stderr


def test_report_write_failure_does_not_hide_the_critical_exit_code(tmp_path, webhook):
    url, bodies = webhook
    log = failed_job_log(tmp_path / "logs")
    result, rc = run_monitor(log, env={"MONITOR_WEBHOOK_URL": url},
                             html_path=tmp_path / "missing" / "folder" / "report.html")
    assert rc == 3 and sent_messages(bodies)  # delivered, and the exit code is the critical one
    assert "cannot write the report" in result["problems"][0]


def test_unwritable_state_file_is_a_problem_on_top_of_the_verdict(tmp_path, webhook):
    url, bodies = webhook
    log = failed_job_log(tmp_path / "logs")
    (tmp_path / "a-file").write_text("")
    result, rc = run_monitor(log, env={"MONITOR_WEBHOOK_URL": url}, state_path=tmp_path / "a-file" / "state.json")
    assert rc == 3 and sent_messages(bodies)
    assert "cannot write the alert state" in result["problems"][0]


def test_job_past_its_time_limit_is_alerted_while_its_process_lives(tmp_path):
    from medical_etl.running import mark_running

    logs = tmp_path / "logs"
    mark_running(logs, "pipeline", "r-overdue", deadline_s=-1)  # this (live) process, out of time
    result, rc = run_monitor(logs / "runs.jsonl", send=False)
    died = [a for a in result["active_alerts"] if a["alert_type"] == "pipeline_died"]
    assert rc == 3 and "past its time limit" in died[0]["message"]
    mark_running(logs, "pipeline", "r-fine", deadline_s=3600)
    result, _ = run_monitor(logs / "runs.jsonl", send=False)
    assert [a["key"] for a in result["active_alerts"] if a["alert_type"] == "pipeline_died"] == [died[0]["key"]]


# --- deaths reach the monitor ------------------------------------------------------------

def _wait(pred, timeout=120, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_job_killed_with_sigkill_is_alerted_once(settings, tmp_path, webhook):
    url, bodies = webhook
    env = settings_env(settings)
    env.update(TELEGRAM_SOURCE="sample")
    proc = subprocess.Popen([sys.executable, "-m", "medical_etl", "job", "pipeline"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running = settings.logs_path / "running"
    _wait(lambda: running.is_dir() and any(running.glob("*.json")), what="the job's start marker")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log = settings.logs_path / "runs.jsonl"
    assert not [r for r in RunLog(log).records() if r["stage"] is None]  # the job wrote no end

    result, rc = run_monitor(log, env={"MONITOR_WEBHOOK_URL": url})
    assert rc == 3
    died = [m for m in sent_messages(bodies) if "never finished" in m]
    assert len(died) == 1 and "its process is gone" in died[0]
    run_monitor(log, env={"MONITOR_WEBHOOK_URL": url})
    # the next job records the death in the run log; the alert is still not sent again
    run_job("scrape-load", replace(settings, telegram_source="sample"))
    job_records = [r for r in RunLog(log).records() if r["stage"] is None]
    assert job_records[0]["status"] == "failed" and job_records[0]["reason"] == "died"
    assert not any(running.glob("*.json"))
    run_monitor(log, env={"MONITOR_WEBHOOK_URL": url})
    assert len([m for m in sent_messages(bodies) if "never finished" in m]) == 1


def test_queries_of_a_killed_stage_do_not_run_on(settings, conn):
    from medical_etl.db import conn_params

    params = conn_params(settings)
    env = stage_environment("20261126T000000Z-deadbeef", "transform")
    code = textwrap.dedent(f"""
        from medical_etl.db import ConnParams, connect
        c = connect(ConnParams({params.host!r}, {params.port}, {params.dbname!r}, {params.user!r}))
        c.cursor().execute("SELECT pg_sleep(120)")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    app = env["PGAPPNAME"]
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    _wait(lambda: query(conn, count, (app,))[0][0] == 1, what="the stage's query")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    _wait(lambda: query(conn, count, (app,))[0][0] == 0, timeout=15, what="the server to end the query")
    assert time.time() - t0 < 10


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


class _ServerErrors(StandInClient):
    def __init__(self, posts, raise_):
        super().__init__(posts, page_size=30)
        self.raise_ = list(raise_)

    async def on_page(self, entity, request_no):
        if self.raise_:
            raise self.raise_.pop(0)


def test_telegram_server_errors_are_retried_not_reported_as_channel_failures(tmp_path):
    posts = [Post("CheMed123", i, datetime(2026, 1, 10, tzinfo=timezone.utc), f"post {i}") for i in range(1, 70)]
    slept = []

    async def sleep(s):
        slept.append(s)

    client = _ServerErrors(posts, [errors.RpcCallFailError(request=None),
                                   errors.ServerError(request=None, message="INTERNAL_SERVER_ERROR", code=500),
                                   errors.TimedOutError(request=None, message="Timeout", code=-503)])
    summary = scrape_telegram_data(client, ["CheMed123"], tmp_path, sleep=sleep, network_attempts=5)
    assert summary["status"] == "success" and summary["channels"]["CheMed123"]["new_messages"] == 69
    assert len(slept) == 3


# --- the schedule's hour ---------------------------------------------------------------------

def _fires(entries: list[str], instant: datetime, zone) -> bool:
    """Would cron, running in ``zone``, run one of ``entries`` at ``instant`` (guards evaluated)?"""
    local = instant.astimezone(zone)
    for e in entries:
        minute, hour, _dom, _mon, dow, cmd = e.split(None, 5)
        if int(minute) != local.minute or int(hour) != local.hour:
            continue
        if dow != "*" and int(dow) != local.isoweekday() % 7:
            continue
        if cmd.startswith("[ "):
            fmt, want = re.match(r'\[ "\$\(date -u \+([^)]*)\)" = (\d+) \] && ', cmd).groups()
            if instant.strftime(fmt.replace("\\", "")) != want:
                continue
        return True
    return False


@pytest.mark.parametrize("zone_name", ["UTC", "Africa/Addis_Ababa", "Asia/Kolkata", "Pacific/Honolulu",
                                       "Pacific/Kiritimati", "Europe/Berlin", "America/New_York",
                                       "Australia/Sydney"])
def test_cron_entries_fire_at_the_utc_times_in_any_zone(zone_name):
    from zoneinfo import ZoneInfo

    from medical_etl.ops import cron

    zone = ZoneInfo(zone_name)
    rendered = cron.block(REPO, zone=zone, zone_name=zone_name, now=datetime(2026, 1, 5, tzinfo=timezone.utc))
    assert "\nCRON_TZ=" not in rendered.text
    lines = [ln for ln in rendered.text.splitlines() if ln and ln[0].isdigit()]
    daily = [ln for ln in lines if ln.endswith("cron_run.sh pipeline")]
    weekly = [ln for ln in lines if ln.endswith("cron_run.sh weekly")]
    assert daily and weekly
    has_dst = zone_name in ("Europe/Berlin", "America/New_York", "Australia/Sydney")
    assert ("daylight saving" in rendered.notes[0]) == has_dst and (len(daily) == 2) == has_dst
    # every minute of two weeks around each daylight-saving change of 2026
    for start in (datetime(2026, 3, 25, tzinfo=timezone.utc), datetime(2026, 10, 20, tzinfo=timezone.utc),
                  datetime(2026, 3, 31, tzinfo=timezone.utc), datetime(2026, 10, 30, tzinfo=timezone.utc)):
        fired_daily, fired_weekly = [], []
        for m in range(0, 8 * 24 * 60):
            t = start + timedelta(minutes=m)
            if _fires(daily, t, zone):
                fired_daily.append(t)
            if _fires(weekly, t, zone):
                fired_weekly.append(t)
        assert [(t.hour, t.minute) for t in fired_daily] == [(2, 0)] * 8, (zone_name, fired_daily)
        assert [(t.weekday(), t.hour, t.minute) for t in fired_weekly] == [(6, 3, 0)], (zone_name, fired_weekly)


def test_cron_entries_do_not_depend_on_the_season_they_were_written_in():
    from zoneinfo import ZoneInfo

    from medical_etl.ops import cron

    zone = ZoneInfo("Europe/Berlin")
    january = cron.block(REPO, zone=zone, zone_name="Europe/Berlin", now=datetime(2026, 1, 5, tzinfo=timezone.utc))
    july = cron.block(REPO, zone=zone, zone_name="Europe/Berlin", now=datetime(2026, 7, 5, tzinfo=timezone.utc))
    assert january.text == july.text


def test_delivery_numbers_are_checked_when_the_rules_are_read(tmp_path):
    doc = {"rules": [], "delivery": {"webhook": {"url": "http://127.0.0.1:9/x", "timeout_s": float("nan")}}}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RulesError, match="delivery.webhook: timeout_s"):
        load_rules(path, metric_fields())
    doc["delivery"]["webhook"] = {"url": "", "retries": -5}
    path.write_text(json.dumps(doc))
    with pytest.raises(RulesError, match="delivery.webhook: retries"):
        load_rules(path, metric_fields())


def _fake_crontab(tmp_path: Path) -> tuple[Path, Path]:
    store = tmp_path / "crontab.txt"
    fake = tmp_path / "crontab"
    fake.write_text(f"""#!/bin/sh
case "$1" in
  -l) [ -f {store} ] && cat {store} || {{ echo "no crontab for $(id -un)" >&2; exit 1; }} ;;
  -r) [ -f {store} ] && rm {store} || {{ echo "no crontab for $(id -un)" >&2; exit 1; }} ;;
  *) cat > {store} ;;
esac
""")
    fake.chmod(0o755)
    return fake, store


def test_cron_uninstall_restores_exactly_what_was_there(tmp_path):
    from medical_etl.ops import cron

    fake, store = _fake_crontab(tmp_path)
    cron.install(str(fake))
    assert "cron_run.sh pipeline" in store.read_text()
    ok, detail = cron.check(str(fake))
    assert ok, detail
    cron.uninstall(str(fake))
    assert not store.exists()  # there was no crontab before: none after

    store.write_text("MAILTO=ops@example.com\n\n15 * * * * /usr/bin/other-job\n")
    before = store.read_text()
    cron.install(str(fake))
    store.write_text(store.read_text().replace("0 2 * * *", "0 23 * * *"))  # edited by hand since
    ok, detail = cron.check(str(fake))
    assert not ok and "make install-cron" in detail
    cron.uninstall(str(fake))
    assert store.read_text() == before


def test_cron_without_a_crontab_program_says_to_install_cron(tmp_path):
    from medical_etl.ops import cron

    with pytest.raises(cron.CronError, match="install cron"):
        cron.install(str(tmp_path / "no-such-crontab"))
    r = subprocess.run([sys.executable, "-m", "medical_etl", "cron", "install", "--crontab",
                        str(tmp_path / "no-such-crontab")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "apt-get install cron" in r.stderr
