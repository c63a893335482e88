"""Backup and restore: the database (pg_dump custom format), the data lake and the run log.

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

def _major(version_text: str) -> int:
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


def _run(cmd: list[str], params: ConnParams, what: str) -> None:
    r = subprocess.run(cmd, env=_pg_env(params), capture_output=True, text=True)
    if r.returncode != 0:
        raise BackupError(f"{what} failed (exit {r.returncode}): {mask(r.stderr.strip())[-2000:]}")


# --- files ----------------------------------------------------------------------

def _files(root: Path) -> list[Path]:
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
    for rel in _files(src):
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


def _make_private(root: Path) -> None:
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


def _table_counts(cur) -> dict[str, int]:
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
            _make_private(work)
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
            pg_dump, tool_major = find_tool("pg_dump", _major(server_version), settings)
            # pg_dump reads the snapshot this transaction exported: the counts below and the dump
            # see exactly the same committed batches.
            dump = work / "database.dump"
            _run([str(pg_dump), "--format=custom", "--compress=6", f"--snapshot={snapshot}",
                  f"--lock-wait-timeout={LOCK_WAIT_TIMEOUT}", "--no-password", f"--file={dump}", params.dbname],
                 params, "pg_dump")
            counts = _table_counts(cur)
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

def resolve_backup(name: str, settings: Settings) -> Path:
    """A backup of BACKUP_PATH by folder name, or ``latest``; nothing outside BACKUP_PATH is read."""
    root = settings.backup_path.resolve()
    backups = list_backups(root)
    if name == "latest":
        if not backups:
            raise BackupError(f"no backup in {root}")
        return backups[-1]
    path = Path(os.path.abspath(name if Path(name).is_absolute() else root / name))  # links not followed
    if path not in backups:
        raise BackupError(f"{name!r} is not a backup in BACKUP_PATH={root} "
                          f"(backups: {', '.join(b.name for b in backups) or 'none'})")
    return path


def _user_tables(cur) -> int:
    cur.execute("""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname NOT IN %s
                   AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast%%'""", (SYSTEM_SCHEMAS,))
    return cur.fetchone()[0]


def _user_schemas(cur) -> list[str]:
    cur.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT IN %s AND nspname NOT LIKE 'pg_%%' "
                "ORDER BY 1", (SYSTEM_SCHEMAS,))
    return [r[0] for r in cur.fetchall()]


