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
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extras import execute_values
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from medical_etl import lake
from medical_etl.db import ConnParams, analyze_if_stale, connect, connect_warehouse, expect_params
from medical_etl.errors import PermanentError
from medical_etl.migrate import migrate
from medical_etl.runlog import new_run_id

log = logging.getLogger(__name__)

# (table column, lake field, kind), from the lake's record contract
FIELDS = [(f.column, f.name, f.kind) for f in lake.RECORD]
COLUMNS = [c for c, _, _ in FIELDS] + ["source_file", "source_position"]
REQUIRED = [f for _, f, kind in FIELDS if not kind.endswith("?")]
# Columns whose change makes an update (a fresh scraped_at alone does not).
COMPARED = [c for c in COLUMNS if c not in ("channel", "message_id", "scraped_at")]
# Telegram numbers messages and counts views with 32-bit integers; channel and album ids are 64-bit.
INT32_MAX = 2**31 - 1
INT64 = (-(2**63), 2**63 - 1)
# No post predates Telegram; none may be dated after the load (beyond the clock-skew allowance
# that the dbt test assert_no_future_posts also grants: var future_tolerance_minutes).
TELEGRAM_EPOCH = datetime(2013, 8, 14, tzinfo=timezone.utc)
FUTURE_TOLERANCE = timedelta(minutes=60)
MAX_FILE_BYTES = 256 * 1024 * 1024  # one channel-day of posts is a few MB
_SURROGATE = re.compile(r"[\ud800-\udfff]")
ENUMS = {"media_status": set(lake.MEDIA_STATUSES)}


class Reject(ValueError):
    """A record that fails validation; the message is the reason stored in raw.load_rejects."""


class LoadError(PermanentError):
    """A permanent database error: the stage fails and the batch's bookkeeping is not advanced."""


