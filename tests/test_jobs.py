import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone

import psycopg2
import pytest
from helpers import REPO, query, scratch_database, settings_env
from helpers.exports import write_desktop_exports

from medical_etl.db import conn_params
from medical_etl.filelock import acquire_lock
from medical_etl.jobs import JobError, jobs, run_job
from medical_etl.runlog import RunLog
from medical_etl.scrape.standin import Post, StandInClient, read_message_list

FACT_CHECKSUMS = {
    "marts.fct_messages": "message_key, views, forwards, text_length, price_count, has_image",
    "marts.fct_product_prices": "price_key, product_name, price_birr",
    "marts.fct_image_detections": "detection_key, class_name, round(confidence, 2)",
    "marts.fct_image_categories": "message_key, image_category",
    "raw.image_analyses": "channel, message_id, status, n_objects",
}



def warehouse_fingerprint(conn) -> dict:
    out = {}
    for table, cols in FACT_CHECKSUMS.items():
        out[table] = query(conn, f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                             f"FROM (SELECT {cols} FROM {table}) AS t")[0]
    return out


@pytest.fixture
def job_settings(settings, shared_sample):
    return replace(settings, stage_timeout_s=900)


def records(settings):
    return list(RunLog(settings.logs_path).records())


def test_pipeline_job_end_to_end_and_rerun(job_settings, conn, shared_sample):
    s = job_settings
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    summary = run_job("pipeline", s, client=StandInClient(posts))
    assert summary["status"] == "success"
    st = summary["stages"]
    assert st["scrape"]["new_messages"] == 276 and st["load"]["rows_inserted"] == 276
    assert st["transform"]["tests_failed"] == 0 and st["transform"]["status"] == "success"
    assert st["enrich"]["photos_analysed"] == 197 and st["enrich"]["dbt"]["tests_failed"] == 0
    assert query(conn, "SELECT count(*) FROM marts.fct_messages")[0][0] == 276
    assert query(conn, "SELECT count(*) FROM raw.image_analyses WHERE status <> 'unreadable'")[0][0] == 194
    assert query(conn, "SELECT count(*) FROM marts.fct_image_detections")[0][0] == st["enrich"]["objects_found"]
    assert query(conn, "SELECT count(*) FROM marts.fct_product_prices")[0][0] > 500
    recs = [r for r in records(s) if r["run_id"] == summary["run_id"]]
    assert [r["stage"] for r in recs if r["stage"]] == ["scrape", "load", "transform", "enrich"]
    (job,) = [r for r in recs if r["stage"] is None]
    assert job["job"] == "pipeline" and job["status"] == "success"
    assert job["metrics"]["stages"] == ["scrape", "load", "transform", "enrich"]
    assert all(r["metrics"] and r["status"] == "success" for r in recs)
    before = warehouse_fingerprint(conn)

    again = run_job("pipeline", s, client=StandInClient(posts))
    st = again["stages"]
    assert again["status"] == "success"
    assert st["scrape"]["new_messages"] == 0 and st["load"]["rows_inserted"] == 0
    assert st["load"]["rows_updated"] == 0 and st["enrich"]["photos_analysed"] == 0
    assert warehouse_fingerprint(conn) == before


# sessions of the test's own database waiting on the lock a test holds on raw.loaded_files
LOAD_WAITS_ON_LOCK = """SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                        AND datname = current_database() AND query ILIKE '%loaded_files%'"""


