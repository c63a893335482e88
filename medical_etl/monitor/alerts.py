"""Rule metrics, evaluation, and the state that makes each alert fire once per triggering run
and report its resolution once."""
from __future__ import annotations

import json
import os
import statistics
import string
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from medical_etl.lake import atomic_write_bytes
from medical_etl.monitor.rules import SEVERITIES, Rule
from medical_etl.monitor.stats import LogStats, Run, parse_ts

CANCELLED = "cancelled"  # a job or stage stopped by a signal, which recorded its end


@dataclass
class Subject:
    """One thing a rule looks at (the job, or one channel): its value, context and triggering run."""
    key: str
    value: float
    context: dict
    trigger: str
    resolvable: bool = True  # False: an event (a death) that no later run "resolves"


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


def render_template(template: str, context: dict) -> str:
    """Plain field substitution: ``{name}`` becomes ``str(context[name])``; nothing else is evaluated
    (templates are checked when the rules file is read, see :func:`rules.check_template`)."""
    out = []
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(str(context.get(name, "{" + name + "}")))
    return "".join(out)


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
    """1.0 when the latest matching run has ``status``; the context serves failure, success and a stop.

    A cancelled run (stopped by a signal) says nothing about whether the job works, so only the
    ``cancelled`` metric looks at it: it neither resolves a failure nor counts as a success."""
    runs = [r for r in _runs(stats, rule) if r.status != CANCELLED or status == CANCELLED]
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


def m_job_cancelled(stats, rule, now, wh, state):
    """1.0 when the latest matching run was stopped (SIGTERM): a clean stop, not a death."""
    return _latest_is(stats, rule, CANCELLED)


def m_succeeded_on_retry(stats, rule, now, wh, state):
    """1.0 when the latest matching job run succeeded only after a stage was retried (a success, with a warning)."""
    runs = _runs(stats, rule)
    if not runs or runs[-1].status != "success":
        return []
    r = runs[-1]
    retries = r.metrics.get("retries") if isinstance(r.metrics.get("retries"), dict) else {}
    reasons = r.metrics.get("retry_reasons") if isinstance(r.metrics.get("retry_reasons"), dict) else {}
    return [Subject(_subject_name(rule), float(bool(retries)),
                    {"job": r.job, "run_id": r.run_id, "retries": sum(retries.values()),
                     "stages": ", ".join(f"{k} ({reasons.get(k, 'transient')})" for k in retries),
                     "duration_s": round(r.duration_s, 1)}, r.run_id)]


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
                     "median_s": round(median, 1), "factor": round(last.duration_s / median, 1),
                     "slowest": slowest_text(last.metrics)}, last.run_id)]


def slowest_text(metrics: dict) -> str:
    """A dbt build's slowest models as the run log recorded them ("agg_product_daily 12.7 s, ..."); "-"
    for a stage that records none (or a malformed entry)."""
    models = metrics.get("slowest_models")
    if not isinstance(models, list):
        return "-"
    parts = [f"{m['model']} {m['seconds']:.1f} s" for m in models
             if isinstance(m, dict) and isinstance(m.get("model"), str) and isinstance(m.get("seconds"), (int, float))]
    return ", ".join(parts) or "-"


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


def m_job_died(stats, rule, now, wh, state):
    """1.0 per job run that started and never recorded its end: its process is gone, or it is
    past its deadline (live markers); or its death was recorded by the next job (in the window).
    A run that recorded a stop (``cancelled``) is never a death, even with a marker left behind."""
    from medical_etl.live_runs import unfinished_runs

    out, seen = [], {r.run_id for r in stats.job_runs() if r.status == CANCELLED}
    for run in unfinished_runs(stats.path.parent):
        deadline = parse_ts(run.get("deadline_at"))
        overdue = deadline is not None and now > deadline
        if run["run_id"] in seen or rule.job not in (None, run.get("job")) or (run["alive"] and not overdue):
            continue
        why = "its process is gone" if not run["alive"] else "it is past its time limit"
        out.append(Subject(f"run:{run['run_id']}", 1.0,
                           {"job": run.get("job"), "run_id": run["run_id"], "pid": run.get("pid"),
                            "started_at": run.get("started_at"), "why": why}, run["run_id"], resolvable=False))
        seen.add(run["run_id"])
    for r in _in_window(stats.job_runs(rule.job), rule, now):
        if r.reason == "died" and r.run_id not in seen:
            out.append(Subject(f"run:{r.run_id}", 1.0,
                               {"job": r.job, "run_id": r.run_id, "pid": None, "started_at": None,
                                "why": "its process died without recording its end"}, r.run_id, resolvable=False))
    return out


