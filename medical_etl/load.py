"""Stage 2, load: the JSON data lake -> ``raw`` tables in PostgreSQL, idempotent and validated.

Files are streamed in batches: each batch is COPY'd into a temporary staging
table and merged with one ``INSERT ... ON CONFLICT DO UPDATE`` that touches
only rows whose content changed, in one transaction together with the
batch's rejects and file bookkeeping. A crash at any point therefore leaves
each batch either fully loaded and recorded, or not at all.
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extras import execute_values
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from . import lake
from .db import ConnParams, connect
from .migrate import migrate
from .runlog import new_run_id

log = logging.getLogger(__name__)

# (table column, lake field, kind)
FIELDS = [
    ("channel", "channel_username", "channel"),
    ("message_id", "message_id", "id"),
    ("channel_title", "channel_title", "str?"),
    ("channel_id", "channel_id", "int?"),
    ("message_date", "date", "ts"),
    ("message_text", "text", "text"),
    ("views", "views", "count?"),
    ("forwards", "forwards", "count?"),
    ("replies", "replies", "count?"),
    ("edit_date", "edit_date", "ts?"),
    ("grouped_id", "grouped_id", "int?"),
    ("reply_to_msg_id", "reply_to_msg_id", "int?"),
    ("media_type", "media_type", "str?"),
    ("media_status", "media_status", "str?"),
    ("forward_from_id", "forward_from_id", "int?"),
    ("forward_from_name", "forward_from_name", "str?"),
    ("image_path", "image_path", "str?"),
    ("scraped_at", "scraped_at", "ts?"),
]
COLUMNS = [c for c, _, _ in FIELDS] + ["source_file"]
REQUIRED = [f for _, f, kind in FIELDS if not kind.endswith("?")]
# Columns whose change makes an update (scraped_at and source_file alone do not).
COMPARED = [c for c, _, _ in FIELDS if c not in ("channel", "message_id", "scraped_at")]
_CHANNEL = re.compile(r"[A-Za-z][A-Za-z0-9_]{3,31}")


class Reject(ValueError):
    """A record that fails validation; the message is the reason stored in raw.load_rejects."""


class LoadError(RuntimeError):
    """A permanent database error: the stage fails and the batch's bookkeeping is not advanced."""


