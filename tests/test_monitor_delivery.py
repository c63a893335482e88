"""Alerts that reach a person: deliveries, rules refused when read, problems reported on top of the verdict."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from helpers import REPO, query, settings_env

from medical_etl.db import conn_params
from medical_etl.jobs import run_job
from medical_etl.jobs.process import stage_environment
from medical_etl.monitor.evaluate import metric_fields, run_monitor
from medical_etl.monitor.rules import RulesError, load_rules
from medical_etl.runlog import RunLog

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
    from medical_etl.live_runs import mark_running

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
