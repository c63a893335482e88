"""PostgreSQL connections from the settings: a real server, or the embedded one.

When ``DB_HOST`` is empty a private PostgreSQL (the ``pgserver`` wheel) is
started under ``EMBEDDED_PG_PATH``, or reused if it already runs, and reached
over its Unix socket, so a new user needs no database install.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from medical_etl.config import Settings
from medical_etl.migrate import migrate
from medical_etl.secrets import mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnParams:
    """Where and how to connect; ``password`` is never logged (see ``__repr__``)."""

    host: str
    port: int
    dbname: str
    user: str
    password: str = ""
    connect_timeout: int = 5

    def __repr__(self) -> str:
        return f"ConnParams(host={self.host!r}, port={self.port}, dbname={self.dbname!r}, user={self.user!r})"

    def kwargs(self) -> dict:
        kw = dict(host=self.host, port=self.port, dbname=self.dbname, user=self.user)
        if self.password:
            kw["password"] = self.password
        return kw


def expect_params(db, func: str, connection_ok: bool = False) -> None:
    """Refuse, naming ``func``, anything but ConnParams (or an open connection where ``connection_ok``)."""
    if isinstance(db, ConnParams) or (connection_ok and isinstance(db, psycopg2.extensions.connection)):
        return
    raise TypeError(f"{func}() takes the database as ConnParams (conn_params(settings) makes them"
                    f"{', or an open psycopg2 connection' if connection_ok else ''}), not {type(db).__name__}")


def start_embedded(settings: Settings):
    """Start (or reuse) the embedded server and return its pgserver handle."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

        path = settings.embedded_pg_path.resolve()
        path.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server outlives this process, so the next run reuses it.
        return pgserver.get_server(path, cleanup_mode=None)


def conn_params(settings: Settings) -> ConnParams:
    """Resolve the settings to concrete connection parameters (starting the embedded server if needed)."""
    if not settings.embedded:
        return ConnParams(settings.db_host, settings.db_port, settings.db_name,
                          settings.db_user, settings.db_password.reveal(), settings.db_connect_timeout_s)
    info = start_embedded(settings).get_postmaster_info()
    params = ConnParams(str(info.socket_dir), info.port, settings.db_name, "postgres",
                        connect_timeout=settings.db_connect_timeout_s)
    _ensure_database(params)
    return params


def _ensure_database(params: ConnParams) -> None:
    admin = psycopg2.connect(**{**params.kwargs(), "dbname": "postgres"})
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (params.dbname,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(params.dbname)))
    finally:
        admin.close()


def connect(
    params: ConnParams,
    *,
    attempts: int = 4,
    connect_timeout: int | None = None,
    application_name: str | None = None,
) -> psycopg2.extensions.connection:
    """Open a connection, retrying connection failures only (exponential backoff).

    Errors other than ``OperationalError`` (bad SQL, missing privileges) are not
    retried. Secrets are masked in the error raised after the last attempt.
    """
    expect_params(params, "connect")
    timeout = connect_timeout or params.connect_timeout
    retrying = Retrying(
        retry=retry_if_exception_type(psycopg2.OperationalError),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
        before_sleep=lambda rs: log.warning(
            "connect to %r failed (attempt %d): %s", params, rs.attempt_number,
            mask(rs.outcome.exception()).strip()),
    )
    def _open():
        # Without an explicit name, libpq's PGAPPNAME (set for job stages) names the session.
        names = ({"application_name": application_name} if application_name
                 else {"fallback_application_name": "medical_etl"})
        return psycopg2.connect(**params.kwargs(), connect_timeout=timeout, **names)

    try:
        for attempt in retrying:
            with attempt:
                try:
                    return _open()
                except psycopg2.OperationalError as exc:
                    if f'database "{params.dbname}" does not exist' not in str(exc):
                        raise
                # A fresh server: create the warehouse database when the role may.
                _ensure_database(params)
                return _open()
    except psycopg2.OperationalError as exc:
        raise psycopg2.OperationalError(f"cannot connect to {params!r}: {mask(exc).strip()}") from None
    raise AssertionError("unreachable")


def test_connection(settings: Settings | None = None, timeout: int = 3) -> dict:
    """Try one connection and a query; never raises. A diagnostic people call: without ``settings``
    it reads them (the environment and ``.env``, as the CLI does) and says which server it tried.

    Returns ``{"ok", "server_version", "latency_ms", "target", "error"}``.
    """
    result = {"ok": False, "server_version": None, "latency_ms": None, "target": None, "error": None}
    t0 = time.perf_counter()
    try:
        if settings is None:
            from medical_etl.config import load_settings

            settings = load_settings()
        result["target"] = "embedded" if settings.embedded else \
            f"{settings.db_host}:{settings.db_port}/{settings.db_name} as {settings.db_user}"
        params = conn_params(settings)
        if settings.embedded:
            result["target"] = f"embedded ({params.host}:{params.port}/{params.dbname})"
        conn = connect(params, attempts=1, connect_timeout=timeout)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                result["server_version"] = cur.fetchone()[0]
        finally:
            conn.close()
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - a diagnostic must report, not raise
        result["error"] = f"{type(exc).__name__}: {mask(exc).strip()}"
    result["latency_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    return result


def connect_warehouse(params: ConnParams, **kwargs) -> psycopg2.extensions.connection:
    """:func:`connect`, with the raw schema brought up to date (pending migrations applied, a few
    milliseconds when there are none): what each stage opens, so any stage may run first."""
    conn = connect(params, **kwargs)
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


_STALE = """SELECT c.reltuples < 0 OR abs(s.n_live_tup - c.reltuples) > %s * greatest(c.reltuples, 1000)
            FROM pg_class AS c JOIN pg_stat_user_tables AS s ON s.relid = c.oid WHERE c.oid = %s::regclass"""


def analyze_if_stale(conn, tables: list[str], fraction: float = 0.1) -> list[str]:
    """ANALYZE each of ``tables`` never analysed, or whose row count moved by more than ``fraction`` since
    (``pg_class.reltuples``, what the last ANALYZE counted, against the live rows): autovacuum may be off,
    or not yet there after a bulk write, and every plan on a table without statistics guesses. Returns
    the tables analysed. Commits what ``conn`` had pending."""
    done = []
    conn.commit()
    old, conn.autocommit = conn.autocommit, True
    try:
        with conn.cursor() as cur:
            for table in tables:
                cur.execute(_STALE, (fraction, table))
                row = cur.fetchone()
                if row and row[0]:
                    cur.execute(f"ANALYZE {table}")
                    done.append(table)
    finally:
        conn.autocommit = old
    return done
