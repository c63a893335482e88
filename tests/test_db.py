import socket
import time

import psycopg2
import pytest
from helpers import stop_embedded_server

from medical_etl.config import Settings
from medical_etl.db import conn_params, connect, start_embedded
from medical_etl.db import test_connection as check_connection


def test_connect_and_query(settings):
    conn = connect(conn_params(settings))
    with conn.cursor() as cur:
        cur.execute("SELECT current_database(), 1 + 1")
        assert cur.fetchone() == (settings.db_name, 2)
    conn.close()


def test_test_connection_ok(settings):
    r = check_connection(settings)
    assert r["ok"] is True and r["error"] is None
    assert r["server_version"][:2].isdigit()
    assert r["latency_ms"] > 0


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_test_connection_closed_port_is_bounded(tmp_path):
    s = Settings(db_host="127.0.0.1", db_port=_closed_port(), db_password="hunter2-secret",
                 raw_data_path=tmp_path, logs_path=tmp_path)
    t0 = time.perf_counter()
    r = check_connection(s, timeout=2)
    assert time.perf_counter() - t0 < 5
    assert r["ok"] is False
    assert "Connection refused" in r["error"] or "connect" in r["error"]


def test_connect_retries_then_raises_clear_error(tmp_path):
    s = Settings(db_host="127.0.0.1", db_port=_closed_port(), raw_data_path=tmp_path, logs_path=tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(psycopg2.OperationalError, match="cannot connect to"):
        connect(conn_params(s), attempts=3)
    # two backoff sleeps happened (0.2 s + 0.4 s at least)
    assert time.perf_counter() - t0 >= 0.5


def test_missing_database_is_created(pg_admin, tmp_path):
    import uuid

    name = f"t_auto_{uuid.uuid4().hex[:8]}"
    s = Settings(db_host=pg_admin.host, db_port=pg_admin.port, db_user=pg_admin.user, db_name=name,
                 raw_data_path=tmp_path, logs_path=tmp_path)
    admin = psycopg2.connect(**pg_admin.kwargs())
    admin.autocommit = True
    exists = "SELECT count(*) FROM pg_database WHERE datname = %s"
    try:
        with admin.cursor() as cur:
            cur.execute(exists, (name,))
            assert cur.fetchone()[0] == 0
            conn = connect(conn_params(s))
            with conn.cursor() as c2:
                c2.execute("SELECT current_database()")
                assert c2.fetchone()[0] == name
            conn.close()
            cur.execute(exists, (name,))
            assert cur.fetchone()[0] == 1
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_embedded_server_starts_and_is_reused(tmp_path):
    s = Settings(embedded_pg_path=tmp_path / "pg", raw_data_path=tmp_path, logs_path=tmp_path)
    assert s.embedded
    r1 = check_connection(s)
    assert r1["ok"], r1
    pid1 = start_embedded(s).get_pid()
    t0 = time.perf_counter()
    pid2 = start_embedded(s).get_pid()
    assert pid1 == pid2  # the running server is reused, not restarted
    assert time.perf_counter() - t0 < 1.0
    conn = connect(conn_params(s))
    with conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        assert cur.fetchone()[0] == s.db_name
    conn.close()
    stop_embedded_server(s.embedded_pg_path)