def _parse_ts(value, name: str, latest: datetime | None = None) -> str:
    if not isinstance(value, str):
        raise Reject(f"{name}: expected an ISO 8601 date string, got {type(value).__name__}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise Reject(f"{name}: unparsable date {value[:40]!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    if latest is not None:
        if dt > latest:
            raise Reject(f"{name}: {dt.isoformat()} is in the future (more than "
                         f"{FUTURE_TOLERANCE.total_seconds() / 60:g} min after the load)")
        if dt < TELEGRAM_EPOCH:
            raise Reject(f"{name}: {dt.isoformat()} predates Telegram channels ({TELEGRAM_EPOCH.date()})")
    return dt.isoformat()


def _int(value, name: str, lo: int = INT64[0], hi: int = INT64[1]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Reject(f"{name}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise Reject(f"{name}: {str(value)[:30]} is out of range ({lo} to {hi})")
    return value


def check_image_path(value: str) -> str:
    """A lake record's photo path: relative, POSIX, under images/, no way out of the lake."""
    parts = value.split("/")
    if (not value.startswith(lake.IMAGES_DIR + "/") or "\\" in value or "\x00" in value
            or any(p in ("", ".", "..") for p in parts) or len(parts) < 3):
        raise Reject(f"image_path: {value[:80]!r} is not a path under the lake's {lake.IMAGES_DIR}/ folder")
    return value


def _clean_surrogates(value):
    """Lone UTF-16 surrogates (valid JSON, e.g. half an emoji) cannot be stored: replace each with U+FFFD."""
    return _SURROGATE.sub("\ufffd", value) if type(value) is str else value


class _NulCounter:
    def __init__(self):
        self.count = 0

    def clean(self, s: str) -> str:
        if "\x00" in s:
            self.count += s.count("\x00")
            s = s.replace("\x00", "")
        return s


def validate(rec, nul: _NulCounter, latest: datetime | None = None) -> list:
    """Return the row values in FIELDS order, or raise :class:`Reject` with the reason.

    ``latest`` is the newest acceptable post date (the load's start plus the clock-skew allowance)."""
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
            if not lake.is_channel_name(v):
                raise Reject(f"{name}: not a valid channel username: {str(v)[:40]!r}")
        elif base == "id":
            v = _int(v, name)
            if v <= 0:
                raise Reject(f"{name}: must be positive, got {v}")
            if v > INT32_MAX:
                raise Reject(f"{name}: {v} is out of range (Telegram message ids are below 2^31)")
        elif base == "int":
            v = _int(v, name)
        elif base == "count":
            v = _int(v, name)
            if v < 0:
                raise Reject(f"{name}: negative count ({v})")
            if v > INT32_MAX:
                raise Reject(f"{name}: {v} is out of range (Telegram counts are below 2^31)")
        elif base == "ts":
            v = _parse_ts(v, name, latest if name in ("date", "edit_date", "scraped_at") else None)
        elif base in ENUMS:
            if v not in ENUMS[base]:
                raise Reject(f"{name}: {str(v)[:40]!r} is not one of {sorted(ENUMS[base])}")
        elif base in ("str", "text", "path"):
            if not isinstance(v, str):
                raise Reject(f"{name}: expected a string, got {type(v).__name__}")
            v = nul.clean(v)
            if base == "path":
                v = check_image_path(v)
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
class _FileRows:
    """One lake file's part of a batch: its rows (COPY lines), rejects and bookkeeping row."""
    rel: str
    new: bool                      # never loaded before: its rows may be COPY'd directly
    lines: list[bytes] = field(default_factory=list)
    rejects: list[tuple] = field(default_factory=list)
    file_row: tuple | None = None  # loaded_files row


@dataclass
class _Batch:
    parts: list[_FileRows] = field(default_factory=list)
    rows: int = 0
    touched: list[tuple] = field(default_factory=list)   # (source_file, mtime_ns): content unchanged

    @property
    def lines(self) -> list[bytes]:      # rows of files seen before: merged
        return [ln for p in self.parts if not p.new for ln in p.lines]

    @property
    def new_lines(self) -> list[bytes]:  # rows of files never loaded: COPY'd directly
        return [ln for p in self.parts if p.new for ln in p.lines]

    @property
    def files(self) -> list[tuple]:
        return [p.file_row for p in self.parts if p.file_row]

    @property
    def rejects(self) -> list[tuple]:
        return [r for p in self.parts for r in p.rejects]


@dataclass
class _Totals:
    files_read: int = 0
    files_skipped: int = 0
    files_rejected: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_rejected: int = 0
    rows_duplicate: int = 0
    rows_deleted: int = 0
    rows_refused_by_db: int = 0
    nul_chars_stripped: int = 0
    surrogates_replaced: int = 0
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
        ("image_path", "text"), ("scraped_at", "timestamptz"), ("source_file", "text"),
        ("source_position", "integer")])}
) ON COMMIT DELETE ROWS;
-- The staging copy is read once: storing it uncompressed saves a compress/decompress round.
ALTER TABLE _stage_messages ALTER COLUMN message_text SET STORAGE EXTERNAL;
"""

_cols = ", ".join(COLUMNS)
# Which copy of a (channel, message_id) wins, whatever order files are loaded in: the newest
# scraped_at, then the greater file path, then the later position in the file.
_PRECEDENCE = "scraped_at DESC NULLS LAST, source_file DESC, source_position DESC"
# Rows now stored elsewhere than where a staged or previously stored copy came from: the losers.
_PREVIOUS = """
CREATE TEMP TABLE _previous ON COMMIT DROP AS
SELECT t.channel, t.message_id, t.source_file, t.source_position, row_to_json(t)::text AS payload
FROM raw.telegram_messages t JOIN (SELECT DISTINCT channel, message_id FROM _stage_messages) k
     USING (channel, message_id)
WHERE NOT (t.source_file = ANY(%s))
"""
# A fresh scraped_at alone is no change (updated_at stays), but it decides duplicates: keep it current.
_SCRAPED_AT = f"""
UPDATE raw.telegram_messages t SET scraped_at = w.scraped_at
FROM (SELECT DISTINCT ON (channel, message_id) channel, message_id, source_file, source_position, scraped_at
      FROM _stage_messages ORDER BY channel, message_id, {_PRECEDENCE}, seq DESC) w
