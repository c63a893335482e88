"""Writing batches to ``raw``: each batch COPY'd (straight into the table for files never loaded, else into
a staging table merged with one ``INSERT ... ON CONFLICT DO UPDATE``), with its rejects and its files'
bookkeeping, in one transaction; transient errors retried, a batch the server refuses split until the
culprit row is quarantined. :class:`BatchWriter` writes in a thread while the next batch is read.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extras import execute_values
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from medical_etl.db import connect, connect_warehouse
from medical_etl.errors import PermanentError
from medical_etl.load.columns import COLUMN_LIST, COLUMN_TYPES, COLUMNS, COMPARED
from medical_etl.load.records import Batch, FileRow, FileRows, KnownFile, LinesReader, RejectRow, Totals

log = logging.getLogger(__name__)


class LoadError(PermanentError):
    """A permanent database error: the stage fails and the batch's bookkeeping is not advanced."""


STAGE_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS _stage_messages (
    seq bigserial,
    {", ".join(f"{c} {t}" for c, t in COLUMN_TYPES)}
) ON COMMIT DELETE ROWS;
-- The staging copy is read once: storing it uncompressed saves a compress/decompress round.
ALTER TABLE _stage_messages ALTER COLUMN message_text SET STORAGE EXTERNAL;
"""

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
    INSERT INTO raw.telegram_messages AS t ({COLUMN_LIST})
    SELECT DISTINCT ON (channel, message_id) {COLUMN_LIST}
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


class Loader:
    def __init__(self, db, run_id: str, attempts: int, backoff_s: float):
        self.db, self.run_id, self.attempts, self.backoff_s = db, run_id, attempts, backoff_s
        self.owns_conn = not isinstance(db, psycopg2.extensions.connection)
        self.conn = connect_warehouse(db) if self.owns_conn else db
        self.totals = Totals()
        self.reread: set[str] = set()  # files whose keys must be decided again (see _prune)

    def close(self):
        if self.owns_conn and not self.conn.closed:
            self.conn.close()

    def reconnect(self):
        if self.conn.closed and self.owns_conn:
            self.conn = connect(self.db)

    def known_files(self) -> dict[str, KnownFile]:
        """What the last loads read of each file (to skip the unchanged ones)."""
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT source_file, size_bytes, mtime_ns, sha256 FROM raw.loaded_files")
            return {r[0]: KnownFile(*r[1:]) for r in cur.fetchall()}

    def flush(self, batch: Batch) -> None:
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

    def _write_retrying(self, batch: Batch) -> None:
        def before_sleep(rs):
            self.totals.retries += 1
            log.warning("load batch failed (attempt %d), retrying: %s", rs.attempt_number,
                        str(rs.outcome.exception()).strip())
            self._rollback()
            self.reconnect()

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
            names = ", ".join(f.source_file for f in batch.files[:3]) + (" ..." if len(batch.files) > 3 else "")
            raise LoadError(f"loading {len(batch.files)} file(s) ({names}) failed: "
                            f"{type(exc).__name__}: {str(exc).strip()}") from exc

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except psycopg2.Error:
            pass

    def _isolate(self, batch: Batch) -> None:
        """Write each file of a refused batch on its own; a refused file row by row."""
        if batch.touched:
            self._write_retrying(Batch(touched=batch.touched))
        for part in batch.parts:
            try:
                self._write_retrying(Batch(parts=[part]))
            except _REFUSED:
                self._write_file_by_row(part)

    def _write_file_by_row(self, part: FileRows) -> None:
        """One transaction: each row under a savepoint; a row the server refuses becomes a reject."""
        refused, losers, counts, kept = [], [], [0, 0, 0], []
        with self.conn, self.conn.cursor() as cur:
            for line in part.lines:
                cur.execute("SAVEPOINT one_row")
                try:
                    *n, lost, _, _ = write_rows(cur, Batch(parts=[FileRows(part.rel, False, [line])]),
                                                 [part.rel], decide_pruned=False)
                    cur.execute("RELEASE SAVEPOINT one_row")
                    counts = [a + b for a, b in zip(counts, n, strict=True)]
                    losers += [r._replace(run_id=self.run_id) for r in lost]
                    kept.append(line)
                except _REFUSED as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT one_row")
                    values = line.decode("utf-8").rstrip("\n").split("\t")
                    refused.append(RejectRow(part.rel, int(values[-1]),
                                             f"refused by the database: {type(exc).__name__}: "
                                             f"{str(exc).strip().splitlines()[0]}"[:1000],
                                             json.dumps(dict(zip(COLUMNS, values, strict=True)), ensure_ascii=False),
                                             self.run_id))
            cur.execute(STAGE_DDL)
            cur.execute("DELETE FROM _stage_messages")
            cur.copy_expert(f"COPY _stage_messages ({COLUMN_LIST}) FROM STDIN", LinesReader(kept))
            deleted, reread = prune(cur, [part.rel], [part.rel])
            self.totals.rows_refused_by_db += len(refused)
            self.totals.rows_rejected += len(refused)
            file_row = part.file_row._replace(rows_valid=part.file_row.rows_valid - len(refused),
                                              rows_rejected=part.file_row.rows_rejected + len(refused))
            write_bookkeeping(cur, [part.rel], part.rejects + refused + losers, [file_row], [])
        log.warning("%s: %d row(s) refused by the database, quarantined in raw.load_rejects",
                    part.rel, len(refused))
        t = self.totals
        t.rows_inserted, t.rows_updated = t.rows_inserted + counts[0], t.rows_updated + counts[1]
        t.rows_unchanged += counts[2] - counts[0] - counts[1]
        t.rows_deleted += len(deleted)
        self.reread |= reread
        t.rows_duplicate += len(losers)

    def _write(self, batch: Batch) -> None:
        with self.conn:  # one transaction: rows, rejects and bookkeeping together
            with self.conn.cursor() as cur:
                loaded = [f.source_file for f in batch.files]
                inserted, updated, distinct, losers, deleted, reread = write_rows(cur, batch, loaded)
                losers = [r._replace(run_id=self.run_id) for r in losers]
                write_bookkeeping(cur, loaded, batch.rejects + losers, batch.files, batch.touched)
        t = self.totals
        t.rows_inserted += inserted
        t.rows_updated += updated
        t.rows_duplicate += len(losers)
        t.rows_unchanged += distinct - inserted - updated
        t.rows_deleted += len(deleted)
        self.reread |= reread


def write_bookkeeping(cur, loaded: list[str], rejects: list[RejectRow], files: list[FileRow],
                      touched: list[tuple[str, int]]) -> None:
    """The batch's rejects (each file's replace what it had) and its files' rows, in its transaction."""
    if loaded:
        cur.execute("DELETE FROM raw.load_rejects WHERE source_file = ANY(%s)", (loaded,))
    if rejects:
        unique = list({(r.source_file, r.position): r for r in rejects}.values())
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


