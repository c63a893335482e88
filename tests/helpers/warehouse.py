"""A warehouse built once per test module from the shared sample (the whole pipeline job: scrape,
load, dbt, YOLO enrichment), for the API, dashboard and status tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from helpers import SHARED_MODEL, SHARED_SAMPLE, scratch_database
from medical_etl.config import Settings
from medical_etl.db import ConnParams


@dataclass
class BuiltWarehouse:
    settings: Settings
    params: ConnParams
    run_id: str
    summary: dict


def build_sample_warehouse(pg_admin: ConnParams, tmp: Path):
    """Context manager yielding a :class:`BuiltWarehouse` in a scratch database."""
    import pytest

    from medical_etl.jobs import run_job
    from medical_etl.scrape.standin import StandInClient, read_message_list

    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"shared sample not present at {SHARED_SAMPLE}")

    class _Ctx:
        def __enter__(self):
            self._db = scratch_database(pg_admin, prefix="api")
            params = self._db.__enter__()
            s = Settings(db_host=params.host, db_port=params.port, db_name=params.dbname, db_user=params.user,
                         raw_data_path=tmp / "raw", logs_path=tmp / "logs", yolo_model=str(SHARED_MODEL),
                         stage_timeout_s=900)
            s.raw_data_path.mkdir(parents=True, exist_ok=True)
            s.logs_path.mkdir(parents=True, exist_ok=True)
            posts = read_message_list(SHARED_SAMPLE / "messages", SHARED_SAMPLE / "images")
            summary = run_job("pipeline", s, client=StandInClient(posts))
            assert summary["status"] == "success", summary
            return BuiltWarehouse(s, params, summary["run_id"], summary)

        def __exit__(self, *exc):
            return self._db.__exit__(*exc)

    return _Ctx()