WHERE t.channel = w.channel AND t.message_id = w.message_id AND t.source_file = w.source_file
  AND t.source_position = w.source_position AND t.scraped_at IS DISTINCT FROM w.scraped_at
"""
_LOSERS = """
SELECT l.source_file, l.source_position, l.channel, l.message_id, t.source_file, t.source_position,
       coalesce(l.payload, (SELECT (row_to_json(s)::jsonb - 'seq')::text FROM _stage_messages s
                            WHERE s.seq = l.seq))  -- built for the losers only
FROM (SELECT seq, channel, message_id, source_file, source_position, NULL::text AS payload
      FROM _stage_messages
      UNION ALL SELECT NULL, channel, message_id, source_file, source_position, payload FROM _previous) l
JOIN raw.telegram_messages t USING (channel, message_id)
WHERE l.source_position IS NOT NULL
  AND (l.source_file, l.source_position) IS DISTINCT FROM (t.source_file, t.source_position)
"""
_UPSERT = f"""
WITH up AS (
    INSERT INTO raw.telegram_messages AS t ({_cols})
    SELECT DISTINCT ON (channel, message_id) {_cols}
    FROM _stage_messages ORDER BY channel, message_id, {_PRECEDENCE}, seq DESC
    ON CONFLICT (channel, message_id) DO UPDATE SET
        {", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c not in ("channel", "message_id"))},
        updated_at = now()
    WHERE ({", ".join(f"t.{c}" for c in COMPARED)}) IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in COMPARED)})
      -- a key found in two files: the newest scraped_at wins, then the greater file path
      AND (EXCLUDED.source_file = t.source_file
           OR (coalesce(EXCLUDED.scraped_at, '-infinity'), EXCLUDED.source_file)
              > (coalesce(t.scraped_at, '-infinity'), t.source_file))
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted),
       (SELECT count(DISTINCT (channel, message_id)) FROM _stage_messages)
