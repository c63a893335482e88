"""Jobs: ordered stages under one lock and one run id, each stage in its own process with a time limit.

``run_job("pipeline", settings)`` is what Make, cron and notebooks all call. A job that finds the
lock taken records ``skipped`` and returns; a failed stage stops the stages after it. Each stage
runs in a child process (so a hung stage can be ended, and a stage's memory is returned to the
system when it ends); the child dies with the job, even on ``kill -9``.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import retry
from .config import Settings
from .runlog import RunLog, configure_rotation, new_run_id, track_run, utc_now_iso
from .secrets import mask

JOBS: dict[str, tuple[str, ...]] = {
    "pipeline": ("scrape", "load", "transform", "enrich"),
    "weekly": ("scrape", "load", "transform", "enrich"),  # full dbt refresh, counts re-read for 30 days
    "scrape-load": ("scrape", "load"),
    "transform": ("transform",),
    "enrich": ("enrich",),
}
WEEKLY_REFRESH_DAYS = 30
LOCK_NAME = "pipeline.lock"
RUNNING_DIR = "running"
CONNECTION_CHECK_MS = 2000
log = logging.getLogger(__name__)


class JobError(RuntimeError):
    def __init__(self, summary: dict):
        failed = summary.get("failed_stage")
        super().__init__(f"job {summary['job']} failed at stage {failed}: {summary.get('error')}")
        self.summary = summary


@dataclass
class _Lock:
    fd: int
    path: Path

    def release(self) -> None:
        os.close(self.fd)


def acquire_lock(path: Path, wait_s: float = 0) -> _Lock | str:
    """flock the job lock (the kernel releases it even on kill -9); return the holder's note if taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                return holder or "unknown holder"
            time.sleep(min(5.0, max(0.05, deadline - time.monotonic())))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode(), 0)
    return _Lock(fd, path)


def stage_environment(run_id: str, stage: str) -> dict:
    """Environment of a stage process: its PostgreSQL sessions are named after the run, and the
    server checks every few seconds that the client is still there, so the queries of a stage
    that was killed (time limit, job killed with -9) stop within seconds instead of running on."""
    env = dict(os.environ)
    app = stage_application_name(run_id, stage)
    env.update(PGAPPNAME=app, MEDICAL_ETL_DBT_APPNAME=app)
    check = f"-c client_connection_check_interval={CONNECTION_CHECK_MS}"
    env["PGOPTIONS"] = f"{env['PGOPTIONS']} {check}" if env.get("PGOPTIONS") else check
    return env


def stage_application_name(run_id: str, stage: str) -> str:
    return f"medical_etl/{stage}/{run_id}"[:63]


def _run_stage_process(stage: str, settings: Settings, job: str, run_id: str, opts: dict,
                       timeout_s: float) -> tuple[str, dict]:
    # A fresh interpreter running medical_etl.stage_process, not multiprocessing's spawn: spawn
    # re-imports the caller's main script, which hangs a script that lacks a __main__ guard.
    request = pickle.dumps([p for p in sys.path if p]) + pickle.dumps({"stage": stage, "settings": settings, "job": job, "run_id": run_id,
                            "opts": opts, "verbose": logging.getLogger().isEnabledFor(logging.DEBUG)})
    out_r, out_w = os.pipe()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "medical_etl.stage_process", str(out_w), str(os.getpid())],
        stdin=subprocess.PIPE, pass_fds=(out_w,), process_group=0, env=stage_environment(run_id, stage),
        cwd=os.getcwd())
    os.close(out_w)
    try:
        proc.stdin.write(request)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    data, finished = bytearray(), False
    deadline = t0 + timeout_s
    with os.fdopen(out_r, "rb", buffering=0) as out:
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            ready, _, _ = select.select([out], [], [], min(remaining, 1.0))
            if ready:
                chunk = out.read(65536)
                if not chunk:
                    finished = True
                    break
                data += chunk
    if not finished:  # timed out: end the stage and its children, and their queries
        _kill_group(proc.pid)
        proc.wait(10)
        _cancel_queries(settings, stage_application_name(run_id, stage))
        _record(settings, job, stage, run_id, t0, "timeout",
                f"stage exceeded its time limit of {timeout_s:g} s", opts.get("attempt"))
        return "failed", {"error": "timeout", "reason": "timeout"}
    proc.wait()
    try:
        return pickle.loads(bytes(data))
    except Exception:  # noqa: BLE001 - no (or a torn) result: the process died
        why = f"stage process died (exit code {proc.returncode})"
        _cancel_queries(settings, stage_application_name(run_id, stage))
        _record(settings, job, stage, run_id, t0, why, why, opts.get("attempt"))
        return "failed", {"error": why}


