"""HTTP caching that follows the warehouse: ``ETag`` and ``Last-Modified`` come from its version.

The version is ``raw.warehouse_version`` (written by dbt's on-run-end hook after every run that built a
model, and announced with ``NOTIFY medical_etl_warehouse``). :class:`WarehouseVersion` keeps one connection
listening on that channel: knowing the version costs a non-blocking read of that socket, no query, so a
request answered 304 runs no statement at all. The version is read again when a notification arrives, when
the connection was lost (and re-opened), and at least every ``recheck_s`` (a restore brings back an older
version without a notification).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime

import psycopg2

from medical_etl.db import ConnParams
from medical_etl.secrets import mask

log = logging.getLogger(__name__)
CHANNEL = "medical_etl_warehouse"


@dataclass(frozen=True)
class Version:
    built_at: datetime
    build_id: str


class WarehouseVersion:
    """The warehouse's current version, or None when it is unknown (unreachable, or never built)."""

    def __init__(self, params: ConnParams, *, recheck_s: float = 60.0, retry_s: float = 5.0):
        self._kw = dict(params.kwargs(), connect_timeout=3, application_name="medical_etl_api_cache",
                        options="-c default_transaction_read_only=on -c statement_timeout=5000")
        self.recheck_s, self.retry_s = recheck_s, retry_s
        self._conn = None
        self._version: Version | None = None
        self._read_at = self._failed_at = -1e9
        self._lock = threading.Lock()
        self.reads = 0  # statements run to read the version (tests check a 304 runs none)

    def get(self) -> Version | None:
        with self._lock:
            now = time.monotonic()
            try:
                if self._conn is None or self._conn.closed:
                    if now - self._failed_at < self.retry_s:
                        return None
                    self._connect()
                    return self._read(now)
                self._conn.poll()  # reads what the server sent (notifications); sends nothing
                if self._conn.notifies or now - self._read_at > self.recheck_s:
                    self._conn.notifies.clear()
                    return self._read(now)
                return self._version
            except psycopg2.Error as exc:
                # the request's own query reports the database's trouble (and logs its details once)
                log.info("warehouse version unknown: answers are not cached until it is back")
                log.debug("warehouse version: %s", mask(exc).strip())
                self.close()
                self._failed_at, self._version = now, None
                return None

    def _connect(self) -> None:
        self._conn = psycopg2.connect(**self._kw)
        self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")

    def _read(self, now: float) -> Version | None:
        self.reads += 1
        with self._conn.cursor() as cur:
            cur.execute("SELECT to_regclass('raw.warehouse_version') IS NOT NULL")
            row = None
            if cur.fetchone()[0]:
                cur.execute("SELECT built_at, build_id FROM raw.warehouse_version")
                row = cur.fetchone()
        self._read_at = now
        self._version = Version(*row) if row else None
        return self._version

    def close(self) -> None:
        """Close the listening connection (the next :meth:`get` opens another)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None


def etag(version: Version, *parts: str) -> str:
    """A weak validator for one representation (path, query, format) of one warehouse version (weak:
    the gzip middleware may change the bytes, not the meaning)."""
    digest = hashlib.sha256("\x1f".join((version.build_id, version.built_at.isoformat(), *parts)).encode())
    return f'W/"{digest.hexdigest()[:32]}"'


def last_modified(version: Version) -> str:
    return format_datetime(version.built_at.astimezone(timezone.utc).replace(microsecond=0), usegmt=True)


def not_modified(if_none_match: str | None, if_modified_since: str | None, tag: str, version: Version) -> bool:
    """RFC 9110: ``If-None-Match`` (weak comparison) decides when present; else ``If-Modified-Since``."""
    if if_none_match is not None:
        wanted = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in wanted or tag.removeprefix("W/") in wanted
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            return False
        return version.built_at.replace(microsecond=0) <= since
    return False