def _parse_ts(value, name: str) -> str:
    if not isinstance(value, str):
        raise Reject(f"{name}: expected an ISO 8601 date string, got {type(value).__name__}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise Reject(f"{name}: unparsable date {value[:40]!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.isoformat()


def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Reject(f"{name}: expected an integer, got {type(value).__name__}")
    return value


class _NulCounter:
    def __init__(self):
        self.count = 0

    def clean(self, s: str) -> str:
        if "\x00" in s:
            self.count += s.count("\x00")
            s = s.replace("\x00", "")
        return s


def validate(rec, nul: _NulCounter) -> list:
    """Return the row values in FIELDS order, or raise :class:`Reject` with the reason."""
    if not isinstance(rec, dict):
        raise Reject(f"expected a JSON object, got {type(rec).__name__}")
    missing = [f for f in REQUIRED if f not in rec]
    if missing:
        raise Reject(f"missing key {missing[0]!r}")
    row = []
    for _, name, kind in FIELDS:
        v = rec.get(name)
        if v is None:
            if not kind.endswith("?") and kind != "text":
                raise Reject(f"{name}: must not be null")
            row.append("" if kind == "text" else None)
            continue
        base = kind.rstrip("?")
        if base == "channel":
            if not isinstance(v, str) or not _CHANNEL.fullmatch(v):
                raise Reject(f"{name}: not a valid channel username: {str(v)[:40]!r}")
        elif base == "id":
            v = _int(v, name)
            if v <= 0:
                raise Reject(f"{name}: must be positive, got {v}")
        elif base == "int":
            v = _int(v, name)
        elif base == "count":
            v = _int(v, name)
            if v < 0:
                raise Reject(f"{name}: negative count ({v})")
        elif base == "ts":
            v = _parse_ts(v, name)
        elif base in ("str", "text"):
            if not isinstance(v, str):
                raise Reject(f"{name}: expected a string, got {type(v).__name__}")
            v = nul.clean(v)
        row.append(v)
    return row


def _copy_line(values) -> bytes:
    """One row in COPY text format. (str.translate is ~4x slower here on long non-ASCII text.)"""
    out = []
    for v in values:
        if v is None:
            out.append("\\N")
        elif type(v) is str:
            if "\\" in v:
                v = v.replace("\\", "\\\\")
            if "\t" in v:
                v = v.replace("\t", "\\t")
            if "\n" in v:
                v = v.replace("\n", "\\n")
            if "\r" in v:
                v = v.replace("\r", "\\r")
            out.append(v)
        else:
            out.append(str(v))
    return ("\t".join(out) + "\n").encode("utf-8")


@dataclass
class _Batch:
    lines: list[bytes] = field(default_factory=list)      # rows of files seen before: merged
    new_lines: list[bytes] = field(default_factory=list)  # rows of files never loaded: COPY'd directly
    rows: int = 0
    files: list[tuple] = field(default_factory=list)     # loaded_files rows
    rejects: list[tuple] = field(default_factory=list)   # load_rejects rows
    touched: list[tuple] = field(default_factory=list)   # (source_file, mtime_ns): content unchanged


@dataclass
class _Totals:
    files_read: int = 0
    files_skipped: int = 0
    files_rejected: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_rejected: int = 0
    nul_chars_stripped: int = 0
    batches: int = 0
    retries: int = 0


_STAGE_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS _stage_messages (
    seq bigserial,
    {", ".join(f"{c} {t}" for c, t in [
        ("channel", "text"), ("message_id", "bigint"), ("channel_title", "text"), ("channel_id", "bigint"),
        ("message_date", "timestamptz"), ("message_text", "text"), ("views", "bigint"),
        ("forwards", "bigint"), ("replies", "bigint"), ("edit_date", "timestamptz"),
        ("grouped_id", "bigint"), ("reply_to_msg_id", "bigint"), ("media_type", "text"),
        ("media_status", "text"), ("forward_from_id", "bigint"), ("forward_from_name", "text"),
        ("image_path", "text"), ("scraped_at", "timestamptz"), ("source_file", "text")])}
) ON COMMIT DELETE ROWS;
-- The staging copy is read once: storing it uncompressed saves a compress/decompress round.
ALTER TABLE _stage_messages ALTER COLUMN message_text SET STORAGE EXTERNAL;
"""

_cols = ", ".join(COLUMNS)
_UPSERT = f"""
WITH up AS (
    INSERT INTO raw.telegram_messages AS t ({_cols})
    SELECT DISTINCT ON (channel, message_id) {_cols}
    FROM _stage_messages ORDER BY channel, message_id, seq DESC
    ON CONFLICT (channel, message_id) DO UPDATE SET
        {", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c not in ("channel", "message_id"))},
        updated_at = now()
    WHERE ({", ".join(f"t.{c}" for c in COMPARED)}) IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in COMPARED)})
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted),
       (SELECT count(DISTINCT (channel, message_id)) FROM _stage_messages)
