"""One streaming pass over the run log: bounded per-job and per-stage histories plus totals.

Memory is bounded (deques of the most recent runs), so a log of any size is read in flat memory;
torn or malformed lines are counted and skipped.
"""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HISTORY = 2000  # runs kept per job and per stage for windows, medians and charts


def parse_ts(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


@dataclass
class Run:
    run_id: str
    job: str
    stage: str | None
    status: str
    finished_at: datetime | None
    duration_s: float
    metrics: dict
    error: str | None
    reason: str | None
    peak_rss_mb: float | None
    cpu_s: float | None


@dataclass
class LogStats:
    path: Path
    exists: bool = False
    records: int = 0
    malformed: int = 0
    jobs: dict[str, deque] = field(default_factory=lambda: defaultdict(lambda: deque(maxlen=HISTORY)))
    stages: dict[str, deque] = field(default_factory=lambda: defaultdict(lambda: deque(maxlen=HISTORY)))
    job_totals: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    last_success: dict[str, datetime] = field(default_factory=dict)  # per job, and "*" for any

    def job_runs(self, job: str | None = None, include_skipped: bool = False) -> list[Run]:
        runs = [r for name, q in self.jobs.items() if job in (None, name) for r in q]
        if not include_skipped:
            runs = [r for r in runs if r.status != "skipped"]
        return sorted(runs, key=lambda r: r.finished_at or datetime.min.replace(tzinfo=timezone.utc))

    def stage_runs(self, stage: str, job: str | None = None) -> list[Run]:
        return [r for r in self.stages.get(stage, ()) if job in (None, r.job)]


def read_log(path: str | Path) -> LogStats:
    """Read ``path`` and its rotated segments (``runs.000001.jsonl[.gz]``, ...) as one history."""
    from medical_etl.runlog import RunLog

    path = Path(path)
    stats = LogStats(path=path)
    runlog = RunLog(path)
    if not runlog.segments():
        return stats
    stats.exists = True
    scan = runlog.scan()  # valid records only: the fields below have their types
    for rec in scan:
        run = Run(run_id=str(rec.get("run_id")), job=rec["job"], stage=rec.get("stage"),
                  status=str(rec.get("status")), finished_at=parse_ts(rec.get("finished_at")),
                  duration_s=float(rec.get("duration_s") or 0.0), metrics=rec.get("metrics") or {},
                  error=(rec.get("error") or {}).get("message") if isinstance(rec.get("error"), dict)
                  else rec.get("error"),
                  reason=rec.get("reason"), peak_rss_mb=rec.get("peak_rss_mb"), cpu_s=rec.get("cpu_s"))
        stats.records += 1
        if run.stage:
            stats.stages[run.stage].append(run)
        else:
            stats.jobs[run.job].append(run)
            stats.job_totals[run.job][run.status] += 1
            if run.status == "success" and run.metrics.get("retries"):
                stats.job_totals[run.job]["succeeded_on_retry"] += 1
            if run.status == "success" and run.finished_at:
                for key in (run.job, "*"):
                    if key not in stats.last_success or run.finished_at > stats.last_success[key]:
                        stats.last_success[key] = run.finished_at
    stats.malformed = scan.skipped
    return stats


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarize(stats: LogStats) -> dict:
    """Health, performance and resource metrics from the log (warehouse metrics are added elsewhere)."""
    health = {}
    for job, totals in sorted(stats.job_totals.items()):
        done = totals["success"] + totals["failed"]
        health[job] = {"runs": sum(totals.values()), "success": totals["success"], "failed": totals["failed"],
                       "skipped": totals["skipped"], "succeeded_on_retry": totals["succeeded_on_retry"],
                       "success_rate": round(totals["success"] / done, 4) if done else None,
                       "failure_rate": round(totals["failed"] / done, 4) if done else None}
    perf, resources = {}, {}
    for stage, runs in sorted(stats.stages.items()):
        durations = [r.duration_s for r in runs if r.status == "success"]
        perf[stage] = {"runs": len(runs), "median_s": _r(statistics.median(durations)) if durations else None,
                       "p95_s": _r(percentile(durations, 0.95)), "last_s": _r(runs[-1].duration_s)}
        slowest = runs[-1].metrics.get("slowest_models")  # a dbt build's: which model the time went to
        if isinstance(slowest, list) and slowest:
            perf[stage]["slowest_models"] = slowest
        rss = [r.peak_rss_mb for r in runs if isinstance(r.peak_rss_mb, (int, float))]
        cpu = [r.cpu_s for r in runs if isinstance(r.cpu_s, (int, float))]
        resources[stage] = {"peak_rss_mb_max": max(rss) if rss else None,
                            "peak_rss_mb_median": _r(statistics.median(rss)) if rss else None,
                            "cpu_s_median": _r(statistics.median(cpu)) if cpu else None}
    ranked = [(v["median_s"], k) for k, v in perf.items() if v["median_s"] is not None]
    for stage, runs in stats.stages.items():  # the last run's PostgreSQL sessions
        peak = runs[-1].metrics.get("db_connections_peak")
        if isinstance(peak, int):
            resources[stage].update(db_connections_peak=peak,
                                    db_connections_server_peak=runs[-1].metrics.get("db_connections_server_peak"),
                                    max_connections=runs[-1].metrics.get("max_connections"))
    volume = [r.metrics.get("new_messages") for r in stats.stage_runs("scrape") if r.status == "success"]
    volume = [v for v in volume if isinstance(v, (int, float))]
    return {
        "log": {"path": str(stats.path), "exists": stats.exists, "records": stats.records,
                "malformed_lines": stats.malformed},
        "health": health,
        "performance": {"stages": perf, "bottleneck": max(ranked)[1] if ranked else None},
        "resources": resources,
        "volume": {"last_new_messages": volume[-1] if volume else None,
                   "trailing_avg_new_messages": _r(statistics.mean(volume[-11:-1])) if len(volume) > 1 else None},
        "last_success_at": stats.last_success.get("*").isoformat() if stats.last_success.get("*") else None,
        "database": database_summary(stats),
    }


def database_summary(stats: LogStats) -> dict | None:
    """The latest database health a job recorded (size, connections, largest relations) and the size
    history of the recent jobs; None before any job recorded one."""
    runs = [r for r in stats.job_runs() if isinstance(r.metrics.get("database"), dict)
            and isinstance(r.metrics["database"].get("database_size_bytes"), (int, float))]
    if not runs:
        return None
    last = runs[-1]
    db = last.metrics["database"]
    return {"run_id": last.run_id, "job": last.job,
            "recorded_at": last.finished_at.isoformat() if last.finished_at else None,
            "database_size_bytes": db["database_size_bytes"], "connections": db.get("connections"),
            "max_connections": db.get("max_connections"), "relations": db.get("relations") or [],
            "size_history": [{"at": r.finished_at.isoformat() if r.finished_at else None,
                              "database_size_bytes": r.metrics["database"]["database_size_bytes"]}
                             for r in runs[-30:]]}


def _r(v):
    return None if v is None else round(v, 3)
