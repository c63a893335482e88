"""The database's own health, for the run log: its size, its largest relations, its connections.

:func:`database_health` is the snapshot a job records when it ends (size, the ten largest relations with
their live and dead tuples and last vacuum / analyze, connections against ``max_connections``).
:class:`ConnectionWatch` samples, while a stage runs, how many sessions the stage holds (its sessions
carry ``medical_etl/<stage>/<run_id>`` in ``application_name``) and how many the server holds in all, and
keeps the peaks. Neither ever fails the work it observes: a problem becomes an ``error`` entry.
"""
from __future__ import annotations

import logging
import threading

import psycopg2

from medical_etl.db import ConnParams
from medical_etl.secrets import mask

log = logging.getLogger(__name__)
WATCHER_NAME = "medical_etl/connection-watch"
TOP_RELATIONS = 10

_CONNECTIONS = """
SELECT count(*) FILTER (WHERE application_name = %(app)s)::int AS stage,
       count(*) FILTER (WHERE backend_type = 'client backend')::int AS server,
       current_setting('max_connections')::int AS max_connections
FROM pg_stat_activity WHERE pid <> pg_backend_pid()
"""

_RELATIONS = """
SELECT n.nspname || '.' || c.relname AS relation,
       CASE c.relkind WHEN 'r' THEN 'table' WHEN 'i' THEN 'index' WHEN 'm' THEN 'materialized view'
                      WHEN 't' THEN 'toast' ELSE c.relkind::text END AS kind,
       pg_total_relation_size(c.oid) AS size_bytes,
       s.n_live_tup AS live_tuples, s.n_dead_tup AS dead_tuples,
       greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum,
       greatest(s.last_analyze, s.last_autoanalyze) AS last_analyze
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%'
ORDER BY pg_total_relation_size(c.oid) DESC, 1
LIMIT %(top)s
"""


def _connect(params: ConnParams, timeout_s: int = 3):
    conn = psycopg2.connect(**params.kwargs(), connect_timeout=timeout_s, application_name=WATCHER_NAME,
                            options="-c statement_timeout=10000")
    conn.autocommit = True
    return conn


def database_health(params: ConnParams, top: int = TOP_RELATIONS) -> dict:
    """Size, largest relations and connections of the database at ``params``; never raises (an
    unreachable server gives ``{"error": ...}``)."""
    try:
        conn = _connect(params)
    except psycopg2.Error as exc:
        return {"error": f"database health not recorded: {mask(exc).strip()}"}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_database_size(current_database())")
            size = cur.fetchone()[0]
            cur.execute(_CONNECTIONS, {"app": ""})
            _, server, max_conn = cur.fetchone()
            cur.execute(_RELATIONS, {"top": top})
            cols = [d[0] for d in cur.description]
            relations = []
            for row in cur.fetchall():
                r = dict(zip(cols, row, strict=True))
                for k in ("last_vacuum", "last_analyze"):
                    r[k] = r[k].isoformat() if r[k] else None
                relations.append(r)
        return {"database_size_bytes": size, "connections": server + 1, "max_connections": max_conn,
                "relations": relations}
    except psycopg2.Error as exc:
        return {"error": f"database health not recorded: {mask(exc).strip()}"}
    finally:
        conn.close()


class ConnectionWatch:
    """While the ``with`` block runs: every ``interval_s``, the sessions named ``application_name`` and
    all the server's client sessions; on exit ``into`` (a dict) gets ``db_connections_peak`` (the
    stage's), ``db_connections_server_peak`` and ``max_connections``."""

    def __init__(self, params: ConnParams, application_name: str, into: dict, interval_s: float = 0.5):
        self.params, self.app, self.into, self.interval_s = params, application_name, into, interval_s
        self.peak = self.server_peak = 0
        self.max_connections = None
        self.error = None
        self._stop = threading.Event()
        self._thread = None
        self._conn = None

    def __enter__(self):
        try:
            self._conn = _connect(self.params)
            self._sample()
        except psycopg2.Error as exc:
            self._fail(exc)
            return self
        self._thread = threading.Thread(target=self._run, name="connection-watch", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        with self._conn.cursor() as cur:
            cur.execute(_CONNECTIONS, {"app": self.app})
            stage, server, self.max_connections = cur.fetchone()
        self.peak, self.server_peak = max(self.peak, stage), max(self.server_peak, server)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except psycopg2.Error as exc:
                self._fail(exc)
                return

    def _fail(self, exc: Exception) -> None:
        self.error = f"connections not watched: {mask(exc).strip()}"
        log.debug(self.error)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._conn is not None:
            try:
                if self.error is None:
                    self._sample()
            except psycopg2.Error as e:
                self._fail(e)
            self._conn.close()
        self.into.update(db_connections_peak=self.peak, db_connections_server_peak=self.server_peak,
                         max_connections=self.max_connections)
        if self.error:
            self.into["db_connections_error"] = self.error
        return False
