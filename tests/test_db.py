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
    assert r["target"] == f"127.0.0.1:{s.db_port}/{s.db_name} as {s.db_user}" and "hunter2" not in str(r)


def test_test_connection_without_settings_reads_them_as_the_readme_line_does(settings, tmp_path):
    """The troubleshooting line: python -c "from medical_etl.db import test_connection; print(test_connection())"."""
    import subprocess
    import sys

    from helpers import settings_env

    code = "from medical_etl.db import test_connection; print(test_connection())"
    r = subprocess.run([sys.executable, "-c", code], env=settings_env(settings), cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "'ok': True" in r.stdout and f"{settings.db_host}:{settings.db_port}/{settings.db_name}" in r.stdout


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


def test_a_migration_renamed_after_it_shipped_is_not_applied_again(pg_database):
    from medical_etl.migrate import migrate

    conn = psycopg2.connect(**pg_database.kwargs())
    try:
        migrate(conn)
        with conn, conn.cursor() as cur:  # a database migrated before the file was renumbered
            cur.execute("UPDATE raw.schema_migrations SET version = '004_message_metadata' "
                        "WHERE version = '005_message_metadata'")
        assert migrate(conn) == []  # ALTER TABLE ... ADD COLUMN again would fail
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM raw.schema_migrations WHERE version LIKE '00%_message_metadata'")
            assert sorted(r[0] for r in cur.fetchall()) == ["004_message_metadata", "005_message_metadata"]
    finally:
        conn.close()
