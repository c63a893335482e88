"""Helpers the tests share (``from helpers import query``); fixtures are in conftest.py. Beside them:
``helpers.lake`` (lake records and files), ``helpers.warehouse`` (the shared sample built into a
warehouse), ``helpers.exports`` (the sample as Telegram Desktop exports), ``helpers.browser`` (headless
Chromium over the DevTools protocol)."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg2
from psycopg2 import sql

from medical_etl.config import Settings
from medical_etl.db import ConnParams

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MEDICAL_ETL_SHARED") or next(
    (p for p in (REPO.parent / "shared", Path("/work/shared")) if p.is_dir()), REPO.parent / "shared"))
SHARED_SAMPLE = SHARED / "datasets" / "telegram-medical-sample"
SHARED_MODEL = SHARED / "models" / "yolov8n_int8.onnx"


def local_server() -> ConnParams | None:
    host = os.environ.get("TEST_PG_HOST", "127.0.0.1")
    port = int(os.environ.get("TEST_PG_PORT", "5432"))
    user = os.environ.get("TEST_PG_USER", "postgres")
    try:
        psycopg2.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=2).close()
    except psycopg2.OperationalError:
        return None
    return ConnParams(host, port, "postgres", user)


def admin_exec(admin: ConnParams, statement: sql.Composable) -> None:
    conn = psycopg2.connect(**admin.kwargs())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@contextmanager
def scratch_database(admin: ConnParams, prefix: str = "t"):
    """A fresh database on the test server, dropped on exit; yields its ConnParams."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin_exec(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield ConnParams(admin.host, admin.port, name, admin.user)
    finally:
        admin_exec(admin, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def stop_embedded_server(pgdata: Path, timeout: float = 30) -> None:
    """Stop a test's private embedded server whoever started it (pgserver's own cleanup stops it
    only when the calling process is its last user, which a subprocess that used it breaks)."""
    import signal
    import time

    pid_file = Path(pgdata) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGINT)  # fast shutdown
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def query(conn, statement: str, args=None) -> list[tuple]:
    """Run one query and commit, so later reads see other processes' writes."""
    with conn.cursor() as cur:
        cur.execute(statement, args)
        rows = cur.fetchall()
    conn.commit()
    return rows


def settings_env(s: Settings) -> dict:
    """Environment variables that make a subprocess use the same settings."""
    env = dict(os.environ)
    env.update(DB_HOST=s.db_host, DB_PORT=str(s.db_port), DB_NAME=s.db_name, DB_USER=s.db_user,
               RAW_DATA_PATH=str(s.raw_data_path), LOGS_PATH=str(s.logs_path), YOLO_MODEL=s.yolo_model)
    return env
