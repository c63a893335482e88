"""Backup: the database (pg_dump custom format), the data lake and the run log (restore: :mod:`.restore`).

One backup is one folder ``BACKUP_PATH/medical_etl-YYYYmmddTHHMMSSZ/``::

    manifest.json    when, which server and tools, row count of every table, lake and log files
    database.dump    pg_dump -Fc of the whole warehouse database
    lake/            the data lake; files unchanged since the previous backup are hard links to it
                     (an rsync --link-dest style copy: each backup is complete, unchanged files cost nothing)
    logs/            the run log (every segment) and the monitor's state

It is written as ``.medical_etl-...partial`` and renamed when complete, so a crash never leaves
something that looks like a backup. Every file of a backup is 0600 and every folder 0700, whatever
the umask: a backup holds the whole warehouse. Only real folders of BACKUP_PATH (never a link) with
a readable manifest count as backups, ordered by the manifest's time, not by their names.

A backup taken while a job runs neither blocks it for long nor captures a half-written batch: the database is dumped from one exported snapshot (pg_dump
takes only ACCESS SHARE locks, which writers do not wait for), and the lake is copied *after*
the snapshot, resume points first, so the lake in a backup is never older than its database and
a re-run after a restore redoes at most some idempotent work.

The PostgreSQL client tools are those of the server's major version (the embedded server's own
binaries, ``/usr/lib/postgresql/<major>/bin``, ``PATH``, ``PG_BIN_DIR``), or a newer one.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from medical_etl import lake
from medical_etl.config import Settings
from medical_etl.db import ConnParams, conn_params, connect
from medical_etl.errors import PermanentError
from medical_etl.runlog import RunLog
from medical_etl.secrets import mask

log = logging.getLogger(__name__)

PREFIX = "medical_etl-"
_NAME = re.compile(r"medical_etl-\d{8}T\d{6}Z(-\d+)?")
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
LAKE_ORDER = (lake.STATE_DIR, lake.MESSAGES_DIR, lake.IMAGES_DIR, lake.MANIFESTS_DIR)  # resume points first
LOG_FILES = ("monitor_state.json",)
LOCK_WAIT_TIMEOUT = "60s"  # pg_dump gives up rather than queue behind a long exclusive lock
FILE_MODE, DIR_MODE = 0o600, 0o700
ASIDE_SCHEMA = "before_restore_{stamp}_{schema}"  # a live schema during a restore, until it succeeds


class BackupError(PermanentError):
    """pg_dump/pg_restore failed, or the backup is incomplete."""


class RestoreRefused(BackupError):
    """The target database or folders are not empty and ``force`` was not given."""


# --- PostgreSQL client tools ------------------------------------------------------

def major_version(version_text: str) -> int:
    m = re.search(r"(\d+)(?:\.\d+)?", version_text)
    if not m:
        raise BackupError(f"cannot read a PostgreSQL version from {version_text!r}")
    return int(m.group(1))


def _pgserver_bin() -> Path | None:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


def _tool_dirs(settings: Settings) -> list[Path]:
    """Where to look, best first: PG_BIN_DIR, the embedded server's own, Debian's per-version, PATH."""
    embedded = _pgserver_bin()
    dirs = [settings.pg_bin_dir] if settings.pg_bin_dir else []
    if settings.embedded and embedded:
        dirs.append(embedded)
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"))  # Debian's, one folder per major version
    dirs += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    if not settings.embedded and embedded:
        dirs.append(embedded)
    return dirs


def find_tool(name: str, server_major: int, settings: Settings, at_least: int = 0) -> tuple[Path, int]:
    """The ``name`` binary (pg_dump, pg_restore) of the server's major version, else the oldest newer one."""
    found: dict[int, Path] = {}
    for d in _tool_dirs(settings):
        exe = d / name
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            continue
        try:
            out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30).stdout
            m = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
            if m:
                found.setdefault(int(m.group(1)), exe)
        except (OSError, subprocess.SubprocessError):
            continue
    usable = sorted(v for v in found if v >= max(server_major, at_least))
    if not usable:
        have = ", ".join(f"{found[v]} ({v})" for v in sorted(found)) or "none"
        raise BackupError(f"no {name} for PostgreSQL {max(server_major, at_least)} or newer (found: {have}); "
                          f"install the server's client tools or set PG_BIN_DIR")
    return found[usable[0]], usable[0]