FROM up
"""


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.errors.SerializationFailure,
                            psycopg2.errors.DeadlockDetected, psycopg2.InterfaceError))


class _Loader:
    def __init__(self, db, run_id: str, attempts: int, backoff_s: float):
        self.db, self.run_id, self.attempts, self.backoff_s = db, run_id, attempts, backoff_s
        self.owns_conn = not isinstance(db, psycopg2.extensions.connection)
        self.conn = connect(db) if self.owns_conn else db
        self.totals = _Totals()

    def close(self):
        if self.owns_conn and not self.conn.closed:
            self.conn.close()

    def _reconnect(self):
        if self.conn.closed and self.owns_conn:
            self.conn = connect(self.db)

    def known_files(self) -> dict[str, tuple]:
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT source_file, size_bytes, mtime_ns, sha256 FROM raw.loaded_files")
            return {r[0]: r[1:] for r in cur.fetchall()}

    def flush(self, batch: _Batch) -> None:
        if not (batch.files or batch.touched):
            return

        def before_sleep(rs):
            self.totals.retries += 1
            log.warning("load batch failed (attempt %d), retrying: %s", rs.attempt_number,
                        str(rs.outcome.exception()).strip())
            try:
                self.conn.rollback()
            except psycopg2.Error:
                pass
            self._reconnect()

        try:
            for attempt in Retrying(retry=retry_if_exception(_transient),
                                    stop=stop_after_attempt(self.attempts),
                                    wait=wait_exponential(multiplier=self.backoff_s, max=10),
                                    before_sleep=before_sleep, reraise=True):
                with attempt:
                    self._write(batch)
        except psycopg2.Error as exc:
            try:
                self.conn.rollback()
            except psycopg2.Error:
                pass
            names = ", ".join(f[0] for f in batch.files[:3]) + (" ..." if len(batch.files) > 3 else "")
            raise LoadError(f"loading {len(batch.files)} file(s) ({names}) failed: "
                            f"{type(exc).__name__}: {str(exc).strip()}") from exc
        self.totals.batches += 1

    def _write(self, batch: _Batch) -> None:
        with self.conn:  # one transaction: rows, rejects and bookkeeping together
            with self.conn.cursor() as cur:
                inserted, updated, distinct = _write_rows(cur, batch)
                loaded = [f[0] for f in batch.files]
                if loaded:
                    cur.execute("DELETE FROM raw.load_rejects WHERE source_file = ANY(%s)", (loaded,))
                if batch.rejects:
                    execute_values(cur, """INSERT INTO raw.load_rejects
                        (source_file, position, reason, payload, run_id) VALUES %s""", batch.rejects)
                if batch.files:
                    execute_values(cur, """INSERT INTO raw.loaded_files (source_file, size_bytes, mtime_ns,
                            sha256, rows_valid, rows_rejected, status, run_id) VALUES %s
                        ON CONFLICT (source_file) DO UPDATE SET size_bytes = EXCLUDED.size_bytes,
                            mtime_ns = EXCLUDED.mtime_ns, sha256 = EXCLUDED.sha256,
                            rows_valid = EXCLUDED.rows_valid, rows_rejected = EXCLUDED.rows_rejected,
                            status = EXCLUDED.status, run_id = EXCLUDED.run_id, loaded_at = now()""",
                                   batch.files)
                if batch.touched:
                    execute_values(cur, """UPDATE raw.loaded_files f SET mtime_ns = v.mtime
                        FROM (VALUES %s) AS v(source_file, mtime) WHERE f.source_file = v.source_file""",
                                   batch.touched)
        t = self.totals
        t.rows_inserted += inserted
        t.rows_updated += updated
        t.rows_unchanged += distinct - inserted - updated


class _LinesReader:
    """File-like view over a list of COPY lines, so a batch is never joined into one big copy."""

    def __init__(self, lines: list[bytes]):
        self.lines, self.pos = lines, 0

    def read(self, size: int = -1) -> bytes:
        chunk, n = [], 0
        while self.pos < len(self.lines) and (size < 0 or n < size):
            chunk.append(self.lines[self.pos])
            n += len(self.lines[self.pos])
            self.pos += 1
        return b"".join(chunk)

    readline = read


def _write_rows(cur, batch: _Batch) -> tuple[int, int, int]:
    """Write the batch's rows; return (inserted, updated, distinct keys seen)."""
    inserted = updated = distinct = 0
    merge = batch.lines
    if batch.new_lines:
        # Rows of never-loaded files cannot be in the table (rows and bookkeeping commit
        # together), so they go straight in; any key conflict falls back to the merge.
        cur.execute("SAVEPOINT direct_copy")
        try:
            cur.copy_expert(f"COPY raw.telegram_messages ({_cols}) FROM STDIN", _LinesReader(batch.new_lines))
            inserted = distinct = len(batch.new_lines)
        except psycopg2.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT direct_copy")
            merge = batch.lines + batch.new_lines
        cur.execute("RELEASE SAVEPOINT direct_copy")
    if merge:
        cur.execute(_STAGE_DDL)
        cur.copy_expert(f"COPY _stage_messages ({_cols}) FROM STDIN", _LinesReader(merge))
        i, u, d = _upsert(cur)
        inserted, updated, distinct = inserted + i, updated + u, distinct + d
    return inserted, updated, distinct


def _upsert(cur) -> tuple[int, int, int]:
    cur.execute(_UPSERT)
    return cur.fetchone()


