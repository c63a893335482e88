import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import REPO

from medical_etl.db import conn_params
from medical_etl.monitor.evaluate import DEFAULT_RULES, format_text, run_monitor
from medical_etl.monitor.rules import RulesError, load_rules

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def rec(job="pipeline", stage=None, status="success", at=NOW, duration=60.0, metrics=None, run_id=None, **kw):
    return {"run_id": run_id or f"r-{at.isoformat()}-{job}-{stage}", "job": job, "stage": stage, "status": status,
            "started_at": (at - timedelta(seconds=duration)).isoformat(), "finished_at": at.isoformat(),
            "duration_s": duration, "metrics": metrics or {}, "error": {"type": "X", "message": "boom"}
            if status == "failed" else None, "peak_rss_mb": 100.0, "cpu_s": 5.0, **kw}


def write_log(path: Path, records, extra_lines=()):
    with open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
        for line in extra_lines:
            fh.write(line)
    return path


def rules_file(tmp_path, *rules, delivery=None):
    p = tmp_path / "rules.json"
    p.write_text(json.dumps({"rules": list(rules), "delivery": delivery or {}}))
    return p


def rule(**kw):
    base = {"alert_type": "t", "metric": "job_failed", "threshold": 1, "comparison": "ge", "window": 1,
            "severity": "critical", "message_template": "{job} failed: {error}"}
    base.update(kw)
    return base


def run(tmp_path, records, rules, now=NOW, **kw):
    log = write_log(tmp_path / "runs.jsonl", records)
    return run_monitor(log, rules_path=rules, state_path=tmp_path / "state.json", now=now, **kw)


def runs_every_hour(statuses, job="pipeline"):
    return [rec(job=job, status=s, at=NOW - timedelta(hours=len(statuses) - i), run_id=f"run{i}")
            for i, s in enumerate(statuses)]


# --- one case per shipped rule: triggers, and does not ---------------------------

def test_pipeline_failure(tmp_path):
    rules = rules_file(tmp_path, rule())
    res, rc = run(tmp_path, runs_every_hour(["success", "failed"]), rules)
    assert rc == 3 and res["active_alerts"][0]["message"] == "pipeline failed: boom"
    res, rc = run(tmp_path / "..", runs_every_hour(["failed", "success"]), rules_file(tmp_path, rule()))
    assert rc == 0 and res["active_alerts"] == []


@pytest.mark.parametrize("statuses,fires", [
    (["failed"] + ["success"] * 9, False),              # exactly 10%: not "above 10%"
    (["failed", "failed"] + ["success"] * 8, True),     # 20%
    (["skipped"] * 5 + ["failed"] + ["success"] * 9, False),  # skipped runs do not count
    (["failed"] * 5 + ["success"] * 10, False),         # failures outside the 10-run window
])
def test_failure_rate_boundaries(tmp_path, statuses, fires):
    r = rule(alert_type="failure_rate", metric="failure_rate", threshold=0.10, comparison="gt", window=10,
             severity="error", message_template="{rate_pct}% of {total}")
    res, rc = run(tmp_path, runs_every_hour(statuses), rules_file(tmp_path, r))
    assert (rc == 2) is fires
    if fires:
        assert res["active_alerts"][0]["message"] == "20.0% of 10"


def test_failure_rate_duration_window(tmp_path):
    r = rule(alert_type="failure_rate", metric="failure_rate", threshold=0.10, comparison="gt", window="3h",
             severity="error", message_template="{rate_pct}")
    records = runs_every_hour(["failed"] * 5 + ["success"] * 3)  # the failures are older than 3 h
    assert run(tmp_path, records, rules_file(tmp_path, r))[1] == 0


