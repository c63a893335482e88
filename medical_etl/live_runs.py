"""Runs that never finished: a job writes a marker when it starts and removes it when it has
recorded its end. A marker left behind means the job died without a record (kill -9, power loss,
OOM killer): the monitor alerts on it, and the next job records the death in the run log.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from medical_etl.runlog import RunLog, utc_now_iso

RUNNING_DIR = "running"


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
