"""The Dagster extra: the definitions, a Dagster run equal to run_job's, the shared lock and run log,
retries of transient failures only, the monitor after a failed run, and `dagster dev` on loopback.

Skipped where the extra is not installed (``pip install '.[dagster]'``; make setup and CI install it)."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("dagster")
pytest.importorskip("dagster_dbt")

import psycopg2  # noqa: E402
from dagster import AssetKey, DagsterEventType, DailyPartitionsDefinition, Definitions  # noqa: E402
from helpers import REPO, query, scratch_database, settings_env  # noqa: E402
from test_jobs import records, warehouse_fingerprint  # noqa: E402
from test_retries import SAMPLE_CHANNELS, _allow_connections, _sample_client, _wait_file  # noqa: E402

from medical_etl.jobs import run_job  # noqa: E402
from medical_etl.orchestration.dagster import DAGSTER_JOBS, build_definitions  # noqa: E402
from medical_etl.orchestration.dagster.dbt_assets import WAREHOUSE_OP  # noqa: E402
from medical_etl.orchestration.dagster.job_run import lock_wait_s  # noqa: E402
from medical_etl.orchestration.dagster.partitions import PARTITIONED_JOB  # noqa: E402
from medical_etl.scrape.standin import StandInClient, read_message_list  # noqa: E402

FCT_MESSAGES = AssetKey(["marts", "fct_messages"])
STG_MESSAGES = AssetKey(["staging", "stg_telegram_messages"])
ORIGINAL_JOBS = {"ethiopian_medical_pipeline", "scrape_and_load_pipeline", "transformation_pipeline",
                 "enrichment_pipeline"}


def _job_records(s, run_id):
    return [r for r in records(s) if r["run_id"] == run_id]


def _steps_retried(result) -> list[str]:
    return [e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]


def test_definitions_load_with_the_jobs_schedules_dbt_assets_and_checks(settings):
    defs = build_definitions(settings, monitor=False)
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    jobs = {j.name: j for j in repo.get_all_jobs() if not j.name.startswith("__")}
    assert ORIGINAL_JOBS <= set(jobs) and set(jobs) == set(DAGSTER_JOBS.values()) | {PARTITIONED_JOB}
    assert jobs["scrape_and_load_pipeline"].tags["medical_etl/job"] == "scrape-load"
    # one partitioned job, the enrich job by UTC day; the others (the daily pipeline too) are not partitioned
    assert [name for name, j in jobs.items() if j.partitions_def is not None] == [PARTITIONED_JOB]
    days = jobs[PARTITIONED_JOB].partitions_def
    assert isinstance(days, DailyPartitionsDefinition) and days.timezone == "UTC" and days.fmt == "%Y-%m-%d"
    assert days.get_first_partition_key() == "2020-01-01" and jobs[PARTITIONED_JOB].tags["medical_etl/job"] == "enrich"
    assert {(s.cron_schedule, s.job_name, s.execution_timezone) for s in repo.schedule_defs} == {
        ("0 2 * * *", "ethiopian_medical_pipeline", "UTC"), ("0 3 * * 0", "weekly_pipeline", "UTC")}
    graph = repo.asset_graph
    keys = {k.to_user_string() for k in graph.materializable_asset_keys}
    # the dbt models under their target schemas, the seed, and the three stage assets around them
    assert {"telegram_data", "raw_database", "staging/stg_telegram_messages", "marts/fct_messages",
            "marts/dim_channels", "marts/fct_image_detections", "marts/product_like_classes",
            "image_enrichment"} <= keys
    assert graph.get(STG_MESSAGES).parent_keys == {AssetKey("raw_database")}  # every dbt source is a raw table
    assert graph.get(AssetKey("raw_database")).parent_keys == {AssetKey("telegram_data")}
    assert FCT_MESSAGES in graph.get(AssetKey("image_enrichment")).parent_keys
    warehouse = next(a for a in repo.assets_defs_by_key.values() if a.op.name == WAREHOUSE_OP)
    checks = {c.to_user_string() for c in warehouse.check_keys}
    assert len(checks) > 50
    assert {"marts/fct_messages:assert_no_future_posts", "marts/dim_channels:unique_dim_channels_channel_key"} <= checks
    # the weekly job waits for the lock as `make weekly` does (its --lock-wait, LOCK_WAIT instead); the others skip
    assert lock_wait_s("weekly", settings) == 10800 and lock_wait_s("pipeline", settings) == 0
    assert lock_wait_s("weekly", replace(settings, lock_wait_s=60)) == 60
    assert lock_wait_s("pipeline", replace(settings, lock_wait_s=60)) == 0


def test_pipeline_in_dagster_builds_what_run_job_builds(settings, conn, pg_admin, shared_sample, tmp_path):
    s = replace(settings, stage_timeout_s=900)
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    defs = build_definitions(s, client=StandInClient(posts), monitor=False)
    t0 = time.time()
    result = defs.resolve_job_def("ethiopian_medical_pipeline").execute_in_process(raise_on_error=False)
    dagster_s = time.time() - t0
    assert result.success
    mats = {e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
            for e in result.get_asset_materialization_events()}
    assert mats["telegram_data"]["new_messages"].value == 276
    assert mats["raw_database"]["rows_inserted"].value == 276
    assert mats["image_enrichment"]["photos_analysed"].value == 197
    assert mats["marts/fct_messages"]["dbt_status"].value == "success"
    assert mats["marts/fct_messages"]["tests_failed"].value == 0
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) > 50 and all(e.passed for e in evaluations)
    assert not _steps_retried(result)

    (job,) = [r for r in records(s) if r["stage"] is None]
    ours = _job_records(s, job["run_id"])
    assert job["job"] == "pipeline" and job["status"] == "success"
    assert job["metrics"]["stages"] == ["scrape", "load", "transform", "enrich"]
    assert job["metrics"]["orchestrator"] == "dagster" and job["metrics"]["dagster_run_id"] == result.run_id
    dagster_warehouse = warehouse_fingerprint(conn)

    with scratch_database(pg_admin) as db:
        clean = replace(s, db_name=db.dbname, raw_data_path=tmp_path / "clean_raw", logs_path=tmp_path / "clean_logs")
        t0 = time.time()
        summary = run_job("pipeline", clean, client=StandInClient(posts))
        run_job_s = time.time() - t0
        c = psycopg2.connect(**db.kwargs())
        try:
            assert warehouse_fingerprint(c) == dagster_warehouse
        finally:
            c.close()
    theirs = _job_records(clean, summary["run_id"])
    counts = ("new_messages", "rows_inserted", "rows_updated", "models_built", "tests_passed", "tests_failed",
              "photos_analysed", "objects_found")

    def shape(recs):
        return [(r["job"], r["stage"], r["status"], r.get("attempt"), {k: r["metrics"].get(k) for k in counts})
                for r in recs]

    assert shape(ours) == shape(theirs)
    assert dagster_warehouse["marts.fct_messages"][0] == 276
    print(f"pipeline: dagster {dagster_s:.1f} s, run_job {run_job_s:.1f} s")


def test_a_day_partition_enriches_that_day_only_and_again_nothing(settings, conn, shared_sample):
    s = replace(settings, stage_timeout_s=900)
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    run_job("scrape-load", s, client=StandInClient(posts))
    run_job("transform", s)  # the warehouse the detection models read, as the daily pipeline leaves it
    photos_of = dict(query(conn, "SELECT (message_date AT TIME ZONE 'UTC')::date::text, count(*) "
                                 "FROM raw.telegram_messages WHERE image_path IS NOT NULL GROUP BY 1"))
    day = max((d for d, n in photos_of.items() if n <= 5), key=lambda d: (photos_of[d], d))  # a small day
    assert photos_of[day] >= 2 and sum(photos_of.values()) == 197
    by_day = build_definitions(s, monitor=False).resolve_job_def(PARTITIONED_JOB)

    def enriched_days():
        return dict(query(conn, "SELECT (m.message_date AT TIME ZONE 'UTC')::date::text, count(*) "
                                "FROM raw.image_analyses a JOIN raw.telegram_messages m USING (channel, message_id) "
                                "GROUP BY 1"))

    t0 = time.time()
    first = by_day.execute_in_process(partition_key=day, raise_on_error=False)
    first_s = time.time() - t0
    assert first.success, [e.event_specific_data.error.to_string() for e in first.all_events
                           if e.event_type == DagsterEventType.STEP_FAILURE]
    (mat,) = [e.step_materialization_data.materialization for e in first.get_asset_materialization_events()]
    assert mat.asset_key == AssetKey("image_enrichment") and mat.metadata["day"].value == day
    assert mat.metadata["photos_to_analyse"].value == photos_of[day]
    assert enriched_days() == {day: photos_of[day]}  # that day's photos, no other's
    t0 = time.time()
    again = by_day.execute_in_process(partition_key=day, raise_on_error=False)
    again_s = time.time() - t0
    assert again.success and enriched_days() == {day: photos_of[day]}
    (mat,) = [e.step_materialization_data.materialization for e in again.get_asset_materialization_events()]
    assert mat.metadata["photos_to_analyse"].value == 0 and mat.metadata["photos_analysed"].value == 0

    runs = [(r["job"], r["stage"], r["status"], r["metrics"].get("day"), r["metrics"].get("photos_analysed"))
            for r in records(s) if r["job"] == "enrich"]
    assert runs[0][:4] == ("enrich", "enrich", "success", day) and runs[0][4] > 0
    assert runs[1:] == [("enrich", None, "success", None, None), ("enrich", "enrich", "success", day, 0),
                        ("enrich", None, "success", None, None)]
    stage_rec = [r for r in records(s) if r["stage"] == "enrich"][0]
    assert stage_rec["metrics"]["dbt"]["status"] == "success"  # then the detection models, as the enrich job
    jobs = [r for r in records(s) if r["job"] == "enrich" and r["stage"] is None]
    assert [(r["metrics"]["partition"], r["metrics"]["dagster_run_id"]) for r in jobs] == [
        (day, first.run_id), (day, again.run_id)]

    # a day whose run finds the job lock taken fails (recorded skipped): it stays to be done
    from medical_etl.filelock import acquire_lock

    other = next(d for d in sorted(photos_of) if d != day)
    lock = acquire_lock(s.logs_path / "pipeline.lock")
    try:
        locked = by_day.execute_in_process(partition_key=other, raise_on_error=False)
    finally:
        lock.release()
    assert not locked.success and not locked.get_asset_materialization_events()
    assert records(s)[-1]["status"] == "skipped" and records(s)[-1]["metrics"]["partition"] == other
    assert other not in enriched_days()
    print(f"partition {day} ({photos_of[day]} photos): {first_s:.1f} s, again {again_s:.1f} s "
          f"(detection models build: {stage_rec['metrics']['dbt']['duration_s']:.1f} s)")


def _in_background(fn):
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, outcome


def test_one_lock_for_both_front_doors(settings, tmp_path):
    s = replace(settings, telegram_source="sample", telegram_channels=SAMPLE_CHANNELS)
    env = settings_env(s)
    env["TELEGRAM_SOURCE"] = "sample"
    gate = tmp_path / "gate"
    gate.mkdir()
    defs = build_definitions(s, client=_sample_client(gate), monitor=False)

    def cron_job_meanwhile():
        _wait_file(gate / "entered", threading.main_thread())  # the Dagster run is inside its scrape
        try:
            return subprocess.run([sys.executable, "-m", "medical_etl", "job", "scrape-load"], env=env, cwd=REPO,
                                  capture_output=True, text=True, timeout=120)
        finally:
            (gate / "go").touch()

    cron, outcome = _in_background(cron_job_meanwhile)
    try:
        result = defs.resolve_job_def("scrape_and_load_pipeline").execute_in_process(raise_on_error=False)
    finally:
        (gate / "go").touch()
    cron.join(120)
    assert result.success and outcome["value"].returncode == 0, outcome
    jobs = [r for r in records(s) if r["stage"] is None]
    assert sorted((r["job"], r["status"]) for r in jobs) == [("scrape-load", "skipped"), ("scrape-load", "success")]
    skipped = next(r for r in jobs if r["status"] == "skipped")
    assert f"pid {os.getpid()}" in skipped["reason"]  # this process: the Dagster run's

    # the other way round: a job holds the lock, the Dagster run records skipped and materialises nothing
    from medical_etl.filelock import acquire_lock

    lock = acquire_lock(s.logs_path / "pipeline.lock")
    try:
        again = defs.resolve_job_def("scrape_and_load_pipeline").execute_in_process(raise_on_error=False)
    finally:
        lock.release()
    assert again.success and not again.get_asset_materialization_events()
    last = records(s)[-1]
    assert last["stage"] is None and last["status"] == "skipped" and last["metrics"]["dagster_run_id"] == again.run_id


def test_a_transient_failure_is_retried(settings, pg_admin, tmp_path):
    s = replace(settings, telegram_channels=SAMPLE_CHANNELS, stage_retries=2, stage_retry_backoff_s=5.0,
                stage_retry_backoff_max_s=5.0)
    gate = tmp_path / "gate"
    gate.mkdir()
    defs = build_definitions(s, client=_sample_client(gate), monitor=False)

    def database_away_during_the_load():
        _wait_file(gate / "entered", threading.main_thread())  # inside the scrape stage
        _allow_connections(pg_admin, s.db_name, False)
        try:
            (gate / "go").touch()
            t0 = time.time()
            while not [r for r in records(s) if r["stage"] == "load"]:
                assert time.time() - t0 < 300, "the load never failed"
                time.sleep(0.05)
        finally:
            _allow_connections(pg_admin, s.db_name, True)  # back before Dagster's retry

    helper, outcome = _in_background(database_away_during_the_load)
    try:
        result = defs.resolve_job_def("scrape_and_load_pipeline").execute_in_process(raise_on_error=False)
    finally:
        (gate / "go").touch()
        helper.join(60)
        _allow_connections(pg_admin, s.db_name, True)
    assert "error" not in outcome, outcome
    assert result.success and _steps_retried(result) == ["raw_database"]
    loads = [r for r in records(s) if r["stage"] == "load"]
    assert [(r["attempt"], r["status"]) for r in loads] == [(1, "failed"), (2, "success")]
    assert loads[0]["reason"] == "transient: database unreachable"
    (job,) = [r for r in records(s) if r["stage"] is None]
    assert job["status"] == "success" and job["metrics"]["retries"] == {"load": 1}
    assert job["metrics"]["retry_reasons"] == {"load": "database unreachable"}


class _Hook(BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        _Hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_failed_dbt_test_is_not_retried_and_reaches_the_monitor(settings, conn, monkeypatch):
    s = replace(settings, telegram_source="sample", stage_retries=2, stage_retry_backoff_s=600.0)
    run_job("scrape-load", s)
    with conn.cursor() as cur:
        cur.execute("UPDATE raw.telegram_messages SET message_date = now() + interval '30 days', "
                    "updated_at = now() WHERE message_id = (SELECT min(message_id) FROM raw.telegram_messages)")
    conn.commit()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MONITOR_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
    _Hook.bodies = []
    try:
        t0 = time.time()
        result = build_definitions(s).resolve_job_def("transformation_pipeline").execute_in_process(raise_on_error=False)
        assert time.time() - t0 < 300  # no 600 s backoff
    finally:
        server.shutdown()
    assert not result.success and not _steps_retried(result)
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert "assert_no_future_posts" in failure.event_specific_data.error.to_string()
    failed = [(e.asset_key, e.check_name) for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed == [(FCT_MESSAGES, "assert_no_future_posts")]  # the failed dbt test is a failed check
    (rec,) = [r for r in records(s) if r["stage"] == "transform"]
    assert rec["attempt"] == 1 and rec["status"] == "failed" and rec["reason"] is None
    job = records(s)[-1]
    assert job["job"] == "transform" and job["status"] == "failed" and "retries" not in job["metrics"]
    assert job["metrics"]["failed_stage"] == "transform"
    # the monitor ran after the run and delivered the failure
    alerts = [a for body in _Hook.bodies for a in body["alerts"]]
    assert any(a["alert_type"] == "pipeline_failure" and a["state"] == "firing" and "transform" in a["message"]
               for a in alerts), _Hook.bodies


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    out = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/net/{name}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                raw = bytes.fromhex(addr)
                if name == "tcp":
                    out.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    out.add(socket.inet_ntop(socket.AF_INET6, words))
    return out


def _group_rss_mb(pgid: int) -> float:
    """Resident memory of the processes of process group ``pgid``."""
    total = 0
    for stat in os.listdir("/proc"):
        try:
            if stat.isdigit() and os.getpgid(int(stat)) == pgid:
                status = open(f"/proc/{stat}/status").read()
                total += int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))
        except (OSError, StopIteration):
            continue
    return total / 1024


def test_dagster_dev_serves_the_asset_graph_on_loopback_only(settings, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = settings_env(settings)
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    log = open(tmp_path / "dagster-dev.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "medical_etl.orchestration.dagster", "--port", str(port)],
                            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, process_group=0)
    query_ = json.dumps({"query": "{ assetNodes { assetKey { path } dependencyKeys { path } } }"}).encode()
    nodes = None
    try:
        deadline = time.time() + 300
        while nodes is None:
            assert proc.poll() is None, open(tmp_path / "dagster-dev.log").read()[-3000:]
            assert time.time() < deadline, "dagster dev did not answer in 300 s"
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query_,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as r:
                    nodes = json.load(r)["data"]["assetNodes"] or None
            except (OSError, KeyError, TypeError, ValueError):
                time.sleep(1)
        assert _listening_addresses(port) == {"127.0.0.1"}
        print(f"dagster dev: ready in {time.time() - deadline + 300:.0f} s, {_group_rss_mb(proc.pid):.0f} MB resident")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group left behind
        except ProcessLookupError:
            pass
    graph = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
    assert graph["raw_database"] == {"telegram_data"} and "marts/fct_messages" in graph["image_enrichment"]
    assert (tmp_path / "dagster_home" / "dagster.yaml").read_text().count("enabled: false") == 1
