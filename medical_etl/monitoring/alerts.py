"""Rule metrics, evaluation, and the state that makes each alert fire once per triggering run
and report its resolution once."""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .rules import SEVERITIES, Rule
from .stats import LogStats, Run


@dataclass
class Subject:
    """One thing a rule looks at (the job, or one channel): its value, context and triggering run."""
    key: str
    value: float
    context: dict
    trigger: str


@dataclass
class Alert:
    key: str
    trigger: str
    alert_type: str
    severity: str
    message: str
    value: float
    threshold: float
    state: str  # firing, resolved
    new: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


class _Safe(dict):
    def __missing__(self, k):
        return "{" + k + "}"


def _in_window(runs: list[Run], rule: Rule, now: datetime) -> list[Run]:
    if rule.window.seconds:
        since = now - timedelta(seconds=rule.window.seconds)
        return [r for r in runs if r.finished_at and r.finished_at >= since]
    return runs[-rule.window.runs:]


def _subject_name(rule: Rule) -> str:
    return rule.stage or rule.job or "all"


def _runs(stats: LogStats, rule: Rule) -> list[Run]:
    return stats.stage_runs(rule.stage, rule.job) if rule.stage else stats.job_runs(rule.job)


def _latest_is(stats, rule, status: str) -> list[Subject]:
    """1.0 when the latest matching run has ``status``; the context serves both failure and success."""
    runs = _runs(stats, rule)
    if not runs:
        return []
    r = runs[-1]
    return [Subject(_subject_name(rule), float(r.status == status),
                    {"job": r.job, "stage": r.stage, "run_id": r.run_id, "error": r.error or r.reason or "",
                     "failed_stage": r.metrics.get("failed_stage"), "duration_s": round(r.duration_s, 1),
                     "finished_at": r.finished_at}, r.run_id)]


def m_job_failed(stats, rule, now, wh, state):
    return _latest_is(stats, rule, "failed")


def m_job_succeeded(stats, rule, now, wh, state):
    return _latest_is(stats, rule, "success")


def m_failure_rate(stats, rule, now, wh, state):
    runs = [r for r in _in_window(_runs(stats, rule), rule, now) if r.status in ("success", "failed")]
    if not runs:
        return []
    failed = sum(r.status == "failed" for r in runs)
    rate = failed / len(runs)
    return [Subject(_subject_name(rule), rate, {"rate_pct": round(100 * rate, 1), "failed": failed,
                                                "total": len(runs), "window": str(rule.window),
                                                "job": rule.job or "all jobs"}, runs[-1].run_id)]


def m_duration_s(stats, rule, now, wh, state):
    runs = _runs(stats, rule)
    if not runs:
        return []
    r = runs[-1]
    return [Subject(_subject_name(rule), r.duration_s, {"name": _subject_name(rule), "run_id": r.run_id,
                                                        "duration_s": round(r.duration_s, 1)}, r.run_id)]


def m_duration_vs_trailing_median(stats, rule, now, wh, state):
    runs = [r for r in _runs(stats, rule) if r.status == "success"]
    if len(runs) < 4:
        return []
    last, previous = runs[-1], _in_window(runs[:-1], rule, now)
    median = statistics.median(r.duration_s for r in previous) if previous else 0
    if median <= 0:
        return []
    return [Subject(_subject_name(rule), last.duration_s / median,
                    {"name": _subject_name(rule), "run_id": last.run_id, "duration_s": round(last.duration_s, 1),
                     "median_s": round(median, 1), "factor": round(last.duration_s / median, 1)}, last.run_id)]


