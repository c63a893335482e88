"""Read-only connections for the API: a small pool, every session read-only on the server side.

Each connection starts with ``default_transaction_read_only=on`` (a connection option, so it holds for
every transaction) and a statement timeout; the API never holds the loader's write access even if its
role has it.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extras
import psycopg2.pool

from medical_etl.db import ConnParams
from medical_etl.secrets import mask


class DatabaseUnavailable(RuntimeError):
    """The warehouse cannot be reached (or has not been built): the API answers 503."""


class ReadOnlyPool:
    def __init__(self, params: ConnParams, size: int = 8, statement_timeout_ms: int = 15000,
                 connect_timeout_s: int = 3):
        self.params = params
        self.size = size
        self._kw = dict(params.kwargs(), connect_timeout=connect_timeout_s, application_name="medical_etl_api",
                        options=f"-c default_transaction_read_only=on -c statement_timeout={statement_timeout_ms} "
                                "-c timezone=UTC")
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._lock:
            if self._pool is None:
                try:
                    # minconn = maxconn: psycopg2's pool closes any connection returned beyond minconn
                    self._pool = psycopg2.pool.ThreadedConnectionPool(self.size, self.size, **self._kw)
                except psycopg2.Error as exc:
                    raise DatabaseUnavailable(f"database unreachable: {mask(exc).strip()}") from None
            return self._pool

    @contextmanager
    def cursor(self) -> Iterator[psycopg2.extensions.cursor]:
        """A dict cursor on a read-only connection (autocommit: one read-only transaction per statement)."""
        with self._slots:  # wait for a free connection instead of failing with "pool exhausted"
            pool = self._get_pool()
            try:
                conn = pool.getconn()
            except psycopg2.Error as exc:
                raise DatabaseUnavailable(f"database unreachable: {mask(exc).strip()}") from None
            broken = False
            try:
                # Each statement is its own read-only transaction (default_transaction_read_only on the
                # connection): no BEGIN / ROLLBACK round trips per request.
                if not conn.autocommit:
                    conn.autocommit = True
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    yield cur
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                broken = True
                raise DatabaseUnavailable(f"database unreachable: {mask(exc).strip()}") from None
            except psycopg2.errors.UndefinedTable:
                raise DatabaseUnavailable("the warehouse has not been built yet (run the pipeline)") from None
            finally:
                pool.putconn(conn, close=broken or bool(conn.closed))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None