FROM up
"""


# Errors where the server refuses the data itself (a value, a constraint): retrying cannot help,
# isolating the culprit can.
_REFUSED = (psycopg2.DataError, psycopg2.IntegrityError)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.errors.SerializationFailure,
                            psycopg2.errors.DeadlockDetected, psycopg2.InterfaceError))


class _Loader:
    def __init__(self, db, run_id: str, attempts: int, backoff_s: float):
        self.db, self.run_id, self.attempts, self.backoff_s = db, run_id, attempts, backoff_s
        self.owns_conn = not isinstance(db, psycopg2.extensions.connection)
        self.conn = connect_warehouse(db) if self.owns_conn else db
        self.totals = _Totals()
        self.reread: set[str] = set()  # files whose keys must be decided again (see _prune)

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
        if not (batch.parts or batch.touched):
            return
        try:
            self._write_retrying(batch)
        except _REFUSED as exc:
            # The database refused something in the batch: isolate it, so the other files'
            # good rows are stored and the culprit is quarantined with the server's reason.
            log.warning("batch refused by the database (%s): isolating the offending file and record",
                        str(exc).strip().splitlines()[0])
            self._isolate(batch)
        self.totals.batches += 1

    def _write_retrying(self, batch: _Batch) -> None:
        def before_sleep(rs):
            self.totals.retries += 1
            log.warning("load batch failed (attempt %d), retrying: %s", rs.attempt_number,
                        str(rs.outcome.exception()).strip())
            self._rollback()
            self._reconnect()

        try:
            for attempt in Retrying(retry=retry_if_exception(_transient),
                                    stop=stop_after_attempt(self.attempts),
                                    wait=wait_exponential(multiplier=self.backoff_s, max=10),
                                    before_sleep=before_sleep, reraise=True):
                with attempt:
                    self._write(batch)
        except psycopg2.Error as exc:
            self._rollback()
            if isinstance(exc, _REFUSED):
                raise
            names = ", ".join(f[0] for f in batch.files[:3]) + (" ..." if len(batch.files) > 3 else "")
            raise LoadError(f"loading {len(batch.files)} file(s) ({names}) failed: "
                            f"{type(exc).__name__}: {str(exc).strip()}") from exc

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except psycopg2.Error:
            pass

    def _isolate(self, batch: _Batch) -> None:
        """Write each file of a refused batch on its own; a refused file row by row."""
        if batch.touched:
            self._write_retrying(_Batch(touched=batch.touched))
        for part in batch.parts:
            try:
                self._write_retrying(_Batch(parts=[part]))
            except _REFUSED:
                self._write_file_by_row(part)

    def _write_file_by_row(self, part: _FileRows) -> None:
        """One transaction: each row under a savepoint; a row the server refuses becomes a reject."""
        refused, losers, counts, kept = [], [], [0, 0, 0], []
        with self.conn, self.conn.cursor() as cur:
            for line in part.lines:
                cur.execute("SAVEPOINT one_row")
                try:
                    *n, lost, _, _ = _write_rows(cur, _Batch(parts=[_FileRows(part.rel, False, [line])]),
                                                 [part.rel], prune=False)
                    cur.execute("RELEASE SAVEPOINT one_row")
                    counts = [a + b for a, b in zip(counts, n, strict=True)]
                    losers += [(*r[:4], self.run_id, *r[5:]) for r in lost]
                    kept.append(line)
                except _REFUSED as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT one_row")
                    values = line.decode("utf-8").rstrip("\n").split("\t")
                    refused.append((part.rel, int(values[-1]),
                                    f"refused by the database: {type(exc).__name__}: "
                                    f"{str(exc).strip().splitlines()[0]}"[:1000],
                                    json.dumps(dict(zip(COLUMNS, values, strict=True)), ensure_ascii=False),
                                    self.run_id))
            cur.execute(_STAGE_DDL)
            cur.execute("DELETE FROM _stage_messages")
            cur.copy_expert(f"COPY _stage_messages ({_cols}) FROM STDIN", _LinesReader(kept))
            deleted, reread = _prune(cur, [part.rel], [part.rel])
            self.totals.rows_refused_by_db += len(refused)
            self.totals.rows_rejected += len(refused)
            rel, size, mtime, sha, valid, rejected, status, run_id = part.file_row
            file_row = (rel, size, mtime, sha, valid - len(refused), rejected + len(refused), status, run_id)
            _write_bookkeeping(cur, [rel], part.rejects + refused + losers, [file_row], [])
        log.warning("%s: %d row(s) refused by the database, quarantined in raw.load_rejects",
                    part.rel, len(refused))
        t = self.totals
        t.rows_inserted, t.rows_updated = t.rows_inserted + counts[0], t.rows_updated + counts[1]
        t.rows_unchanged += counts[2] - counts[0] - counts[1]
        t.rows_deleted += len(deleted)
        self.reread |= reread
        t.rows_duplicate += len(losers)

    def _write(self, batch: _Batch) -> None:
        with self.conn:  # one transaction: rows, rejects and bookkeeping together
            with self.conn.cursor() as cur:
                loaded = [f[0] for f in batch.files]
                inserted, updated, distinct, losers, deleted, reread = _write_rows(cur, batch, loaded)
                losers = [(*r[:4], self.run_id, *r[5:]) for r in losers]
                _write_bookkeeping(cur, loaded, batch.rejects + losers, batch.files, batch.touched)
        t = self.totals
        t.rows_inserted += inserted
        t.rows_updated += updated
        t.rows_duplicate += len(losers)
        t.rows_unchanged += distinct - inserted - updated
        t.rows_deleted += len(deleted)
        self.reread |= reread


def _write_bookkeeping(cur, loaded: list[str], rejects: list[tuple], files: list[tuple],
                       touched: list[tuple]) -> None:
    if loaded:
        cur.execute("DELETE FROM raw.load_rejects WHERE source_file = ANY(%s)", (loaded,))
    if rejects:
        unique = list({(r[0], r[1]): (*r, None, None)[:7] for r in rejects}.values())
        execute_values(cur, """INSERT INTO raw.load_rejects
                (source_file, position, reason, payload, run_id, channel, message_id)
            VALUES %s ON CONFLICT (source_file, position) DO UPDATE SET reason = EXCLUDED.reason,
                payload = EXCLUDED.payload, run_id = EXCLUDED.run_id, channel = EXCLUDED.channel,
                message_id = EXCLUDED.message_id, rejected_at = now()""", unique)
    if files:
        execute_values(cur, """INSERT INTO raw.loaded_files (source_file, size_bytes, mtime_ns,
                sha256, rows_valid, rows_rejected, status, run_id) VALUES %s
            ON CONFLICT (source_file) DO UPDATE SET size_bytes = EXCLUDED.size_bytes,
                mtime_ns = EXCLUDED.mtime_ns, sha256 = EXCLUDED.sha256,
                rows_valid = EXCLUDED.rows_valid, rows_rejected = EXCLUDED.rows_rejected,
                status = EXCLUDED.status, run_id = EXCLUDED.run_id, loaded_at = now()""", files)
    if touched:
        execute_values(cur, """UPDATE raw.loaded_files f SET mtime_ns = v.mtime
            FROM (VALUES %s) AS v(source_file, mtime) WHERE f.source_file = v.source_file""", touched)


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


def _write_rows(cur, batch: _Batch, loaded: list[str], prune: bool = True) -> tuple:
    """Write the batch's rows; return (inserted, updated, distinct keys seen, loser rejects,
    keys deleted, files to read again)."""
    inserted = updated = distinct = 0
    losers: list[tuple] = []
    merge = batch.lines
    merged = [p.rel for p in batch.parts if not p.new]
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
            merged = [p.rel for p in batch.parts]
        cur.execute("RELEASE SAVEPOINT direct_copy")
    if merge or (prune and merged):
        cur.execute(_STAGE_DDL)
        cur.execute("DELETE FROM _stage_messages")
    if merge:
        cur.copy_expert(f"COPY _stage_messages ({_cols}) FROM STDIN", _LinesReader(merge))
        # A batch is a few thousand keys, the table millions of rows: look each key up in the
        # primary key rather than hashing the whole table per batch (the planner's default here).
        cur.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        cur.execute("DROP TABLE IF EXISTS _previous")
        cur.execute(_PREVIOUS, (loaded,))
        i, u, d = _upsert(cur)
        inserted, updated, distinct = inserted + i, updated + u, distinct + d
        cur.execute(_SCRAPED_AT)
        cur.execute(_LOSERS)
        for file, pos, channel, message_id, win_file, win_pos, payload in cur.fetchall():
            losers.append((file, pos, f"duplicate of ({channel}, {message_id}): the copy in {win_file} "
                           f"(position {win_pos}) wins (newest scraped_at, then file path)", payload, None,
                           channel, message_id))
        cur.execute("RESET enable_hashjoin; RESET enable_mergejoin")
    deleted, reread = _prune(cur, merged, loaded) if prune and merged else ([], set())
    return inserted, updated, distinct, losers, deleted, reread


def _prune(cur, merged: list[str], loaded: list[str]) -> tuple[list[tuple], set[str]]:
    """A file read again holds exactly what _stage_messages holds of it: its stored rows that are
    gone from it (or now rejected) are deleted. Where a key it touched has losing copies in other
    files, those files are read again, so the key is decided as a clean load would decide it."""
    cur.execute("""DELETE FROM raw.telegram_messages t WHERE t.source_file = ANY(%s) AND NOT EXISTS (
                       SELECT 1 FROM _stage_messages s WHERE s.source_file = t.source_file
                       AND s.channel = t.channel AND s.message_id = t.message_id)
                   RETURNING t.channel, t.message_id""", (merged,))
    deleted = cur.fetchall()
    cur.execute("""SELECT DISTINCT r.source_file FROM raw.load_rejects r
                   WHERE r.channel IS NOT NULL AND NOT (r.source_file = ANY(%s))
                     AND ((r.channel, r.message_id) IN (SELECT channel, message_id FROM _stage_messages)
                          OR (r.channel, r.message_id) IN (SELECT * FROM unnest(%s::text[], %s::bigint[])))""",
                (loaded, [d[0] for d in deleted], [d[1] for d in deleted]))
    reread = {r[0] for r in cur.fetchall()}
    if reread:
        cur.execute("UPDATE raw.loaded_files SET size_bytes = -1, sha256 = '' WHERE source_file = ANY(%s)",
                    (sorted(reread),))
    return deleted, reread


def _upsert(cur) -> tuple[int, int, int]:
    cur.execute(_UPSERT)
    return cur.fetchone()


def _read_file(rel: str, data: bytes, totals: _Totals, run_id: str, new: bool,
               latest: datetime) -> _FileRows:
    """Validate one file into a batch part: its rows as COPY lines, its rejects with reasons."""
    part = _FileRows(rel, new)
    try:
        records = json.loads(data.decode("utf-8"))
        if not isinstance(records, list):
            raise ValueError(f"expected a JSON array of messages, got {type(records).__name__}")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        totals.files_rejected += 1
        part.rejects.append((rel, -1, f"invalid JSON file: {exc}"[:1000],
                             data[:10000].decode("utf-8", "replace").replace("\x00", ""), run_id))
        return part
    nul = _NulCounter()
    for pos, rec in enumerate(records):
        try:
            row = validate(rec, nul, latest)
        except Reject as exc:
            payload = _clean_surrogates(json.dumps(rec, ensure_ascii=False).replace("\\u0000", ""))
            part.rejects.append((rel, pos, _clean_surrogates(str(exc)), payload, run_id))
            continue
        row.append(rel)
        row.append(pos)
        try:
            part.lines.append(_copy_line(row))
        except UnicodeEncodeError:  # lone surrogates: rare, so only then are they looked for
            totals.surrogates_replaced += sum(len(_SURROGATE.findall(v)) for v in row if type(v) is str)
            part.lines.append(_copy_line([_clean_surrogates(v) for v in row]))
    totals.rows_rejected += sum(r[1] >= 0 for r in part.rejects)
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
    loader = _Loader(db, run_id, attempts, backoff_s)
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
            loader._reconnect()
            analyze_if_stale(loader.conn, ["raw.telegram_messages"])
        return _summary(totals, t0, run_id)
    finally:
        loader.close()


def _load_files(loader: _Loader, lake_dir: Path, paths: list[Path], known: dict, batch_rows: int,
                latest: datetime, on_batch, t0: float) -> None:
    totals, run_id = loader.totals, loader.run_id
    # Parsing (this thread) overlaps with COPY and merge (the writer thread, which releases
    # the GIL while PostgreSQL works); at most two batches are in memory.
    writer = _Writer(loader, lambda: on_batch(_summary(totals, t0, run_id)) if on_batch else None)
    batch = _Batch()
    for path in paths:
        rel = _clean_surrogates(path.relative_to(lake_dir).as_posix())  # undecodable file names
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        prev = known.get(rel)
        if prev and prev[0] == st.st_size and prev[1] == st.st_mtime_ns:
            totals.files_skipped += 1
            continue
        data, refusal = _read_lake_file(path, st)
        if refusal:
            totals.files_read += 1
            totals.files_rejected += 1
            part = _FileRows(rel, prev is None, rejects=[(rel, -1, refusal, None, run_id)])
            part.file_row = (rel, st.st_size, st.st_mtime_ns, "", 0, 0, "rejected", run_id)
            batch.parts.append(part)
            continue
        sha = hashlib.sha256(data).hexdigest()
        if prev and prev[0] == st.st_size and prev[2] == sha:
            totals.files_skipped += 1
            batch.touched.append((rel, st.st_mtime_ns))
            continue
        totals.files_read += 1
        part = _read_file(rel, data, totals, run_id, prev is None, latest)
        status = "rejected" if part.rejects and part.rejects[0][1] == -1 else "loaded"
        # A post refused as dated in the future becomes valid with time: read the file again next run.
        size = -1 if any("is in the future" in r[2] for r in part.rejects) else st.st_size
        part.file_row = (rel, size, st.st_mtime_ns, sha, len(part.lines), len(part.rejects),
                         status, run_id)
        batch.parts.append(part)
        batch.rows += len(part.lines)
        if batch.rows >= batch_rows:
            writer.put(batch)
            batch = _Batch()
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