def _start_job(env, job="pipeline"):
    # As from a terminal: a job started in the background (nohup, `&` in a script) inherits SIGINT
    # ignored, and Ctrl-C could never reach it.
    return subprocess.Popen([sys.executable, "-m", "medical_etl", "job", job], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(conn, sql, pred, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            n = query(conn, sql)[0][0]
        except psycopg2.Error:
            conn.rollback()
            n = None
        if n is not None and pred(n):
            return n
        assert proc.poll() is None, f"job ended early: {proc.stderr.read()[-2000:]}"
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_kill_mid_load_and_mid_enrich_then_rerun_equals_clean_run(job_settings, conn, shared_sample,
                                                                  tmp_path, pg_admin):
    exports = write_desktop_exports(shared_sample, tmp_path / "exports")
    s = replace(job_settings, telegram_source=str(exports))
    env = settings_env(s)
    env.update(TELEGRAM_SOURCE=str(exports), LOAD_BATCH_ROWS="1")

    # 1. kill in the middle of the load: a batch has copied its rows and waits on our lock
    from medical_etl.db import connect
    from medical_etl.migrate import migrate

    c = connect(conn_params(s))
    migrate(c)
    with c.cursor() as cur:
        cur.execute("LOCK TABLE raw.loaded_files IN EXCLUSIVE MODE")  # held until we roll back
    proc = _start_job(env)
    _wait_for(conn, LOAD_WAITS_ON_LOCK, lambda n: n > 0, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    c.rollback()
    c.close()
    time.sleep(1)  # the stage process dies with its job (PR_SET_PDEATHSIG)
    assert query(conn, "SELECT count(*) FROM raw.telegram_messages")[0][0] == 0  # the batch in flight rolled back

    # 2. re-run, kill in the middle of enrich
    proc = _start_job(env)
    n = _wait_for(conn, "SELECT count(*) FROM raw.image_analyses", lambda n: 0 < n < 150, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    assert 0 < query(conn, "SELECT count(*) FROM raw.image_analyses")[0][0] < 197, n

    # 3. re-run to the end; compare with a clean run in another database
    r = subprocess.run([sys.executable, "-m", "medical_etl", "job", "pipeline"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    killed = warehouse_fingerprint(conn)

    with scratch_database(pg_admin) as db:
        clean = replace(s, db_name=db.dbname, raw_data_path=tmp_path / "clean_raw", logs_path=tmp_path / "clean_logs")
        run_job("pipeline", clean)
        c2 = psycopg2.connect(**db.kwargs())
        assert warehouse_fingerprint(c2) == killed
        c2.close()
    assert killed["raw.image_analyses"][0] == 197


def test_second_job_while_one_runs_is_skipped(job_settings, tmp_path):
    s = replace(job_settings, telegram_source="sample")
    env = settings_env(s)
    env["TELEGRAM_SOURCE"] = "sample"
    lock = acquire_lock(s.logs_path / "pipeline.lock")  # as a running job holds it
    try:
        r = subprocess.run([sys.executable, "-m", "medical_etl", "job", "scrape-load"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    finally:
        lock.release()
    assert r.returncode == 0, r.stderr
    (rec,) = records(s)
    assert rec["status"] == "skipped" and rec["job"] == "scrape-load"
    assert f"pid {os.getpid()}" in rec["reason"]

    # and two real jobs: the second starts while the first holds the lock
    first = _start_job(env, "pipeline")
    lock_file = s.logs_path / "pipeline.lock"
    t0 = time.time()
    while not (lock_file.exists() and f"pid {first.pid}" in lock_file.read_text()):
        assert time.time() - t0 < 60 and first.poll() is None
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "medical_etl", "job", "pipeline"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0
    assert first.wait(600) == 0
    jobs = [r for r in records(s) if r["stage"] is None and r["job"] == "pipeline"]
    assert sorted(r["status"] for r in jobs) == ["skipped", "success"]


def test_failed_stage_stops_later_stages_and_exits_nonzero(job_settings, conn):
    s = replace(job_settings, telegram_source="sample")
    run_job("scrape-load", s)
    with conn.cursor() as cur:
        cur.execute("UPDATE raw.telegram_messages SET message_date = now() + interval '30 days', "
                    "updated_at = now() WHERE message_id = (SELECT min(message_id) FROM raw.telegram_messages)")
    conn.commit()
    env = settings_env(s)
    env["TELEGRAM_SOURCE"] = "sample"
    r = subprocess.run([sys.executable, "-m", "medical_etl", "job", "pipeline"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "failed at stage transform" in r.stderr and "assert_no_future_posts" in r.stderr
    recs = records(s)
    run_id = recs[-1]["run_id"]
    this = [x for x in recs if x["run_id"] == run_id]
    assert [x["stage"] for x in this if x["stage"]] == ["scrape", "load", "transform"]  # no enrich
    job = [x for x in this if x["stage"] is None][0]
    assert job["status"] == "failed" and job["metrics"]["failed_stage"] == "transform"


class HangingClient(StandInClient):
    async def on_page(self, entity, request_no):
        await asyncio.sleep(3600)


def test_hung_stage_is_ended_and_recorded_as_timeout(job_settings):
    s = replace(job_settings, telegram_channels=("CheMed123",))
    t0 = time.time()
    with pytest.raises(JobError) as info:
        run_job("pipeline", s, client=HangingClient([Post("CheMed123", 1, datetime.now(timezone.utc), "x")]),
                stage_timeout_s=3)
    assert time.time() - t0 < 30
    assert info.value.summary["failed_stage"] == "scrape"
    recs = records(s)
    stage = [r for r in recs if r["stage"] == "scrape"][0]
    assert stage["status"] == "failed" and stage["reason"] == "timeout"
    assert not [r for r in recs if r["stage"] == "load"]
    assert [r for r in recs if r["stage"] is None][0]["status"] == "failed"


def test_make_j4_two_jobs_never_interleave_their_stages(job_settings):
    """`make -j4` starts both job targets at once: the job lock lets one run its stages (in the
    Makefile's order), the other records skipped; no two stages ever run at the same time."""
    env = settings_env(job_settings)
    env.update(TELEGRAM_SOURCE="sample", MAKEFLAGS="")
    r = subprocess.run(["make", "-s", "-j4", "pipeline", "scrape-load"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(job_settings)
    job_recs = {x["job"]: x for x in recs if x["stage"] is None}
    assert set(job_recs) == {"pipeline", "scrape-load"}
    ran = [name for name, rec in job_recs.items() if rec["status"] == "success"]
    skipped = [name for name, rec in job_recs.items() if rec["status"] == "skipped"]
    assert len(ran) == 1 and len(skipped) == 1 and "lock" in job_recs[skipped[0]]["reason"]
    stages = [x for x in recs if x["stage"]]
    assert [x["stage"] for x in stages] == list(jobs()[ran[0]])
    assert all(x["job"] == ran[0] and x["run_id"] == job_recs[ran[0]]["run_id"] for x in stages)
    spans = sorted((x["started_at"], x["finished_at"]) for x in stages)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans   # one after the other


def test_the_job_table_is_read_as_make_reads_it():
    import re

    from medical_etl.jobs.definitions import job_definitions

    # as if typed at a shell: under `make test` the parent's MAKELEVEL would make the child print directories
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    database = subprocess.run(["make", "-pn", "--no-print-directory", "help"], cwd=REPO, capture_output=True,
                              text=True, env=env).stdout
    by_make = {m.group(1): m.group(2).split() for m in re.finditer(r"^JOB\.([a-z-]+) := (.*)$", database, re.M)}
    defined = job_definitions()
    assert set(by_make) == set(defined) == set(jobs())
    for name, words in by_make.items():  # Make's value is the stages, then the options Python read
        assert tuple(words[:len(defined[name].stages)]) == defined[name].stages == jobs()[name]
    weekly = defined["weekly"]
    assert (weekly.full_refresh, weekly.refresh_days, weekly.lock_wait_s) == (True, 30, 10800)
    assert by_make["weekly"][4:] == ["--full-refresh", "--refresh-days", "30", "--lock-wait", "10800"]
    pipeline = defined["pipeline"]
    assert (pipeline.stages, pipeline.full_refresh, pipeline.refresh_days, pipeline.lock_wait_s) == \
        (("scrape", "load", "transform", "enrich"), False, None, 0)
    shown = subprocess.run(["make", "-s", "--no-print-directory", "jobs"], cwd=REPO, capture_output=True, text=True,
                           check=True, env=env).stdout
    assert [line.split()[0] for line in shown.splitlines() if line.strip()] == list(defined)
    assert "waits up to 3 h for a running job" in shown and "full dbt refresh" in shown
    dry = subprocess.run(["make", "-n", "--no-print-directory", "pipeline"], cwd=REPO, capture_output=True, text=True, env=env).stdout
    assert dry.strip().endswith("job pipeline")  # the runner reads the rest from the same line


def test_a_jobs_options_come_from_its_line_not_its_name(tmp_path, monkeypatch):
    from medical_etl import resources
    from medical_etl.jobs import definitions
    from medical_etl.jobs.job import job_lock_wait_s, stage_options

    makefile = tmp_path / "Makefile"
    makefile.write_text("JOB.nightly := scrape transform --full-refresh --refresh-days 3 --lock-wait 60  # mine\n"
                        "JOB.weekly := transform\n")
    monkeypatch.setattr(resources, "makefile", lambda: makefile)
    definitions.job_definitions.cache_clear()
    try:
        assert stage_options("nightly", "scrape") == {"refresh_days": 3}
        assert stage_options("nightly", "transform") == {"full_refresh": True}
        assert stage_options("weekly", "transform") == {}  # the name means nothing
        assert stage_options("weekly", "transform", full_refresh=True) == {"full_refresh": True}
        from medical_etl.config import Settings

        assert job_lock_wait_s("nightly", Settings()) == 60 and job_lock_wait_s("weekly", Settings()) == 0
        assert job_lock_wait_s("nightly", Settings(lock_wait_s=5)) == 5
        assert job_lock_wait_s("weekly", Settings(lock_wait_s=5)) == 0  # LOCK_WAIT: for a job that waits
    finally:
        definitions.job_definitions.cache_clear()


@pytest.mark.parametrize("line, why", [
    ("JOB.daily = scrape load", "on one line"),
    ("JOB.daily := scrape \\", "on one line"),
    ("JOB.daily := scrape publish", "unknown: publish"),
    ("JOB.daily := load load", "distinct"),
    ("JOB.daily :=", "distinct"),
    ("JOB.daily := load --fast", "unknown option"),
    ("JOB.daily := load --lock-wait soon", "whole number"),
    ("JOB.daily := load --refresh-days", "unknown option"),
    ("JOB.daily := --full-refresh load", "distinct"),
])
def test_job_lines_make_would_read_differently_are_refused(tmp_path, line, why):
    from medical_etl.errors import PermanentError
    from medical_etl.jobs.definitions import read_jobs

    makefile = tmp_path / "Makefile"
    makefile.write_text(f"JOB.pipeline := scrape load\n{line}\n")
    with pytest.raises(PermanentError, match=why):
        read_jobs(makefile)
    makefile.write_text("JOB.pipeline := scrape load  # a comment\nJOB.pipeline := load\n")
    with pytest.raises(PermanentError, match="defined twice"):
        read_jobs(makefile)


def test_stages_that_differ_from_the_definition_are_refused_before_anything_runs(job_settings):
    with pytest.raises(ValueError, match="differ from the job's definition"):
        run_job("pipeline", job_settings, stages=["load", "scrape"])
    assert records(job_settings) == []
    with pytest.raises(ValueError, match="unknown job"):
        run_job("hourly", job_settings)


def test_some_channels_failing_do_not_hold_back_the_others(job_settings, conn, shared_sample):
    posts = [p for p in read_message_list(shared_sample / "messages") if p.channel != "CheMed123"]
    with pytest.raises(JobError) as info:
        run_job("scrape-load", job_settings, client=StandInClient(posts, private={"lobelia4cosmetics"}))
    s = info.value.summary
    assert s["failed_stage"] == "scrape" and "ChannelPrivateError" in s["error"]
    assert s["stages"]["load"]["rows_inserted"] == 100  # tikvahpharma's posts were loaded
    assert query(conn, "SELECT count(DISTINCT channel) FROM raw.telegram_messages")[0][0] == 1
    job = [r for r in records(job_settings) if r["stage"] is None][0]
    assert job["status"] == "failed" and job["metrics"]["stages"] == ["scrape", "load"]


def test_sigterm_cancels_the_job_cleanly_and_records_it(job_settings, conn, shared_sample, tmp_path):
    """`docker stop` signals the job, `systemctl stop` every process of the unit: either way the job
    ends the running stage, records it and itself `cancelled`, removes its marker and frees the lock.
    Ctrl-C does the same, recorded `failed`."""
    from medical_etl.db import connect
    from medical_etl.migrate import migrate

    exports = write_desktop_exports(shared_sample, tmp_path / "exports")
    s = replace(job_settings, telegram_source=str(exports))
    env = settings_env(s)
    env["TELEGRAM_SOURCE"] = str(exports)
    c = connect(conn_params(s))
    migrate(c)
    with c.cursor() as cur:
        cur.execute("LOCK TABLE raw.loaded_files IN EXCLUSIVE MODE")  # the load stage waits on it
    try:
        for sig, also_the_stage, rc, status, reason in [
                (signal.SIGTERM, False, 143, "cancelled", "stopped by SIGTERM"),
                (signal.SIGTERM, True, 143, "cancelled", "stopped by SIGTERM"),
                (signal.SIGINT, False, 130, "failed", "interrupted")]:
            proc = _start_job(env, "scrape-load")
            _wait_for(conn, LOAD_WAITS_ON_LOCK, lambda n: n > 0, proc)
            (stage_pid,) = map(int, open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split())
            t0 = time.monotonic()
            if also_the_stage:
                os.kill(stage_pid, sig)
            proc.send_signal(sig)
            assert proc.wait(30) == rc
            assert time.monotonic() - t0 < 5  # well within docker's 10 s before it kills
            stderr = proc.stderr.read()
            recs = records(s)
            (job,) = [r for r in recs if r["stage"] is None and r["run_id"] == recs[-1]["run_id"]]
            assert job["status"] == status
            if sig == signal.SIGTERM:
                assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
                assert (job["reason"], job["metrics"]["cancelled_stage"]) == (reason, "load")
            stages = {r["stage"]: r for r in recs if r["stage"] and r["run_id"] == job["run_id"]}
            assert stages["scrape"]["status"] == "success"
            assert (stages["load"]["status"], stages["load"]["reason"]) == (status, reason)
            assert not list((s.logs_path / "running").glob("*.json"))  # the monitor sees no death
            lock = acquire_lock(s.logs_path / "pipeline.lock")
            assert not isinstance(lock, str), lock
            lock.release()
            with pytest.raises(ProcessLookupError):
                os.kill(stage_pid, 0)  # the stage ended with the job
            assert query(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                         (f"medical_etl/load/{job['run_id']}",))[0][0] == 0
    finally:
        c.rollback()
        c.close()
    assert query(conn, "SELECT count(*) FROM raw.telegram_messages")[0][0] == 0  # nothing half loaded


def test_a_lock_held_elsewhere_raises_with_its_holder(tmp_path):
    import subprocess
    import sys

    from medical_etl.filelock import LockHeld

    path = tmp_path / "job.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from medical_etl.filelock import acquire_lock; acquire_lock(Path(sys.argv[1])); "
                               "print('held', flush=True); time.sleep(30)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld) as held:
            acquire_lock(path, wait_s=0.2)
        assert held.value.holder.startswith(f"pid {holder.pid} since ")
    finally:
        holder.kill()
        holder.wait()
    acquire_lock(path).release()  # free again once its holder is gone