def _read_file(rel: str, data: bytes, batch: _Batch, totals: _Totals, run_id: str, new: bool) -> tuple:
    """Validate one file into the batch; return (valid rows, rejected rows, file status)."""
    try:
        records = json.loads(data.decode("utf-8"))
        if not isinstance(records, list):
            raise ValueError(f"expected a JSON array of messages, got {type(records).__name__}")
    except (ValueError, UnicodeDecodeError) as exc:
        totals.files_rejected += 1
        batch.rejects.append((rel, -1, f"invalid JSON file: {exc}"[:1000],
                              data[:10000].decode("utf-8", "replace").replace("\x00", ""), run_id))
        return (0, 0, "rejected")
    nul = _NulCounter()
    valid = rejected = 0
    out = batch.new_lines if new else batch.lines
    for pos, rec in enumerate(records):
        try:
            row = validate(rec, nul)
        except Reject as exc:
            rejected += 1
            payload = json.dumps(rec, ensure_ascii=False).replace("\\u0000", "")
            batch.rejects.append((rel, pos, str(exc), payload, run_id))
            continue
        row.append(rel)
        out.append(_copy_line(row))
        valid += 1
    batch.rows += valid
    totals.rows_rejected += rejected
    totals.nul_chars_stripped += nul.count
    return (valid, rejected, "loaded")


def load_raw_to_postgres(
    db: psycopg2.extensions.connection | ConnParams | object,
    lake_dir: str | Path,
    *,
    batch_rows: int = 5000,
    attempts: int = 4,
    backoff_s: float = 0.5,
    run_id: str | None = None,
    on_batch: Callable[[dict], None] | None = None,
) -> dict:
    """Load every message file of the lake into ``raw.telegram_messages``; return a summary.

    ``db`` is a psycopg2 connection, or Settings / ConnParams (then the loader
    owns its connection and reconnects after a dropped connection). Migrations
    are applied first. Unchanged files (size and mtime, else content hash) are
    skipped. ``records_loaded`` = rows inserted + rows updated.
    """
    t0 = time.perf_counter()
    lake_dir = Path(lake_dir)
    run_id = run_id or new_run_id()
    loader = _Loader(db, run_id, attempts, backoff_s)
    try:
        migrate(loader.conn)
        known = loader.known_files()
        totals = loader.totals
        # Parsing (this thread) overlaps with COPY and merge (the writer thread, which releases
        # the GIL while PostgreSQL works); at most two batches are in memory.
        writer = _Writer(loader, lambda: on_batch(_summary(totals, t0, run_id)) if on_batch else None)
        batch = _Batch()
        for path in sorted((lake_dir / lake.MESSAGES_DIR).glob("*/*.json")):
            rel = path.relative_to(lake_dir).as_posix()
            st = path.stat()
            prev = known.get(rel)
            if prev and prev[0] == st.st_size and prev[1] == st.st_mtime_ns:
                totals.files_skipped += 1
                continue
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if prev and prev[0] == st.st_size and prev[2] == sha:
                totals.files_skipped += 1
                batch.touched.append((rel, st.st_mtime_ns))
                continue
            totals.files_read += 1
            valid, rejected, status = _read_file(rel, data, batch, totals, run_id, new=prev is None)
            batch.files.append((rel, st.st_size, st.st_mtime_ns, sha, valid, rejected, status, run_id))
            if batch.rows >= batch_rows:
                writer.put(batch)
                batch = _Batch()
        writer.put(batch)
        writer.finish()
        return _summary(totals, t0, run_id)
    finally:
        loader.close()


class _Writer:
    """A thread writing batches in order; its first error is re-raised in the caller."""

    def __init__(self, loader: _Loader, after_batch: Callable[[], None]):
        self.loader, self.after_batch = loader, after_batch
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="load-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.loader.flush(batch)
                    self.after_batch()
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    self.error = exc

    def put(self, batch: _Batch) -> None:
        if self.error is not None:
            self.finish()
        self.queue.put(batch)

    def finish(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


def _summary(t: _Totals, t0: float, run_id: str) -> dict:
    return {
        "run_id": run_id,
        "files_read": t.files_read,
        "files_skipped": t.files_skipped,
        "files_rejected": t.files_rejected,
        "rows_inserted": t.rows_inserted,
        "rows_updated": t.rows_updated,
        "rows_unchanged": t.rows_unchanged,
        "rows_rejected": t.rows_rejected,
        "records_loaded": t.rows_inserted + t.rows_updated,
        "nul_chars_stripped": t.nul_chars_stripped,
        "batches": t.batches,
        "retries": t.retries,
        "duration_s": round(time.perf_counter() - t0, 3),
    }
