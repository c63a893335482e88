"""Restore a backup (:mod:`.backup`) into the configured database and folders, leaving what existed
exactly as it was when anything fails: the live schemas and folders are moved aside first and put
back on failure, removed only after the restored copy is verified.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from medical_etl.config import Settings
from medical_etl.db import ConnParams, conn_params, connect
from medical_etl.ops.backup import (
    ASIDE_SCHEMA,
    LOG_FILES,
    SYSTEM_SCHEMAS,
    BackupError,
    RestoreRefused,
    find_tool,
    list_backups,
    major_version,
    run_tool,
    table_counts,
    tree_files,
)
from medical_etl.runlog import RunLog

log = logging.getLogger(__name__)


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
    run_tool([str(pg_restore), "--file=/dev/null", str(dump)], params, f"backup {src.name}: reading database.dump")
    have = len(tree_files(src / "lake"))
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
            server_major = major_version(cur.fetchone()[0])
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
                run_tool([str(pg_restore), "--no-owner", "--no-privileges", "--exit-on-error",
                      "--single-transaction", "--no-password", f"--dbname={params.dbname}",
                      str(src / "database.dump")], params, "pg_restore")
                _restore_files(src / "lake", settings.raw_data_path, written)
                _restore_files(src / "logs", settings.logs_path, written)
                counts = table_counts(cur)
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
    for rel in tree_files(src):
        d = dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.with_name(f".{d.name}.restore")
        shutil.copy2(src / rel, tmp)
        written.append(d)
        os.replace(tmp, d)