def m_new_messages_vs_trailing_avg(stats, rule, now, wh, state):
    runs = [r for r in stats.stage_runs("scrape", rule.job) if r.status == "success"
            and isinstance(r.metrics.get("new_messages"), (int, float))]
    if len(runs) < 2:
        return []
    last, previous = runs[-1], _in_window(runs[:-1], rule, now)
    avg = statistics.mean(r.metrics["new_messages"] for r in previous) if previous else 0
    if avg <= 0:
        return []
    n = last.metrics["new_messages"]
    return [Subject("scrape", n / avg, {"new_messages": n, "trailing_avg": round(avg, 1),
                                        "pct": round(100 * n / avg, 1), "run_id": last.run_id}, last.run_id)]


def m_hours_since_success(stats, rule, now, wh, state):
    last = stats.last_success.get(rule.job or "*")
    since = last or _first_seen(state, now)
    hours = (now - since).total_seconds() / 3600
    latest = stats.job_runs(rule.job, include_skipped=True)
    trigger = latest[-1].run_id if latest else "no-runs"
    return [Subject(rule.job or "pipeline", hours,
                    {"hours": round(hours, 1), "job": rule.job or "any job",
                     "last_success": last.isoformat() if last else "never"}, trigger)]


def m_channel_hours_since_last_post(stats, rule, now, wh, state):
    if wh is None:
        return []
    out = []
    for channel, last_post in wh.get("last_post_by_channel", {}).items():
        hours = (now - last_post).total_seconds() / 3600
        out.append(Subject(f"channel:{channel}", hours, {"channel": channel, "hours": round(hours, 1),
                                                         "last_post": last_post.isoformat()},
                           last_post.isoformat()))
    return out


METRICS = {name[2:]: fn for name, fn in globals().items() if name.startswith("m_")}


def _first_seen(state: dict, now: datetime) -> datetime:
    if "first_seen" not in state:
        state["first_seen"] = now.isoformat()
    return datetime.fromisoformat(state["first_seen"])


def evaluate(rules: list[Rule], stats: LogStats, warehouse: dict | None, state: dict,
             now: datetime | None = None) -> tuple[list[Alert], list[Alert]]:
    """Return (active alerts, alerts to send now: new firings and resolutions); update ``state``."""
    now = now or datetime.now(timezone.utc)
    sent: list[str] = state.setdefault("sent", [])
    active_before: dict = state.setdefault("active", {})
    active, to_send, firing_keys = [], [], set()
    for rule in rules:
        for s in METRICS[rule.metric](stats, rule, now, warehouse, state):
            key = f"{rule.alert_type}:{rule.metric}:{s.key}"
            if not rule.compare(s.value):
                continue
            firing_keys.add(key)
            trigger_id = f"{key}@{s.trigger}"
            ctx = _Safe({**s.context, "value": round(s.value, 3), "threshold": rule.threshold,
                         "alert_type": rule.alert_type})
            alert = Alert(key, trigger_id, rule.alert_type, rule.severity,
                          rule.message_template.format_map(ctx), s.value, rule.threshold, "firing",
                          new=trigger_id not in sent)
            active.append(alert)
            if alert.new:
                to_send.append(alert)
                sent.append(trigger_id)
            active_before[key] = {"alert_type": rule.alert_type, "severity": rule.severity,
                                  "message": alert.message}
    for key in list(active_before):
        if key not in firing_keys:
            prev = active_before.pop(key)
            if prev["severity"] == "info":  # an info alert (a success) has nothing to resolve
                continue
            to_send.append(Alert(key, f"{key}@resolved", prev["alert_type"], prev["severity"],
                                 f"resolved: {prev['message']}", 0.0, 0.0, "resolved"))
    del sent[:-5000]  # the dedup memory stays small
    return active, to_send


def worst_severity(alerts: list[Alert]) -> str | None:
    firing = [a.severity for a in alerts if a.state == "firing"]
    return max(firing, key=SEVERITIES.get) if firing else None


def exit_code(alerts: list[Alert]) -> int:
    worst = worst_severity(alerts)
    return {None: 0, "info": 0, "warning": 1, "error": 2, "critical": 3}[worst]


def load_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".monitor_state.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, default=str)
    os.replace(tmp, path)
