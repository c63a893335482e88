"""Fixtures: a real PostgreSQL (the local server, or the embedded one), one database per test.
Plain helpers live in helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SHARED_MODEL, SHARED_SAMPLE, local_server, scratch_database

from medical_etl.config import Settings
from medical_etl.db import ConnParams, conn_params


@pytest.fixture(scope="session")
def pg_admin(tmp_path_factory) -> ConnParams:
    """Admin parameters of the test server: 127.0.0.1:5432 when it answers, else the embedded server."""
    params = local_server()
    if params is not None:
        return params
    from medical_etl.db import start_embedded

    server = start_embedded(Settings(embedded_pg_path=tmp_path_factory.mktemp("pg")))
    info = server.get_postmaster_info()
    return ConnParams(str(info.socket_dir), info.port, "postgres", "postgres")


@pytest.fixture
def pg_database(pg_admin):
    """A fresh database for one test, dropped afterwards; yields its ConnParams."""
    with scratch_database(pg_admin) as params:
        yield params


@pytest.fixture
def settings(pg_database, tmp_path) -> Settings:
    """Settings pointing at the test's own database and its own lake and logs."""
    return Settings(
        db_host=pg_database.host, db_port=pg_database.port, db_name=pg_database.dbname,
        db_user=pg_database.user, raw_data_path=tmp_path / "raw", logs_path=tmp_path / "logs",
        yolo_model=str(SHARED_MODEL),
    )


@pytest.fixture
def conn(settings):
    from medical_etl.db import connect

    c = connect(conn_params(settings))
    yield c
    c.close()


@pytest.fixture
def shared_sample() -> Path:
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"shared sample not present at {SHARED_SAMPLE}")
    return SHARED_SAMPLE


@pytest.fixture(scope="session")
def sample_warehouse(pg_admin, tmp_path_factory):
    """The shared sample through the whole pipeline job once, for the API, export and dashboard tests
    (they read it; a test that changes a row puts it back)."""
    from helpers.warehouse import build_sample_warehouse

    with build_sample_warehouse(pg_admin, tmp_path_factory.mktemp("samplewh")) as built:
        yield built