def _nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def verify_backup(src: Path, settings: Settings, params: ConnParams, server_major: int) -> tuple[dict, Path]:
    """Prove a backup whole without touching anything live; its manifest and the pg_restore to use.

    The manifest must read and name its parts; the dump must have the size the manifest recorded
    and pg_restore must read it to its end (its table of contents and every data block, written to
    /dev/null); the lake and log copies must hold the files the manifest counted.
    """
    try:
        manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
        dump_bytes = int(manifest["database"]["bytes"])
        dump_major = int(manifest["database"]["pg_dump_major"])
        tables = {str(t): int(n) for t, n in manifest["tables"].items()}
        lake_files = int(manifest["lake"]["files"])
        log_files = [str(f) for f in manifest["logs"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"backup {src.name}: manifest.json is unreadable or incomplete ({exc!r})") from None
    dump = src / "database.dump"
    size = dump.stat().st_size if dump.is_file() and not dump.is_symlink() else None
    if size != dump_bytes:
        raise BackupError(f"backup {src.name}: database.dump is {size if size is not None else 'missing'}"
                          f"{' bytes' if size is not None else ''}, the manifest recorded {dump_bytes} bytes")
    pg_restore, _ = find_tool("pg_restore", server_major, settings, at_least=dump_major)
    _run([str(pg_restore), "--file=/dev/null", str(dump)], params, f"backup {src.name}: reading database.dump")
    have = len(_files(src / "lake"))
    if have != lake_files:
        raise BackupError(f"backup {src.name}: lake/ holds {have} files, the manifest counted {lake_files}")
    missing = [f for f in log_files if not (src / "logs" / f).is_file()]
    if missing:
        raise BackupError(f"backup {src.name}: logs/ lacks {', '.join(missing)}")
    return {**manifest, "tables": tables}, pg_restore


def restore(settings: Settings, backup_dir: str | Path, *, force: bool = False) -> dict:
    """Restore a backup into the configured database, lake (RAW_DATA_PATH) and run log (LOGS_PATH).

    The backup is proved whole first (:func:`verify_backup`); nothing live is touched before. Refuses
    (:class:`RestoreRefused`) when the database holds tables, the lake holds files or the run log
    holds records, unless ``force``: then the database's schemas are renamed aside and the lake and
    run log are moved aside (``<folder>.before-restore-<time>``). If the restore then fails at any
    point, everything is put back as it was; on success the renamed schemas are dropped and the old
    lake and run log stay aside.
    """
    t0 = time.perf_counter()
    src = Path(backup_dir)
    params = conn_params(settings)
    conn = connect(params)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            server_major = _major(cur.fetchone()[0])
            manifest, pg_restore = verify_backup(src, settings, params, server_major)
            busy = []
            if _user_tables(cur):
                busy.append(f"database {params.dbname} has tables")
            if _nonempty_dir(settings.raw_data_path):
                busy.append(f"lake {settings.raw_data_path} is not empty")
            if RunLog(settings.logs_path).segments():
                busy.append(f"run log in {settings.logs_path} is not empty")
            if busy and not force:
                raise RestoreRefused("refusing to overwrite: " + "; ".join(busy) + " (use --force)")
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            aside = _schemas_aside(cur, stamp) if force else {}
            moved, written = (_move_aside(settings, stamp) if force else {}), []
            existing = _user_schemas(cur)
            try:
                _run([str(pg_restore), "--no-owner", "--no-privileges", "--exit-on-error",
                      "--single-transaction", "--no-password", f"--dbname={params.dbname}",
                      str(src / "database.dump")], params, "pg_restore")
                _restore_files(src / "lake", settings.raw_data_path, written)
                _restore_files(src / "logs", settings.logs_path, written)
                counts = _table_counts(cur)
                mismatched = {t: (n, counts.get(t)) for t, n in manifest["tables"].items() if counts.get(t) != n}
                if mismatched:
                    raise BackupError(f"restored row counts differ from the backup's: {mismatched}")
            except BaseException:
                _put_back(conn, params, existing, aside, moved, written, settings)
                raise
            for old in aside.values():
                cur.execute(f'DROP SCHEMA "{old}" CASCADE')
    finally:
        conn.close()
    return {"status": "success", "backup": str(src), "tables": len(counts), "rows": sum(counts.values()),
            "lake_files": sum(1 for p in written if p.is_relative_to(settings.raw_data_path)),
            "log_files": sum(1 for p in written if p.is_relative_to(settings.logs_path)),
            "moved_aside": moved, "duration_s": round(time.perf_counter() - t0, 3)}


def _schemas_aside(cur, stamp: str) -> dict[str, str]:
    """Rename every user schema aside (one transaction); an empty ``public`` takes its place."""
    aside = {}
    cur.execute("BEGIN")
    for schema in _user_schemas(cur):
        old = ASIDE_SCHEMA.format(stamp=stamp, schema=schema)[:63]
        cur.execute(f'ALTER SCHEMA "{schema}" RENAME TO "{old}"')
        aside[schema] = old
    cur.execute("CREATE SCHEMA public")
    cur.execute("COMMIT")
    return aside


def _put_back(conn, params: ConnParams, existing: list[str], aside: dict[str, str], moved: dict,
              written: list[Path], settings: Settings) -> None:
    """Undo a failed restore: the schemas, lake and run log as they were before it.

    Every schema the restore may have filled is dropped, the renamed ones get their names back, and
    the schemas that existed (empty) before a restore without ``force`` are created again.
    """
    try:
        if conn.closed:  # the server went away mid-restore: a new session puts the schemas back
            conn = connect(params)
        conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            for schema in _user_schemas(cur):
                if schema not in aside.values():
                    cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
            for schema, old in aside.items():
                cur.execute(f'ALTER SCHEMA "{old}" RENAME TO "{schema}"')
            for schema in set(existing) - set(aside.values()) - set(aside):
                cur.execute(f'CREATE SCHEMA "{schema}"')
            cur.execute("COMMIT")
    except Exception:  # noqa: BLE001 - the files are still put back; the caller raises the first failure
        log.exception("restore failed and the schemas could not be put back: rename these back by hand "
                      "(ALTER SCHEMA <aside> RENAME TO <name>): %s", aside)
    for p in written:
        p.unlink(missing_ok=True)
    if "lake" in moved:
        shutil.rmtree(settings.raw_data_path)
        os.rename(moved["lake"], settings.raw_data_path)
    if "logs" in moved:
        for p in Path(moved["logs"]).iterdir():
            os.rename(p, settings.logs_path / p.name)
        Path(moved["logs"]).rmdir()


def _move_aside(settings: Settings, stamp: str) -> dict:
    moved = {}
    raw = settings.raw_data_path
    if _nonempty_dir(raw):
        aside = raw.with_name(f"{raw.name}.before-restore-{stamp}")
        os.rename(raw, aside)
        raw.mkdir(parents=True)
        moved["lake"] = str(aside)
    segments = RunLog(settings.logs_path).segments()
    extra = [settings.logs_path / f for f in LOG_FILES if (settings.logs_path / f).is_file()]
    if segments or extra:
        aside = settings.logs_path / f"before-restore-{stamp}"
        aside.mkdir(parents=True)
        for p in segments + extra:
            os.rename(p, aside / p.name)
        moved["logs"] = str(aside)
    return moved


def _restore_files(src: Path, dst: Path, written: list[Path]) -> None:
    """Copy every file (contents and mtime: the loader then sees the lake as already loaded) into ``written``."""
    for rel in _files(src):
        d = dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.with_name(f".{d.name}.restore")
        shutil.copy2(src / rel, tmp)
        written.append(d)
        os.replace(tmp, d)