def _pg_env(params: ConnParams) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=params.host, PGPORT=str(params.port), PGUSER=params.user, PGDATABASE=params.dbname,
               PGAPPNAME="medical_etl backup", PGCONNECT_TIMEOUT="10")
    if params.password:
        env["PGPASSWORD"] = params.password  # never on a command line
    return env


def run_tool(cmd: list[str], params: ConnParams, what: str) -> None:
    r = subprocess.run(cmd, env=_pg_env(params), capture_output=True, text=True)
    if r.returncode != 0:
        raise BackupError(f"{what} failed (exit {r.returncode}): {mask(r.stderr.strip())[-2000:]}")


# --- files ----------------------------------------------------------------------

def tree_files(root: Path) -> list[Path]:
    """Regular files under ``root`` (relative), resume points first; temporaries and links left out."""
    if not root.is_dir():
        return []
    rank = {name: i for i, name in enumerate(LAKE_ORDER)}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            p = Path(dirpath) / f
            if not f.startswith(".") and p.is_file() and not p.is_symlink():
                out.append(p.relative_to(root))
    return sorted(out, key=lambda rel: (rank.get(rel.parts[0], len(rank)), rel.as_posix()))


def _copy_lake(src: Path, dst: Path, previous: Path | None) -> dict:
    """Copy ``src`` to ``dst``; a file with the same size and mtime in ``previous`` is hard-linked from it."""
    stats = {"files": 0, "bytes": 0, "linked": 0, "copied": 0}
    for rel in tree_files(src):
        s, d = src / rel, dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = s.stat()
        except FileNotFoundError:  # replaced or removed since the listing
            continue
        old = previous / rel if previous else None
        if old is not None and old.is_file():
            ost = old.stat()
            if ost.st_size == st.st_size and ost.st_mtime_ns == st.st_mtime_ns:
                try:
                    os.link(old, d)
                except OSError:  # a file system without hard links (or at its link limit): copy
                    pass
                else:
                    stats["linked"] += 1
                    stats["files"] += 1
                    stats["bytes"] += st.st_size
                    continue
        try:
            shutil.copy2(s, d)  # reads one inode: an atomic rename meanwhile cannot tear the copy
        except FileNotFoundError:
            continue
        stats["copied"] += 1
        stats["files"] += 1
        stats["bytes"] += d.stat().st_size
    return stats


def _copy_logs(logs_path: Path, dst: Path) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    names = RunLog(logs_path).copy_to(dst)
    for extra in LOG_FILES:
        if (logs_path / extra).is_file():
            shutil.copy2(logs_path / extra, dst / extra)
            names.append(extra)
    return names


def make_private(root: Path) -> None:
    """Every folder under ``root`` (itself included) 0700, every file 0600; links are left alone."""
    os.chmod(root, DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, DIR_MODE if name in dirnames else FILE_MODE)


# --- backup ---------------------------------------------------------------------