def _health_runs(stats, rule) -> list:
    """Job runs that recorded the database's health (metrics.database with its size)."""
    return [r for r in stats.job_runs(rule.job) if isinstance(r.metrics.get("database"), dict)
            and isinstance(r.metrics["database"].get("database_size_bytes"), (int, float))]


def m_database_growth_pct_per_day(stats, rule, now, wh, state):
    """How fast the database grows: the percent per day from the oldest recorded size in the window
    (at least an hour before) to the latest."""
    runs = [r for r in _health_runs(stats, rule) if r.finished_at]
    if len(runs) < 2:
        return []
    last = runs[-1]
    earlier = [r for r in _in_window(runs[:-1], rule, now)
               if (last.finished_at - r.finished_at).total_seconds() >= 3600]
    if not earlier:
        return []
    first = earlier[0]
    before, after = first.metrics["database"]["database_size_bytes"], last.metrics["database"]["database_size_bytes"]
    days = (last.finished_at - first.finished_at).total_seconds() / 86400
    if before <= 0:
        return []
    pct = 100 * (after - before) / before / days
    return [Subject("database", pct, {"pct_per_day": round(pct, 1), "size_mb": round(after / 1e6, 1),
                                      "previous_mb": round(before / 1e6, 1), "days": round(days, 2),
                                      "run_id": last.run_id}, last.run_id)]


def m_connections_pct_of_max(stats, rule, now, wh, state):
    """The most PostgreSQL sessions the latest job saw on the server (its stages' peaks, its end
    snapshot), as a percent of max_connections."""
    runs = _health_runs(stats, rule)
    if not runs:
        return []
    last = runs[-1]
    db = last.metrics["database"]
    peak, where = db.get("connections") or 0, "at the job's end"
    for r in stats.stages.values():
        for s in r:
            n = s.metrics.get("db_connections_server_peak")
            if s.run_id == last.run_id and isinstance(n, int) and n > peak:
                peak, where = n, f"during stage {s.stage}"
    limit = db.get("max_connections")
    if not limit:
        return []
    pct = 100 * peak / limit
    return [Subject("database", pct, {"connections": peak, "max_connections": limit, "pct": round(pct, 1),
                                      "where": where, "run_id": last.run_id}, last.run_id)]


DEAD_TUPLES_MIN = 1000  # below this a small table's churn is noise, not bloat


def m_dead_tuples_over_live(stats, rule, now, wh, state):
    """Per large relation of the latest health record with at least DEAD_TUPLES_MIN dead tuples: its dead
    tuples per live one (over 1: more dead rows than live, the table needs a VACUUM)."""
    runs = _health_runs(stats, rule)
    if not runs:
        return []
    last = runs[-1]
    out = []
    for rel in last.metrics["database"].get("relations") or []:
        if not isinstance(rel, dict):
            continue
        dead, live = rel.get("dead_tuples"), rel.get("live_tuples")
        if not isinstance(dead, int) or not isinstance(live, int) or dead < DEAD_TUPLES_MIN:
            continue
        ratio = dead / max(live, 1)
        out.append(Subject(f"relation:{rel.get('relation')}", ratio,
                           {"relation": rel.get("relation"), "dead_tuples": dead, "live_tuples": live,
                            "ratio": round(ratio, 2), "last_vacuum": rel.get("last_vacuum") or "never",
                            "run_id": last.run_id}, last.run_id))
    return out


METRICS = {name[2:]: fn for name, fn in globals().items() if name.startswith("m_")}