def write_rows(cur, batch: Batch, loaded: list[str], decide_pruned: bool = True) -> tuple:
    """Write the batch's rows; return (inserted, updated, distinct keys seen, loser rejects,
    keys deleted, files to read again)."""
    inserted = updated = distinct = 0
    losers: list[RejectRow] = []
    merge = batch.lines
    merged = [p.rel for p in batch.parts if not p.new]
    if batch.new_lines:
        # Rows of never-loaded files cannot be in the table (rows and bookkeeping commit
        # together), so they go straight in; any key conflict falls back to the merge.
        cur.execute("SAVEPOINT direct_copy")
        try:
            cur.copy_expert(f"COPY raw.telegram_messages ({COLUMN_LIST}) FROM STDIN", LinesReader(batch.new_lines))
            inserted = distinct = len(batch.new_lines)
        except psycopg2.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT direct_copy")
            merge = batch.lines + batch.new_lines
            merged = [p.rel for p in batch.parts]
        cur.execute("RELEASE SAVEPOINT direct_copy")
    if merge or (decide_pruned and merged):
        cur.execute(STAGE_DDL)
        cur.execute("DELETE FROM _stage_messages")
    if merge:
        cur.copy_expert(f"COPY _stage_messages ({COLUMN_LIST}) FROM STDIN", LinesReader(merge))
        # A batch is a few thousand keys, the table millions of rows: look each key up in the
        # primary key rather than hashing the whole table per batch (the planner's default here).
        cur.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        cur.execute("DROP TABLE IF EXISTS _previous")
        cur.execute(_PREVIOUS, (loaded,))
        i, u, d = upsert(cur)
        inserted, updated, distinct = inserted + i, updated + u, distinct + d
        cur.execute(_SCRAPED_AT)
        cur.execute(_LOSERS)
        for file, pos, channel, message_id, win_file, win_pos, payload in cur.fetchall():
            losers.append(RejectRow(file, pos, f"duplicate of ({channel}, {message_id}): the copy in {win_file} "
                                    f"(position {win_pos}) wins (newest scraped_at, then file path)", payload,
                                    None, channel, message_id))
        cur.execute("RESET enable_hashjoin; RESET enable_mergejoin")
    deleted, reread = prune(cur, merged, loaded) if decide_pruned and merged else ([], set())
    return inserted, updated, distinct, losers, deleted, reread


def prune(cur, merged: list[str], loaded: list[str]) -> tuple[list[tuple], set[str]]:
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


def upsert(cur) -> tuple[int, int, int]:
    cur.execute(_UPSERT)
    return cur.fetchone()


class BatchWriter:
    """A thread writing batches in order; its first error is re-raised in the caller."""

    def __init__(self, loader: Loader, after_batch: Callable[[], None]):
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

    def put(self, batch: Batch) -> None:
        if self.error is not None:
            self.finish()
        self.queue.put(batch)

    def finish(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