def _manifest_time(folder: Path) -> datetime | None:
    """The ``created_at`` of a folder's manifest (a regular file, written last), or None."""
    m = folder / "manifest.json"
    try:
        if m.is_symlink() or not m.is_file():
            return None
        created = datetime.fromisoformat(json.loads(m.read_text(encoding="utf-8"))["created_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return created if created.tzinfo else created.replace(tzinfo=timezone.utc)


def list_backups(backup_path: str | Path) -> list[Path]:
    """Complete backups of ``backup_path``, oldest first by their manifest's time.

    A backup is a real folder (a link is never followed) named ``medical_etl-<time>`` whose manifest
    reads; anything else is skipped with a warning, and never deleted by pruning.
    """
    root = Path(backup_path)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.name.startswith("."):  # the lock, a backup being written
            continue
        if not _NAME.fullmatch(p.name):
            log.warning("backups: skipping %s: not a backup folder's name", p)
        elif p.is_symlink() or not p.is_dir():
            log.warning("backups: skipping %s: not a real folder (links are never followed)", p)
        elif (created := _manifest_time(p)) is None:
            log.warning("backups: skipping %s: no readable manifest.json (an incomplete backup)", p)
        else:
            found.append((created, p.name, p))
    return [p for _, _, p in sorted(found)]


def table_counts(cur) -> dict[str, int]:
    cur.execute("""SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN %s AND n.nspname NOT LIKE 'pg_temp%%'
                   ORDER BY 1, 2""", (SYSTEM_SCHEMAS,))
    counts = {}
    for schema, table in cur.fetchall():
        cur.execute(f'SELECT count(*) FROM "{schema}"."{table}"')
        counts[f"{schema}.{table}"] = cur.fetchone()[0]
    return counts


def backup(settings: Settings, *, backup_path: str | Path | None = None, keep: int | None = None) -> dict:
    """Write one backup to ``backup_path`` (BACKUP_PATH) and prune to the newest ``keep`` (BACKUP_KEEP)."""
    t0 = time.perf_counter()
    root = Path(backup_path or settings.backup_path)
    keep = keep or settings.backup_keep
    if not root.is_dir():
        root.mkdir(parents=True, mode=DIR_MODE)
        os.chmod(root, DIR_MODE)
    lock_fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"another backup is being written to {root}") from None
        for stale in root.glob(f".{PREFIX}*.partial"):  # left by a crashed backup (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        name, n = PREFIX + stamp, 1
        while (root / name).exists():
            name, n = f"{PREFIX}{stamp}-{n}", n + 1
        work = root / f".{name}.partial"
        work.mkdir(mode=DIR_MODE)
        previous = (list_backups(root) or [None])[-1]
        try:
            manifest = _write_backup(settings, work, previous)
            manifest.update(name=name, duration_s=round(time.perf_counter() - t0, 3))
            make_private(work)
            fd = os.open(work / "manifest.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(manifest, indent=1))
                f.flush()
                os.fsync(f.fileno())
            os.rename(work, root / name)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # no half backup left behind
            raise
        pruned = [p.name for p in list_backups(root)[:-keep]]
        for p in pruned:
            shutil.rmtree(root / p)
    finally:
        os.close(lock_fd)
    return {"status": "success", "backup": str(root / name), "tables": len(manifest["tables"]),
            "rows": sum(manifest["tables"].values()), "dump_bytes": manifest["database"]["bytes"],
            "lake": manifest["lake"], "logs": manifest["logs"], "pruned": pruned,
            "duration_s": round(time.perf_counter() - t0, 3)}


def _write_backup(settings: Settings, work: Path, previous: Path | None) -> dict:
    params = conn_params(settings)
    conn = connect(params)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            server_version = cur.fetchone()[0]
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
            pg_dump, tool_major = find_tool("pg_dump", major_version(server_version), settings)
            # pg_dump reads the snapshot this transaction exported: the counts below and the dump
            # see exactly the same committed batches.
            dump = work / "database.dump"
            run_tool([str(pg_dump), "--format=custom", "--compress=6", f"--snapshot={snapshot}",
                  f"--lock-wait-timeout={LOCK_WAIT_TIMEOUT}", "--no-password", f"--file={dump}", params.dbname],
                 params, "pg_dump")
            counts = table_counts(cur)
        conn.rollback()
    finally:
        conn.close()
    lake_stats = _copy_lake(settings.raw_data_path, work / "lake", previous / "lake" if previous else None)
    logs = _copy_logs(settings.logs_path, work / "logs")
    return {"format": 1, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "database": {"name": params.dbname, "server_version": server_version, "pg_dump_major": tool_major,
                         "embedded": settings.embedded, "bytes": dump.stat().st_size},
            "tables": counts, "lake": lake_stats, "logs": logs}


# --- restore --------------------------------------------------------------------