COMMON_FIELDS = {"value", "threshold", "alert_type"}
# The fields each metric offers its message template (checked when the rules are read).
METRIC_FIELDS = {
    "job_failed": {"job", "stage", "run_id", "error", "failed_stage", "duration_s", "finished_at"},
    "job_succeeded": {"job", "stage", "run_id", "error", "failed_stage", "duration_s", "finished_at"},
    "job_cancelled": {"job", "stage", "run_id", "error", "failed_stage", "duration_s", "finished_at"},
    "failure_rate": {"rate_pct", "failed", "total", "window", "job"},
    "duration_s": {"name", "run_id", "duration_s"},
    "duration_vs_trailing_median": {"name", "run_id", "duration_s", "median_s", "factor", "slowest"},
    "new_messages_vs_trailing_avg": {"new_messages", "trailing_avg", "pct", "run_id"},
    "hours_since_success": {"hours", "job", "last_success"},
    "channel_hours_since_last_post": {"channel", "hours", "last_post"},
    "job_died": {"job", "run_id", "pid", "started_at", "why"},
    "database_growth_pct_per_day": {"pct_per_day", "size_mb", "previous_mb", "days", "run_id"},
    "connections_pct_of_max": {"connections", "max_connections", "pct", "where", "run_id"},
    "dead_tuples_over_live": {"relation", "dead_tuples", "live_tuples", "ratio", "last_vacuum", "run_id"},
}


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
            ctx = {**s.context, "value": round(s.value, 3), "threshold": rule.threshold,
                   "alert_type": rule.alert_type}
            alert = Alert(key, trigger_id, rule.alert_type, rule.severity,
                          render_template(rule.message_template, ctx), s.value, rule.threshold, "firing",
                          new=trigger_id not in sent)
            active.append(alert)
            if alert.new:
                to_send.append(alert)
                sent.append(trigger_id)
            active_before[key] = {"alert_type": rule.alert_type, "severity": rule.severity,
                                  "message": alert.message, "resolvable": s.resolvable}
    for key in list(active_before):
        if key not in firing_keys:
            prev = active_before.pop(key)
            if prev["severity"] == "info" or not prev.get("resolvable", True):
                continue  # a success or a death has nothing to resolve
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


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def _read_state(path: Path) -> dict:
    """The state in ``path``; ValueError when it is not one :func:`evaluate` can use."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        ok = (isinstance(state, dict) and isinstance(state.get("sent", []), list)
              and all(isinstance(t, str) for t in state.get("sent", []))
              and isinstance(state.get("active", {}), dict)
              and all(isinstance(v, dict) and {"alert_type", "severity", "message"} <= set(v)
                      for v in state.get("active", {}).values())
              and ("first_seen" not in state or datetime.fromisoformat(state["first_seen"]).tzinfo))
    except (TypeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    if not ok:
        raise ValueError("not an alert state")
    return state


def load_state(path: Path, repair: bool = True) -> tuple[dict, list[str]]:
    """The alert state and the problems met reading it. No file is a fresh start. A file that cannot
    be used falls back to its copy (:func:`backup_path`), so alerts sent before are not sent again;
    with ``repair`` (the caller holds the state lock) the bad file is moved aside as
    ``<name>.bad-<UTC time>`` and the copy put in its place."""
    try:
        return _read_state(path), []
    except (FileNotFoundError, NotADirectoryError):
        return {}, []
    except (OSError, ValueError) as exc:
        problem = f"the alert state {path} cannot be used ({getattr(exc, 'strerror', None) or exc})"
    if repair and path.is_file():
        aside = path.with_name(f"{path.name}.bad-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
        try:
            os.replace(path, aside)
            problem += f"; kept as {aside.name}"
        except OSError as exc:
            problem += f"; cannot move it aside: {exc.strerror or exc}"
    copy = backup_path(path)
    try:
        state = _read_state(copy)
    except (OSError, ValueError) as exc:
        return {}, [f"{problem}; no usable copy ({copy.name}: {getattr(exc, 'strerror', None) or exc}), "
                    "so alerts already sent may be sent again"]
    if repair:
        try:
            _write_atomic(path, json.dumps(state, default=str))
        except OSError as exc:
            problem += f"; cannot restore it: {exc.strerror or exc}"
    return state, [f"{problem}; using its copy {copy.name}: the alerts it records as sent are not sent again"]


def save_state(path: Path, state: dict) -> None:
    """Write the state, then the same to its copy; each write is atomic (old file or new, never torn)."""
    text = json.dumps(state, default=str)
    for target in (path, backup_path(path)):
        _write_atomic(target, text)


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
