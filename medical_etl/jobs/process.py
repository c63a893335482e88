"""The parent side of a stage process: start it, feed it its request, wait under a time limit,
end it (and its database sessions) when it overruns or dies or the job is stopped (SIGTERM, Ctrl-C),
rerun it after a transient failure.

The child side is :mod:`medical_etl.jobs.child`.
"""
from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import time

from medical_etl.config import Settings
from medical_etl.jobs import cancel, retry
from medical_etl.runlog import RunLog
from medical_etl.secrets import mask
from medical_etl.transform.dbt import APPNAME_VAR

CONNECTION_CHECK_MS = 2000
log = logging.getLogger(__name__)


def stage_environment(run_id: str, stage: str) -> dict:
    """Environment of a stage process: its PostgreSQL sessions are named after the run, and the
    server checks every few seconds that the client is still there, so the queries of a stage
    that was killed (time limit, job killed with -9) stop within seconds instead of running on."""
    env = dict(os.environ)
    app = stage_application_name(run_id, stage)
    env.update({"PGAPPNAME": app, APPNAME_VAR: app})
    check = f"-c client_connection_check_interval={CONNECTION_CHECK_MS}"
    env["PGOPTIONS"] = f"{env['PGOPTIONS']} {check}" if env.get("PGOPTIONS") else check
    return env


def stage_application_name(run_id: str, stage: str) -> str:
    return f"medical_etl/{stage}/{run_id}"[:63]


def run_stage_process(stage: str, settings: Settings, job: str, run_id: str, opts: dict,
                       timeout_s: float) -> tuple[str, dict]:
    # A fresh interpreter running medical_etl.jobs.child, not multiprocessing's spawn: spawn
    # re-imports the caller's main script, which hangs a script that lacks a __main__ guard.
    request = pickle.dumps([p for p in sys.path if p]) + pickle.dumps({"stage": stage, "settings": settings, "job": job, "run_id": run_id,
                            "opts": opts, "verbose": logging.getLogger().isEnabledFor(logging.DEBUG),
                            "ignore_sigterm": cancel.handled()})
    out_r, out_w = os.pipe()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "medical_etl.jobs.child", str(out_w), str(os.getpid())],
        stdin=subprocess.PIPE, pass_fds=(out_w,), process_group=0, env=stage_environment(run_id, stage),
        cwd=os.getcwd())
    os.close(out_w)
    try:
        data, finished = _wait(proc, out_r, request, t0 + timeout_s)
    except BaseException as exc:  # SIGTERM (JobCancelled) or Ctrl-C: end the stage before the job ends
        _end_interrupted(proc, settings, job, stage, run_id, t0, opts.get("attempt"), exc)
        raise
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


def _wait(proc: subprocess.Popen, out_r: int, request: bytes, deadline: float) -> tuple[bytearray, bool]:
    """Send the request, read the result until the stage closes its end or ``deadline`` passes."""
    data = bytearray()
    with os.fdopen(out_r, "rb", buffering=0) as out:
        try:
            proc.stdin.write(request)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return data, False
            ready, _, _ = select.select([out], [], [], min(remaining, 1.0))
            if ready:
                chunk = out.read(65536)
                if not chunk:
                    return data, True
                data += chunk


def _end_interrupted(proc: subprocess.Popen, settings: Settings, job: str, stage: str, run_id: str, t0: float,
                     attempt: int | None, exc: BaseException) -> None:
    """The job is stopping while ``stage`` runs: end the stage now (in a notebook, whose process lives
    on, it would otherwise run on beside the next job), end its queries, and record it."""
    # SIGKILL: the stage ignores SIGTERM under such a job, and every stage is safe to kill -9.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        log.warning("stage %s (pid %d) did not end within 10 s of SIGKILL", stage, proc.pid)
    _cancel_queries(settings, stage_application_name(run_id, stage))
    if isinstance(exc, cancel.JobCancelled):
        exc.stage = stage
        _record(settings, job, stage, run_id, t0, exc.reason, f"the job was {exc.reason}", attempt,
                status="cancelled", error_type="JobCancelled")
    else:
        _record(settings, job, stage, run_id, t0, "interrupted",
                f"the job was interrupted ({type(exc).__name__})", attempt, error_type=type(exc).__name__)


def _cancel_queries(settings: Settings, application_name: str) -> None:
    """End the server sessions a killed stage left (the connection check would end them too)."""
    try:
        from medical_etl.db import conn_params, connect

        conn = connect(conn_params(settings), attempts=1)
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
            attempt: int | None = None, *, status: str = "failed", error_type: str | None = None):
    """The stage could not write its own record (killed): write it for it."""
    error_type = error_type or ("StageTimeout" if reason == "timeout" else "StageDied")
    rec = {"run_id": run_id, "job": job, "stage": stage, "status": status,
           "started_at": None, "finished_at": None, "duration_s": round(time.perf_counter() - t0, 3),
           "metrics": {}, "error": {"type": error_type, "message": message}, "reason": reason,
           "host": os.uname().nodename, "pid": os.getpid(), "peak_rss_mb": None, "cpu_s": None}
    if attempt is not None:
        rec["attempt"] = attempt
    try:
        RunLog(settings.logs_path).append(rec)
    except OSError:
        pass


def run_with_retries(stage: str, settings: Settings, job: str, run_id: str, opts: dict,
                            timeout_s: float, retried: dict) -> tuple[str, dict]:
    """Run the stage; rerun it after a transient failure, up to STAGE_RETRIES times, with capped
    exponential backoff. Each attempt appends its own run-log record (``attempt``, ``reason``);
    ``retried`` gets ``{stage: (retries, reason)}`` when a retry happened."""
    attempt = 1
    while True:
        status, result = run_stage_process(stage, settings, job, run_id, {**opts, "attempt": attempt}, timeout_s)
        why = result.get("transient") if status != "ok" else None
        if not why or attempt > settings.stage_retries:
            return status, result
        delay = retry.backoff_s(attempt, settings.stage_retry_backoff_s, settings.stage_retry_backoff_max_s)
        log.warning("stage %s failed on attempt %d (%s: %s); retrying in %g s", stage, attempt, why,
                    result.get("error"), delay)
        retried[stage] = (attempt, why)
        time.sleep(delay)
        attempt += 1