def _cancel_queries(settings: Settings, application_name: str) -> None:
    """End the server sessions a killed stage left (the connection check would end them too)."""
    try:
        from .db import connect

        conn = connect(settings, attempts=1)
    except Exception as exc:  # noqa: BLE001 - best effort: the server may be what failed
        log.warning("could not cancel the queries of %s: %s", application_name, mask(exc))
        return
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = %s AND pid <> pg_backend_pid()", (application_name,))
            n = cur.fetchone()[0]
        if n:
            log.warning("ended %d database session(s) left by %s", n, application_name)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not cancel the queries of %s: %s", application_name, mask(exc))
    finally:
        conn.close()


def _kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        time.sleep(2 if sig == signal.SIGTERM else 0)


def _record(settings: Settings, job: str, stage: str, run_id: str, t0: float, reason: str, message: str,
            attempt: int | None = None):
    """The stage could not write its own record (killed): write it for it."""
    rec = {"run_id": run_id, "job": job, "stage": stage, "status": "failed",
           "started_at": None, "finished_at": None, "duration_s": round(time.perf_counter() - t0, 3),
           "metrics": {}, "error": {"type": "StageTimeout" if reason == "timeout" else "StageDied",
                                    "message": message}, "reason": reason,
           "host": os.uname().nodename, "pid": os.getpid(), "peak_rss_mb": None, "cpu_s": None}
    if attempt is not None:
        rec["attempt"] = attempt
    try:
        RunLog(settings.logs_path).append(rec)
    except OSError:
        pass


def _run_stage_with_retries(stage: str, settings: Settings, job: str, run_id: str, opts: dict,
                            timeout_s: float, retried: dict) -> tuple[str, dict]:
    """Run the stage; rerun it after a transient failure, up to STAGE_RETRIES times, with capped
    exponential backoff. Each attempt appends its own run-log record (``attempt``, ``reason``);
    ``retried`` gets ``{stage: (retries, reason)}`` when a retry happened."""
    attempt = 1
    while True:
        status, result = _run_stage_process(stage, settings, job, run_id, {**opts, "attempt": attempt}, timeout_s)
        why = result.get("transient") if status != "ok" else None
        if not why or attempt > settings.stage_retries:
            return status, result
        delay = retry.backoff_s(attempt, settings.stage_retry_backoff_s, settings.stage_retry_backoff_max_s)
        log.warning("stage %s failed on attempt %d (%s: %s); retrying in %g s", stage, attempt, why,
                    result.get("error"), delay)
        retried[stage] = (attempt, why)
        time.sleep(delay)
        attempt += 1


def _housekeeping(settings: Settings) -> None:
    from .housekeeping import tidy_logs
    from .transform import PROJECT_DIR

    try:
        done = tidy_logs(settings.logs_path, retention_days=settings.log_retention_days,
                         dbt_log_dir=PROJECT_DIR / "logs")
        log.debug("log housekeeping: %s", done)
    except OSError as exc:  # a full or read-only disk must not fail a job that did its work
        log.warning("log housekeeping failed: %s", exc)