def test_long_execution_threshold_and_trailing_median(tmp_path):
    r1 = rule(alert_type="long_execution", metric="duration_s", job="pipeline", threshold=7200, comparison="gt",
              severity="warning", message_template="{duration_s}")
    assert run(tmp_path, [rec(duration=7300)], rules_file(tmp_path, r1))[1] == 1
    assert run(tmp_path, [rec(duration=7200)], rules_file(tmp_path, r1))[1] == 0
    r2 = rule(alert_type="long_execution", metric="duration_vs_trailing_median", stage="load", threshold=3,
              comparison="gt", window=10, severity="warning", message_template="{factor}x {median_s}")
    loads = [rec(stage="load", duration=d, at=NOW - timedelta(hours=6 - i), run_id=f"l{i}")
             for i, d in enumerate([10, 11, 9, 10, 12])]
    res, rc = run(tmp_path, loads + [rec(stage="load", duration=45, run_id="slow")], rules_file(tmp_path, r2))
    assert rc == 1 and res["active_alerts"][0]["message"] == "4.5x 10.0"
    assert run(tmp_path, loads + [rec(stage="load", duration=25, run_id="ok")], rules_file(tmp_path, r2))[1] == 0


def test_low_data_volume(tmp_path):
    r = rule(alert_type="low_data_volume", metric="new_messages_vs_trailing_avg", threshold=0.2, comparison="lt",
             window=7, severity="warning", message_template="{new_messages} vs {trailing_avg}")
    scrapes = [rec(stage="scrape", metrics={"new_messages": 100}, at=NOW - timedelta(days=7 - i), run_id=f"s{i}")
               for i in range(7)]
    res, rc = run(tmp_path, scrapes + [rec(stage="scrape", metrics={"new_messages": 10})], rules_file(tmp_path, r))
    assert rc == 1 and res["active_alerts"][0]["message"] == "10 vs 100"
    assert run(tmp_path, scrapes + [rec(stage="scrape", metrics={"new_messages": 20})], rules_file(tmp_path, r))[1] == 0


def test_stale_data_and_missing_log(tmp_path):
    r = rule(alert_type="stale_data", metric="hours_since_success", threshold=30, comparison="gt",
             severity="warning", message_template="{hours} h since {last_success}")
    rules = rules_file(tmp_path, r)
    assert run(tmp_path, [rec(at=NOW - timedelta(hours=31))], rules)[1] == 1
    assert run(tmp_path, [rec(at=NOW - timedelta(hours=29))], rules)[1] == 0
    # no log at all: "no runs yet", not a crash; fires once the threshold has passed since first seen
    state = tmp_path / "fresh_state.json"
    res, rc = run_monitor(tmp_path / "missing.jsonl", rules_path=rules, state_path=state, now=NOW)
    assert rc == 0 and res["metrics"]["log"]["exists"] is False
    res, rc = run_monitor(tmp_path / "missing.jsonl", rules_path=rules, state_path=state,
                          now=NOW + timedelta(hours=31))
    assert rc == 1 and "since never" in res["active_alerts"][0]["message"]


def test_stale_channel_from_warehouse(settings, conn, tmp_path):
    from medical_etl.load import load_raw_to_postgres

    d = settings.raw_data_path / "telegram_messages" / "2026-11-20"
    d.mkdir(parents=True)
    (d / "CheMed123.json").write_text(json.dumps([{"channel_username": "CheMed123", "message_id": 1,
                                                   "date": "2026-11-20T12:00:00+00:00", "text": "x"}]))
    load_raw_to_postgres(conn_params(settings), settings.raw_data_path)
    r = rule(alert_type="stale_data", metric="channel_hours_since_last_post", threshold=72, comparison="gt",
             severity="warning", message_template="{channel} quiet for {hours} h")
    res, rc = run(tmp_path, [rec()], rules_file(tmp_path, r), db=conn_params(settings))
    assert rc == 1 and res["active_alerts"][0]["message"] == "CheMed123 quiet for 144.0 h"
    assert res["metrics"]["data_quality"]["freshness_hours_by_channel"] == {"CheMed123": 144.0}


def test_pipeline_success_is_info_exit_0(tmp_path):
    r = rule(alert_type="pipeline_success", metric="job_succeeded", job="pipeline", severity="info",
             message_template="ok {run_id}")
    res, rc = run(tmp_path, runs_every_hour(["success"]), rules_file(tmp_path, r))
    assert rc == 0 and res["active_alerts"][0]["message"] == "ok run0" and res["sent"]


