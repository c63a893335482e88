"""``medical-etl status``: the four assets, their last runs, metadata and staleness, checked against the
lake, the run log and SQL; the database being unreachable still prints the lake and run-log parts."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from helpers import REPO, query, settings_env

from medical_etl.jobs.stages import run_stage
from medical_etl.runlog import RunLog
from medical_etl.scrape.standin import StandInClient, read_message_list

CHANNELS = ["CheMed123", "lobelia4cosmetics", "tikvahpharma"]


def status_cli(settings, *args, env_extra=None):
    env = settings_env(settings)
    env.update(env_extra or {})
    r = subprocess.run([sys.executable, "-m", "medical_etl", "status", *args], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture
def built(settings, shared_sample):
    """Scrape (with photos), load and transform the sample as the stages do; no enrichment yet."""
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    run_stage("scrape", settings, job="pipeline", client=StandInClient(posts), channels=CHANNELS)
    run_stage("load", settings, job="pipeline")
    run_stage("transform", settings, job="pipeline")
    return {r["stage"]: r for r in RunLog(settings.logs_path).records()}


def test_status_json_matches_the_lake_the_run_log_and_sql(settings, conn, built):
    s = json.loads(status_cli(settings, "--json"))
    assert s["database"]["reachable"] is True
    assets = {a["asset"]: a for a in s["assets"]}
    assert list(assets) == ["telegram_data", "raw_database", "data_warehouse", "image_enrichment"]
    for name, stage in (("telegram_data", "scrape"), ("raw_database", "load"), ("data_warehouse", "transform")):
        ok = assets[name]["last_success"]
        assert ok["run_id"] == built[stage]["run_id"] and ok["at"] == built[stage]["finished_at"]
        assert ok["job"] == "pipeline" and assets[name]["last_failure"] is None and 0 <= assets[name]["age_hours"] < 1

    lake = assets["telegram_data"]["metadata"]
    photos = len(list((settings.raw_data_path / "images").glob("*/*.jpg")))
    assert (lake["channels"], lake["messages"], lake["photos"]) == (3, 276, photos) and photos > 150
    assert lake["bytes"] > sum(p.stat().st_size for p in (settings.raw_data_path / "images").glob("*/*.jpg"))
    newest = dict(query(conn, "SELECT channel, max(message_date) FROM raw.telegram_messages GROUP BY 1"))
    for ch, c in lake["per_channel"].items():
        assert c["newest_post_at"][:19] == newest[ch].isoformat()[:19]
    assert sum(c["messages"] for c in lake["per_channel"].values()) == 276

    raw = assets["raw_database"]["metadata"]
    assert raw["rows"] == query(conn, "SELECT count(*) FROM raw.telegram_messages")[0][0] == 276
    assert raw["rejects"] == 0 and assets["raw_database"]["stale"] is False

    dw = assets["data_warehouse"]
    assert dw["metadata"]["models_built"] == built["transform"]["metrics"]["models_built"] > 8
    assert dw["metadata"]["tests_passed"] == built["transform"]["metrics"]["tests_passed"] > 50
    for mart in ("fct_messages", "fct_product_prices", "dim_channels"):
        assert dw["metadata"]["rows_per_mart"][mart] == query(conn, f"SELECT count(*) FROM marts.{mart}")[0][0]
    assert dw["stale"] is False

    enrich = assets["image_enrichment"]
    in_raw = query(conn, "SELECT count(*) FROM raw.telegram_messages WHERE image_path IS NOT NULL")[0][0]
    assert enrich["last_success"] is None and enrich["stale"] is True
    assert enrich["metadata"]["photos_not_analysed"] == in_raw > 0
    assert f"{in_raw} loaded photos not analysed yet" in enrich["stale_reasons"]


def test_stale_and_failed_assets_are_flagged(settings, conn, built):
    with conn.cursor() as cur:
        cur.execute("UPDATE raw.telegram_messages SET views = views + 1, updated_at = now() "
                    "WHERE channel = 'CheMed123' AND message_id = 10")
    conn.commit()
    RunLog(settings.logs_path).append({
        "run_id": "r-failed", "job": "transform", "stage": "transform", "status": "failed",
        "started_at": "2099-01-01T00:00:00Z", "finished_at": "2099-01-01T00:01:00Z", "duration_s": 60,
        "metrics": {}, "error": {"type": "TransformError", "message": "dbt test assert_no_future_posts failed"}})
    s = json.loads(status_cli(settings, "--json"))
    dw = next(a for a in s["assets"] if a["asset"] == "data_warehouse")
    assert dw["stale"] and "after the last dbt build" in dw["stale_reasons"][0]
    assert dw["last_failure"]["run_id"] == "r-failed" and "assert_no_future_posts" in dw["last_failure"]["error"]
    assert dw["last_success"]["run_id"] == built["transform"]["run_id"]
    text = status_cli(settings)
    assert "data_warehouse [STALE]" in text and "last failure: 2099-01-01" in text
    assert "assert_no_future_posts" in text and "276 messages" in text


def test_unreachable_database_still_prints_the_lake_and_run_log(settings, built):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = str(sock.getsockname()[1])
    text = status_cli(settings, env_extra={"DB_PORT": dead, "DB_CONNECT_TIMEOUT": "2"})
    assert "database: UNREACHABLE" in text
    assert "3 channels, 276 messages" in text and built["load"]["run_id"] in text
    s = json.loads(status_cli(settings, "--json", env_extra={"DB_PORT": dead, "DB_CONNECT_TIMEOUT": "2"}))
    assert s["database"]["reachable"] is False and s["database"]["error"]
    assert s["assets"][1]["metadata"] is None and s["assets"][0]["metadata"]["messages"] == 276


def test_the_api_serves_the_same_view(settings, built):
    from fastapi.testclient import TestClient

    from medical_etl.api.app import create_app
    from medical_etl.db import conn_params

    cli = json.loads(status_cli(settings, "--json"))
    app = create_app(conn_params(settings), logs_path=settings.logs_path, lake_path=settings.raw_data_path)
    with TestClient(app) as c:
        api = c.get("/api/pipeline/status").json()
    assert [a["asset"] for a in api["assets"]] == [a["asset"] for a in cli["assets"]]
    for a, b in zip(api["assets"], cli["assets"], strict=True):
        assert a["last_success"] == b["last_success"] and a["stale"] == b["stale"]
    assert api["assets"][0]["metadata"] == cli["assets"][0]["metadata"]
    assert api["assets"][2]["metadata"]["rows_per_mart"]["fct_messages"] == 276
