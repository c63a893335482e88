"""Log housekeeping, run at the end of every job: bounded cron and dbt logs, compressed run-log segments.

* ``LOGS_PATH/cron-YYYY-MM-DD-<job>.log``: gzipped once their day is over and nothing wrote to them
  for ``QUIET_S``; deleted (plain or gzipped) once older than ``LOG_RETENTION_DAYS``.
* dbt's logs (``medical_warehouse/logs``): dbt rotates ``dbt.log`` itself (10 MB, 5 backups); each
  backup ``dbt.log.N`` is gzipped under a name holding its time (dbt reuses the ``.N`` names), and
  deleted past retention, as is a ``dbt.log`` nothing wrote to for that long.
* rotated run-log segments (``runs.000001.jsonl``) are gzipped; they are never deleted (the run log is
  the pipeline's history, read by the monitor as one).
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from medical_etl.runlog import RunLog

QUIET_S = 600  # a log written to in the last 10 minutes may belong to a running job
_CRON = re.compile(r"cron-(\d{4}-\d{2}-\d{2})-[\w.-]+\.log(\.gz)?")
_DBT_BACKUP = re.compile(r"dbt\.log\.\d+")
_DBT_GZ = re.compile(r"dbt-\d{8}T\d{6}Z(-\d+)?\.log\.gz")


def _gzip(src: Path, dst: Path) -> None:
    """Compress ``src`` to ``dst`` (atomically, mtime kept), then remove ``src``."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    with open(src, "rb") as fin, gzip.open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    st = src.stat()
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, dst)
    src.unlink()


def tidy_logs(logs_path: str | Path, *, retention_days: int = 30, dbt_log_dir: str | Path | None = None,
              now: float | None = None) -> dict:
    """Compress and expire old logs; return what was done (counts per kind)."""
    now = time.time() if now is None else now
    today = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")
    horizon = now - retention_days * 86400
    out = {"compressed": 0, "deleted": 0, "runlog_segments_compressed": 0}
    logs_path = Path(logs_path)
    if logs_path.is_dir():
        for p in sorted(logs_path.iterdir()):
            m = _CRON.fullmatch(p.name)
            if not m or not p.is_file():
                continue
            mtime = p.stat().st_mtime
            if mtime < horizon:
                p.unlink(missing_ok=True)
                out["deleted"] += 1
            elif not m.group(2) and m.group(1) < today and mtime < now - QUIET_S:
                _gzip(p, p.with_name(p.name + ".gz"))
                out["compressed"] += 1
        out["runlog_segments_compressed"] = RunLog(logs_path).compress_segments()
    if dbt_log_dir is not None and Path(dbt_log_dir).is_dir():
        for p in sorted(Path(dbt_log_dir).iterdir()):
            if not p.is_file():
                continue
            mtime = p.stat().st_mtime
            if (_DBT_GZ.fullmatch(p.name) or p.name == "dbt.log" or _DBT_BACKUP.fullmatch(p.name)) \
                    and mtime < horizon:
                p.unlink(missing_ok=True)
                out["deleted"] += 1
            elif _DBT_BACKUP.fullmatch(p.name) and mtime < now - QUIET_S:
                stamp = datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
                dst, n = p.with_name(f"dbt-{stamp}.log.gz"), 1
                while dst.exists():
                    dst, n = p.with_name(f"dbt-{stamp}-{n}.log.gz"), n + 1
                _gzip(p, dst)
                out["compressed"] += 1
    return out