# --- dedup, resolution, robustness -----------------------------------------------

def test_raised_once_per_triggering_run_and_resolved_once(tmp_path):
    rules = rules_file(tmp_path, rule())
    log = tmp_path / "runs.jsonl"
    state = tmp_path / "state.json"
    write_log(log, runs_every_hour(["failed"]))
    first, rc1 = run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    second, rc2 = run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    assert rc1 == rc2 == 3
    assert len(first["sent"]) == 1 and second["sent"] == []          # not sent twice
    write_log(log, runs_every_hour(["failed", "failed"]))            # a new failing run: a new alert
    third, _ = run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    assert len(third["sent"]) == 1 and third["sent"][0]["trigger"].endswith("@run1")
    write_log(log, runs_every_hour(["failed", "failed", "success"]))
    fourth, rc4 = run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    assert rc4 == 0 and [a["state"] for a in fourth["sent"]] == ["resolved"]
    fifth, _ = run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    assert fifth["sent"] == []                                       # resolved is reported once


def test_malformed_lines_are_counted_and_skipped(tmp_path):
    log = write_log(tmp_path / "runs.jsonl", runs_every_hour(["failed"]),
                    extra_lines=['{"job": "pipeline", "sta\n', "\n", "not json\n", "[1, 2]\n"])
    res, rc = run_monitor(log, rules_path=rules_file(tmp_path, rule()), state_path=tmp_path / "s.json", now=NOW)
    assert rc == 3 and res["metrics"]["log"]["malformed_lines"] == 3 and res["metrics"]["log"]["records"] == 1


