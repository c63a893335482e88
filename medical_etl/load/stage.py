"""Stage 2, load: the JSON data lake -> ``raw`` tables in PostgreSQL, idempotent and validated.

Files are streamed in batches: each batch is COPY'd into a temporary staging
table and merged with one ``INSERT ... ON CONFLICT DO UPDATE`` that touches
only rows whose content changed, in one transaction together with the
batch's rejects and file bookkeeping (:mod:`.writer`). A crash at any point therefore leaves
each batch either fully loaded and recorded, or not at all. Records are validated by their
kind in the lake's record description (:mod:`.validate`); a bad one is quarantined with its reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import psycopg2.extensions

from medical_etl import lake
from medical_etl.db import ConnParams, analyze_if_stale, expect_params
from medical_etl.load.records import Batch, FileRow, FileRows, RejectRow, Totals, copy_line
from medical_etl.load.validate import (
    FUTURE_TOLERANCE,
    SURROGATE,
    NulCounter,
    Reject,
    clean_surrogates,
    validate,
)
from medical_etl.load.writer import BatchWriter, Loader
from medical_etl.migrate import migrate
from medical_etl.runlog import new_run_id

MAX_FILE_BYTES = 256 * 1024 * 1024  # one channel-day of posts is a few MB


def _read_file(rel: str, data: bytes, totals: Totals, run_id: str, new: bool,
               latest: datetime) -> FileRows:
    """Validate one file into a batch part: its rows as COPY lines, its rejects with reasons."""
    part = FileRows(rel, new)
    try:
        records = json.loads(data.decode("utf-8"))
        if not isinstance(records, list):
            raise ValueError(f"expected a JSON array of messages, got {type(records).__name__}")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        totals.files_rejected += 1
        part.rejects.append(RejectRow(rel, -1, f"invalid JSON file: {exc}"[:1000],
                                      data[:10000].decode("utf-8", "replace").replace("\x00", ""), run_id))
        return part
    nul = NulCounter()
    for pos, rec in enumerate(records):
        try:
            row = validate(rec, nul, latest)
        except Reject as exc:
            payload = clean_surrogates(json.dumps(rec, ensure_ascii=False).replace("\\u0000", ""))
            part.rejects.append(RejectRow(rel, pos, clean_surrogates(str(exc)), payload, run_id))
            part.retry_later |= exc.retry_later
            continue
        row.append(rel)
        row.append(pos)
        try:
            part.lines.append(copy_line(row))
        except UnicodeEncodeError:  # lone surrogates: rare, so only then are they looked for
            totals.surrogates_replaced += sum(len(SURROGATE.findall(v)) for v in row if type(v) is str)
            part.lines.append(copy_line([clean_surrogates(v) for v in row]))
    totals.rows_rejected += sum(r.position >= 0 for r in part.rejects)
    totals.nul_chars_stripped += nul.count
    return part


def load_raw_to_postgres(
    db: ConnParams | psycopg2.extensions.connection,
    lake_dir: str | Path,
    *,
    batch_rows: int = 5000,
    attempts: int = 4,
    backoff_s: float = 0.5,
    run_id: str | None = None,
    on_batch: Callable[[dict], None] | None = None,
) -> dict:
    """Load every message file of the lake into ``raw.telegram_messages``; return a summary.

    ``db`` is where to connect (ConnParams: the loader owns its connection and
    reconnects after a dropped connection) or an open psycopg2 connection. Migrations
    are applied first. Unchanged files (size and mtime, else content hash) are
    skipped. ``records_loaded`` = rows inserted + rows updated.
    """
    expect_params(db, "load_raw_to_postgres", connection_ok=True)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    t0 = time.perf_counter()
    lake_dir = Path(lake_dir)
    run_id = run_id or new_run_id()
    loader = Loader(db, run_id, attempts, backoff_s)
    try:
        if not loader.owns_conn:  # a connection of the caller's: its schema brought up to date too
            migrate(loader.conn)
        known = loader.known_files()
        totals = loader.totals
        latest = datetime.now(timezone.utc) + FUTURE_TOLERANCE
        paths = sorted((lake_dir / lake.MESSAGES_DIR).glob("*/*.json"))
        for _pass in range(4):  # then files whose duplicates must be decided again, rarely more than once
            _load_files(loader, lake_dir, paths, known, batch_rows, latest, on_batch, t0)
            if not loader.reread:
                break
            paths = [lake_dir / rel for rel in sorted(loader.reread)]
            loader.reread = set()
            known = loader.known_files()
        if loader.owns_conn and totals.rows_inserted + totals.rows_updated + totals.rows_deleted:
            # the transform selects the new rows by time and key: plans that need the table's statistics
            loader.reconnect()
            analyze_if_stale(loader.conn, ["raw.telegram_messages"])
        return _summary(totals, t0, run_id)
    finally:
        loader.close()


def _load_files(loader: Loader, lake_dir: Path, paths: list[Path], known: dict, batch_rows: int,
                latest: datetime, on_batch, t0: float) -> None:
    totals, run_id = loader.totals, loader.run_id
    # Parsing (this thread) overlaps with COPY and merge (the writer thread, which releases
    # the GIL while PostgreSQL works); at most two batches are in memory.
    writer = BatchWriter(loader, lambda: on_batch(_summary(totals, t0, run_id)) if on_batch else None)
    batch = Batch()
    for path in paths:
        rel = clean_surrogates(path.relative_to(lake_dir).as_posix())  # undecodable file names
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        prev = known.get(rel)
        if prev and prev.size_bytes == st.st_size and prev.mtime_ns == st.st_mtime_ns:
            totals.files_skipped += 1
            continue
        data, refusal = _read_lake_file(path, st)
        if refusal:
            totals.files_read += 1
            totals.files_rejected += 1
            part = FileRows(rel, prev is None, rejects=[RejectRow(rel, -1, refusal, None, run_id)])
            part.file_row = FileRow(rel, st.st_size, st.st_mtime_ns, "", 0, 0, "rejected", run_id)
            batch.parts.append(part)
            continue
        sha = hashlib.sha256(data).hexdigest()
        if prev and prev.size_bytes == st.st_size and prev.sha256 == sha:
            totals.files_skipped += 1
            batch.touched.append((rel, st.st_mtime_ns))
            continue
        totals.files_read += 1
        part = _read_file(rel, data, totals, run_id, prev is None, latest)
        status = "rejected" if part.rejects and part.rejects[0].position == -1 else "loaded"
        # A post refused as dated in the future becomes valid with time: read the file again next run.
        size = -1 if part.retry_later else st.st_size
        part.file_row = FileRow(rel, size, st.st_mtime_ns, sha, len(part.lines), len(part.rejects), status, run_id)
        batch.parts.append(part)
        batch.rows += len(part.lines)
        if batch.rows >= batch_rows:
            writer.put(batch)
            batch = Batch()
    writer.put(batch)
    writer.finish()


def _read_lake_file(path: Path, st) -> tuple[bytes | None, str | None]:
    """The file's bytes, or why it is refused: only regular files of bounded size are read
    (a symlink could point anywhere outside the lake, a FIFO or device would block or never end)."""
    if path.parent.is_symlink():
        return None, "refused: its day folder is a symbolic link; the loader reads only inside the lake"
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        return None, f"refused: {kind}; the loader reads only regular files inside the lake"
    if st.st_size > MAX_FILE_BYTES:
        return None, f"refused: {st.st_size:,} bytes, above the {MAX_FILE_BYTES:,}-byte cap for one lake file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return None, f"refused: cannot open: {exc.strerror}"
    with os.fdopen(fd, "rb") as fh:
        return fh.read(MAX_FILE_BYTES + 1), None


def _summary(t: Totals, t0: float, run_id: str) -> dict:
    return {
        "run_id": run_id,
        "files_read": t.files_read,
        "files_skipped": t.files_skipped,
        "files_rejected": t.files_rejected,
        "rows_inserted": t.rows_inserted,
        "rows_updated": t.rows_updated,
        "rows_unchanged": t.rows_unchanged,
        "rows_rejected": t.rows_rejected,
        "rows_duplicate": t.rows_duplicate,
        "rows_deleted": t.rows_deleted,
        "rows_refused_by_db": t.rows_refused_by_db,
        "surrogates_replaced": t.surrogates_replaced,
        "records_loaded": t.rows_inserted + t.rows_updated,
        "nul_chars_stripped": t.nul_chars_stripped,
        "batches": t.batches,
        "retries": t.retries,
        "duration_s": round(time.perf_counter() - t0, 3),
    }