def stage_options(job: str, stage: str, *, client=None, full_refresh: bool = False,
                  refresh_days: int | None = None) -> dict:
    opts: dict = {}
    if stage == "scrape":
        if client is not None:
            opts["client"] = client
        if job == "weekly":
            opts["refresh_days"] = WEEKLY_REFRESH_DAYS
        if refresh_days is not None:
            opts["refresh_days"] = refresh_days
    if stage == "transform" and (full_refresh or job == "weekly"):
        opts["full_refresh"] = True
    if stage == "enrich" and "transform" in JOBS[job]:
        # the transform stage has just built and tested the detection models: rebuild only for new photos
        opts["build_models"] = "if_new"
    return opts


def run_job(
    job: str,
    settings: Settings,
    *,
    client=None,
    full_refresh: bool = False,
    refresh_days: int | None = None,
    lock_wait_s: float = 0,
    stage_timeout_s: float | None = None,
    run_id: str | None = None,
) -> dict:
    """Run a job's stages in order under the job lock; return the job summary.

    ``client`` is injected into the scrape stage (a TelegramClient or a stand-in). Returns a
    ``skipped`` summary if another job holds the lock after ``lock_wait_s``; raises
    :class:`JobError` (with the summary) when a stage fails, or before any stage runs when an
    input a stage needs is missing (see :mod:`medical_etl.preflight`).
    """
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; jobs: {', '.join(JOBS)}")
    timeout = stage_timeout_s or settings.stage_timeout_s
    run_id = run_id or new_run_id()
    configure_rotation(settings.runlog_max_mb)
    lock = acquire_lock(settings.logs_path / LOCK_NAME, lock_wait_s)
    if isinstance(lock, str):
        with track_run(settings.logs_path, job=job, stage=None, run_id=run_id) as rec:
            rec.status, rec.reason = "skipped", f"another job holds the lock ({lock})"
            rec.metrics.update(stages=[])
        return {"job": job, "run_id": run_id, "status": "skipped", "reason": rec.reason}
    summary: dict = {"job": job, "run_id": run_id, "stages": {}, "status": "success"}
    marker = None
    retried: dict = {}
    try:
        reap_dead_runs(settings.logs_path)
        marker = mark_running(settings.logs_path, job, run_id, _deadline_s(job, settings, timeout))
        with track_run(settings.logs_path, job=job, stage=None, run_id=run_id) as rec:
            problems = _preflight_with_retries(job, settings, client, retried)
            if problems:
                summary.update(status="failed", failed_stage=problems[0].stage, preflight=[str(p) for p in problems],
                               error="not started: " + "; ".join(str(p) for p in problems))
            for stage in JOBS[job] if not problems else ():
                opts = stage_options(job, stage, client=client, full_refresh=full_refresh,
                                     refresh_days=refresh_days)
                status, result = _run_stage_with_retries(stage, settings, job, run_id, opts, timeout, retried)
                summary["stages"][stage] = result if status == "ok" else {"status": "failed", **result}
                if status != "ok":
                    summary.update(status="failed", failed_stage=stage, error=result.get("error"))
                    # Some channels failing must not hold back the others' data: the job goes on
                    # (and still ends failed); anything else stops the stages after it.
                    partial = (result.get("summary") or {}).get("status") == "partial"
                    if not partial:
                        break
            rec.metrics.update(stages=list(summary["stages"]), failed_stage=summary.get("failed_stage"))
            if retried:  # a success after a retry is a success; the monitor warns about it
                rec.metrics.update(retries={k: n for k, (n, _) in retried.items()},
                                   retry_reasons={k: why for k, (_, why) in retried.items()})
                summary["retries"] = rec.metrics["retries"]
            if summary["status"] == "failed":
                rec.status, rec.reason = "failed", f"stage {summary['failed_stage']}: {summary['error']}"
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
        _housekeeping(settings)
        lock.release()
    if summary["status"] == "failed":
        raise JobError(summary)
    return summary