@pytest.mark.parametrize("bad,message", [
    (rule(colour="red"), "rule #1 (t): unknown keys ['colour']"),
    (rule(comparison="above"), "rule #1 (t): comparison must be one of"),
    (rule(severity="loud"), "rule #1 (t): severity must be one of"),
    (rule(metric="nope"), "rule #1 (t): unknown metric 'nope'"),
    (rule(window="soon"), "rule #1 (t): window must be"),
])
def test_bad_rules_file_is_refused_naming_the_rule(tmp_path, bad, message):
    with pytest.raises(RulesError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_rules(rules_file(tmp_path, bad), {"job_failed"})


def test_cli_exit_codes_and_refusal(settings, tmp_path):
    from helpers import settings_env

    env = settings_env(settings)
    settings.logs_path.mkdir(parents=True, exist_ok=True)
    write_log(settings.logs_path / "runs.jsonl", runs_every_hour(["failed"]))
    r = subprocess.run([sys.executable, str(REPO / "monitor/monitor_pipeline.py"), "--json", "--no-deliver"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert json.loads(r.stdout)["worst_severity"] == "critical"
    bad = rules_file(tmp_path, rule(comparison="above"))
    r = subprocess.run([sys.executable, "-m", "medical_etl", "monitor", "--rules", str(bad)], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 4 and "rule #1 (t): comparison" in r.stderr


def test_shipped_rules_load():
    from medical_etl.monitor.alerts import METRICS

    rules, delivery = load_rules(DEFAULT_RULES, set(METRICS))
    types = {r.alert_type: r.severity for r in rules}
    assert types == {"pipeline_failure": "critical", "pipeline_died": "critical", "pipeline_cancelled": "warning",
                     "failure_rate": "error",
                     "long_execution": "warning",
                     "low_data_volume": "warning", "stale_data": "warning", "pipeline_success": "info",
                     "succeeded_on_retry": "warning", "backup_failure": "error", "database_growth": "warning",
                     "database_connections": "warning", "table_bloat": "warning"}
    assert set(delivery) == {"webhook", "telegram_bot", "deadman"}


# --- delivery to local servers ----------------------------------------------------

class Recorder(BaseHTTPRequestHandler):
    calls: list = []
    delay = 0.0  # seconds before answering

    def _record(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        type(self).calls.append((self.command, self.path, body))
        time.sleep(self.delay)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    do_POST = do_GET = _record

    def log_message(self, *a):
        pass


@pytest.fixture
def http_server():
    Recorder.calls, Recorder.delay = [], 0.0
    srv = HTTPServer(("127.0.0.1", 0), Recorder)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}", Recorder.calls
    srv.shutdown()


def test_delivery_to_webhook_bot_and_deadman(tmp_path, http_server):
    base, calls = http_server
    token = "123456:SECRET-bot-token"
    delivery = {"webhook": {"url": "${HOOK}/hook", "timeout_s": 2, "retries": 2},
                "telegram_bot": {"token": "${BOT_TOKEN}", "chat_id": "42", "api_base": base},
                "deadman": {"url": f"{base}/ping/abc"}}
    rules = rules_file(tmp_path, rule(), delivery=delivery)
    log = write_log(tmp_path / "runs.jsonl", runs_every_hour(["failed"]))
    env = {"HOOK": base, "BOT_TOKEN": token}
    res, rc = run_monitor(log, rules_path=rules, state_path=tmp_path / "s.json", env=env, now=NOW)
    assert all(d["ok"] for d in res["deliveries"]), res["deliveries"]
    paths = [(m, p) for m, p, _ in calls]
    assert ("POST", "/hook") in paths and ("POST", f"/bot{token}/sendMessage") in paths
    assert ("GET", "/ping/abc/fail") in paths  # a critical alert: the failure ping
    hook = next(b for m, p, b in calls if p == "/hook")
    assert hook["alerts"][0]["severity"] == "critical" and hook["worst_severity"] == "critical"
    bot = next(b for m, p, b in calls if p.endswith("sendMessage"))
    assert bot["chat_id"] == "42" and "[CRITICAL] pipeline failed: boom" in bot["text"]
    assert token not in json.dumps(res)
    calls.clear()
    write_log(log, runs_every_hour(["failed", "success"]))
    run_monitor(log, rules_path=rules, state_path=tmp_path / "s.json", env=env, now=NOW)
    assert ("GET", "/ping/abc") in [(m, p) for m, p, _ in calls]  # healthy again: the success ping


def test_failed_delivery_is_reported_not_fatal(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rules = rules_file(tmp_path, rule(), delivery={"webhook": {"url": f"http://127.0.0.1:{port}/x", "retries": 2,
                                                               "timeout_s": 1}})
    res, rc = run(tmp_path, runs_every_hour(["failed"]), rules)
    assert rc == 3
    (d,) = res["deliveries"]
    assert d["ok"] is False and "Connection refused" in d["error"]


# The HTML report (ECharts) is rendered in headless Chromium in tests/test_dashboard.py.


def test_monitor_judges_the_log_alone_when_the_embedded_server_cannot_start(tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    write_log(log_dir / "runs.jsonl", [rec()])
    (tmp_path / "not-a-folder").write_text("the embedded server's folder is a file")
    env = {**os.environ, "DB_HOST": "", "EMBEDDED_PG_PATH": str(tmp_path / "not-a-folder"),
           "LOGS_PATH": str(log_dir), "RAW_DATA_PATH": str(tmp_path / "raw")}
    r = subprocess.run([sys.executable, "-m", "medical_etl", "monitor", "--json", "--no-deliver"], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["metrics"]["data_quality"]["warehouse_reachable"] is False
    assert "warehouse not checked" in r.stderr


# --- operations that must never make things worse ------------------------------------

def webhook_rules(tmp_path, url, **more):
    return rules_file(tmp_path, rule(), delivery={"webhook": {"url": url, "timeout_s": 2, "retries": 1}, **more})


def hook_alerts(calls) -> list[str]:
    return [a["trigger"] for m, p, b in calls if p == "/hook" for a in b["alerts"] if a["state"] == "firing"]


@pytest.mark.parametrize("garbage", ['{"sent": ["pipeline_failure:job', '{"sent": 5}', "\x00" * 64],
                         ids=["torn", "wrong-shape", "zeros"])
def test_garbage_state_is_kept_aside_and_its_copy_keeps_sent_alerts_sent(tmp_path, http_server, garbage):
    base, calls = http_server
    rules = webhook_rules(tmp_path, f"{base}/hook")
    log, state = write_log(tmp_path / "runs.jsonl", runs_every_hour(["failed"])), tmp_path / "state.json"
    run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    assert len(hook_alerts(calls)) == 1 and json.loads((tmp_path / "state.json.bak").read_text())["sent"]

    state.write_text(garbage)
    res, rc = run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    assert rc == 3 and len(hook_alerts(calls)) == 1  # not sent again
    (problem,) = res["problems"]
    (aside,) = tmp_path.glob("state.json.bad-*")
    assert aside.read_text() == garbage and f"kept as {aside.name}" in problem and "using its copy" in problem
    assert f"PROBLEM: {problem}" in format_text(res) and "PROBLEM" in res["verdict"]
    assert json.loads(state.read_text()) == json.loads((tmp_path / "state.json.bak").read_text())  # restored

    state.write_text(garbage)
    (tmp_path / "state.json.bak").write_text(garbage)
    res, _ = run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    assert "no usable copy" in res["problems"][0] and "may be sent again" in res["problems"][0]
    assert len(hook_alerts(calls)) == 2  # with no readable copy, it must be sent again, and says so


class Trickler(BaseHTTPRequestHandler):
    """Answers with one header line a second: each read is quick, the answer never ends."""
    stop = threading.Event()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(120):
            if self.stop.wait(1 if i else 0):
                return
            self.wfile.write(f"X-Wait-{i}: still thinking\r\n".encode())
            self.wfile.flush()

    def log_message(self, *a):
        pass


@pytest.fixture
def trickler():
    Trickler.stop.clear()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Trickler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/hook"
    Trickler.stop.set()
    srv.shutdown()


def test_a_slow_webhook_holds_neither_the_monitor_nor_the_other_channels(tmp_path, http_server, trickler):
    base, calls = http_server
    bot = {"token": "1:T", "chat_id": "42", "api_base": base}
    rules = webhook_rules(tmp_path, trickler, telegram_bot=bot, deadman={"url": f"{base}/ping"})
    log, state = write_log(tmp_path / "runs.jsonl", runs_every_hour(["failed"])), tmp_path / "s.json"
    t0 = time.monotonic()
    res, rc = run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    elapsed = time.monotonic() - t0
    assert elapsed < 2 + 1.5, elapsed  # the webhook's 2 s (timeout_s 2 x 1 attempt), not its 120 s
    by = {d["channel"]: d for d in res["deliveries"]}
    assert by["webhook"]["ok"] is False and "no answer within 2 s" in by["webhook"]["error"]
    assert by["telegram_bot"]["ok"] and by["deadman"]["ok"] and rc == 3
    assert {p for _, p, _ in calls} == {"/bot1:T/sendMessage", "/ping/fail"}

    # the webhook is the only channel carrying the alert: it stays unsent (the ping carries none) ...
    rules = webhook_rules(tmp_path, trickler, deadman={"url": f"{base}/ping"})
    write_log(log, runs_every_hour(["failed", "failed"]))
    res, _ = run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    assert res["sent"] == [] and [d["ok"] for d in res["deliveries"]] == [False, True]
    # ... and the next run delivers it
    res, _ = run_monitor(log, rules_path=webhook_rules(tmp_path, f"{base}/hook"), state_path=state, now=NOW)
    assert hook_alerts(calls) == ["t:job_failed:all@run1"]


def test_two_monitors_at_once_send_each_alert_once(tmp_path, http_server):
    from medical_etl.filelock import acquire_lock

    base, calls = http_server
    Recorder.delay = 0.5  # a delivery takes a while: without the lock both would send
    rules = webhook_rules(tmp_path, f"{base}/hook")
    log, state = write_log(tmp_path / "runs.jsonl", runs_every_hour(["failed"])), tmp_path / "state.json"
    start, results = threading.Barrier(2), []

    def monitor():
        start.wait()
        results.append(run_monitor(log, rules_path=rules, state_path=state, now=NOW)[0])

    threads = [threading.Thread(target=monitor) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert hook_alerts(calls) == ["t:job_failed:all@run0"]
    assert sorted(len(r["sent"]) for r in results) == [0, 1] and all(not r["problems"] for r in results)

    # a monitor that holds the lock too long: this one sends and records nothing, and says why
    write_log(log, runs_every_hour(["failed", "failed"]))
    held = acquire_lock(tmp_path / "state.json.lock")
    try:
        res, rc = run_monitor(log, rules_path=rules, state_path=state, now=NOW, lock_wait_s=0.3)
    finally:
        held.release()
    assert rc == 3 and res["sent"] == [] and len(hook_alerts(calls)) == 1
    assert "another monitor has held" in res["problems"][0]
    run_monitor(log, rules_path=rules, state_path=state, now=NOW)
    assert hook_alerts(calls) == ["t:job_failed:all@run0", "t:job_failed:all@run1"]


def test_a_cancelled_run_is_a_clean_stop_never_a_death(tmp_path):
    stopped = "r-stopped"
    records = [rec(at=NOW - timedelta(hours=2), run_id="r-ok"),
               rec(stage="scrape", at=NOW - timedelta(minutes=2), run_id=stopped),
               rec(stage="load", status="cancelled", run_id=stopped, reason="stopped by SIGTERM"),
               rec(status="cancelled", run_id=stopped, reason="stopped by SIGTERM")]
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "running").mkdir()  # even a start marker left behind (its process is gone) is no death
    (tmp_path / "running" / f"{stopped}.json").write_text(json.dumps(
        {"run_id": stopped, "job": "pipeline", "pid": gone.pid, "host": os.uname().nodename, "start_ticks": 1,
         "started_at": (NOW - timedelta(minutes=3)).isoformat(), "deadline_at": NOW.isoformat()}))
    res, rc = run(tmp_path, records, DEFAULT_RULES, send=False)
    firing = {a["alert_type"]: a for a in res["active_alerts"]}
    assert rc == 1 and res["worst_severity"] == "warning"
    assert "pipeline_died" not in firing and "pipeline_failure" not in firing
    assert firing["pipeline_cancelled"]["message"] == (f"job pipeline run {stopped} was cancelled before it "
                                                        "finished: stopped by SIGTERM")
    # a stop after a failure does not resolve the failure
    res, rc = run(tmp_path, [rec(status="failed", at=NOW - timedelta(hours=1), run_id="r-bad"), records[-1]],
                  DEFAULT_RULES, send=False)
    assert rc == 3 and "pipeline_failure" in {a["alert_type"] for a in res["active_alerts"]}


def test_slow_transform_names_its_slowest_models(tmp_path):
    r = rule(alert_type="long_execution", metric="duration_vs_trailing_median", stage="transform", threshold=3,
             comparison="gt", window=10, severity="warning", message_template="{factor}x; slowest models: {slowest}")
    fast = [{"model": "fct_messages", "seconds": 2.0}]
    slow = [{"model": "agg_product_daily", "seconds": 31.25}, {"model": "fct_messages", "seconds": 2.5}]
    builds = [rec(stage="transform", duration=10, at=NOW - timedelta(hours=6 - i), run_id=f"t{i}",
                  metrics={"slowest_models": fast}) for i in range(5)]
    res, rc = run(tmp_path, builds + [rec(stage="transform", duration=40, run_id="slow",
                                          metrics={"slowest_models": slow})], rules_file(tmp_path, r))
    assert rc == 1
    assert res["active_alerts"][0]["message"] == "4.0x; slowest models: agg_product_daily 31.2 s, fct_messages 2.5 s"
    # the bottleneck view keeps the last build's slowest models
    assert res["metrics"]["performance"]["stages"]["transform"]["slowest_models"] == slow
    # a record without them (or with garbage) still renders
    res, rc = run(tmp_path, builds + [rec(stage="transform", duration=40, run_id="odd",
                                          metrics={"slowest_models": [{"model": 3}]})], rules_file(tmp_path, r))
    assert res["active_alerts"][0]["message"] == "4.0x; slowest models: -"