def _deadline_s(job: str, settings: Settings, timeout: float) -> float:
    """Longest a job can legitimately run: every stage at its time limit on every attempt, plus the waits."""
    tries = 1 + settings.stage_retries
    waits = sum(retry.backoff_s(n, settings.stage_retry_backoff_s, settings.stage_retry_backoff_max_s)
                for n in range(1, tries))
    return len(JOBS[job]) * (timeout * tries + waits) + waits + 300


def _preflight_with_retries(job: str, settings: Settings, client, retried: dict):
    """The preflight checks; a database that is unreachable or restarting (and nothing else wrong)
    is waited for like a stage's transient failure, up to STAGE_RETRIES times."""
    attempt = 1
    while True:
        problems = _preflight(job, settings, client)
        why = (retry.message_reason(problems[0].message) or retry.DB_UNREACHABLE) \
            if len(problems) == 1 and problems[0].setting == "DB_*" else None
        if not why or attempt > settings.stage_retries:
            return problems
        delay = retry.backoff_s(attempt, settings.stage_retry_backoff_s, settings.stage_retry_backoff_max_s)
        log.warning("job %s: %s (%s); checking again in %g s", job, why, mask(problems[0]), delay)
        retried["preflight"] = (attempt, why)
        time.sleep(delay)
        attempt += 1


def _preflight(job: str, settings: Settings, client):
    from .preflight import preflight

    problems = preflight(JOBS[job], settings, client=client)
    for p in problems:
        log.error("job %s cannot start: %s", job, mask(p))
    return problems


# --- runs that never finished ------------------------------------------------------
# A job writes a marker when it starts and removes it when it has recorded its end. A marker
# left behind means the job died without a record (kill -9, power loss, OOM killer): the
# monitor alerts on it, and the next job records the death in the run log.

def _running_dir(logs_path: Path) -> Path:
    return Path(logs_path) / RUNNING_DIR


def process_start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def mark_running(logs_path: Path, job: str, run_id: str, deadline_s: float) -> Path:
    folder = _running_dir(logs_path)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    marker = {"run_id": run_id, "job": job, "pid": os.getpid(), "host": os.uname().nodename,
              "start_ticks": process_start_ticks(os.getpid()),
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
              "deadline_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + deadline_s))}
    path = folder / f"{run_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, path)
    return path


def unfinished_runs(logs_path: Path) -> list[dict]:
    """Markers of jobs that started and have not recorded their end, each with ``alive``."""
    out = []
    folder = _running_dir(logs_path)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            marker = json.loads(path.read_text())
            pid = int(marker["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        same_host = marker.get("host") == os.uname().nodename
        alive = (not same_host) or (process_start_ticks(pid) is not None
                                    and process_start_ticks(pid) == marker.get("start_ticks"))
        out.append({**marker, "alive": alive, "marker": str(path)})
    return out


def reap_dead_runs(logs_path: Path) -> list[str]:
    """Record, as failed, the jobs that died without a record (called under the job lock, so no
    marker left can belong to a live job of this host)."""
    reaped = []
    for run in unfinished_runs(logs_path):
        if run.get("host") != os.uname().nodename:
            continue
        RunLog(logs_path).append({
            "run_id": run["run_id"], "job": run["job"], "stage": None, "status": "failed",
            "started_at": run.get("started_at"), "finished_at": utc_now_iso(), "duration_s": 0.0,
            "metrics": {"stages": [], "died": True},
            "error": {"type": "JobDied", "message": f"job process {run['pid']} died without recording its end "
                                                    "(killed with -9, out of memory, or the machine stopped)"},
            "reason": "died", "host": run.get("host"), "pid": run["pid"], "peak_rss_mb": None, "cpu_s": None})
        Path(run["marker"]).unlink(missing_ok=True)
        reaped.append(run["run_id"])
    return reaped
