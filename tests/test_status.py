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
    lake = dict(cli["assets"][0]["metadata"])
    assert lake.pop("path") == str(settings.raw_data_path) and api["assets"][0]["metadata"] == lake  # no server path
    assert api["assets"][2]["metadata"]["rows_per_mart"]["fct_messages"] == 276


def _record(run_id, stage, **kw):
    return {"run_id": run_id, "job": "pipeline", "stage": stage, "status": "success",
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:01:00Z", "duration_s": 60.0,
            "metrics": {}, "error": None, **kw}


def test_mistyped_and_torn_records_are_skipped_by_every_reader(settings):
    from fastapi.testclient import TestClient

    from medical_etl.api.app import create_app
    from medical_etl.db import conn_params
    from medical_etl.monitor.stats import read_log

    logs = settings.logs_path
    logs.mkdir(parents=True, exist_ok=True)
    bad = [_record("r-bad1", {"a": 1}), _record("r-bad2", "load", finished_at=12345),
           _record("r-bad3", "load", status="failed", error=7)]
    (logs / "runs.000001.jsonl").write_text(  # a rotated segment keeps them
        "".join(json.dumps(r) + "\n" for r in [_record("r-scrape", "scrape"), *bad]))
    (logs / "runs.jsonl").write_text(json.dumps(_record("r-load", "load")) + '\n{"run_id": "r-torn", "job": "pi')

    s = json.loads(status_cli(settings, "--json"))
    assert s["run_log"]["records"] == 2 and s["run_log"]["skipped_lines"] == {"malformed": 1, "invalid": 3}
    assert [(a["last_success"] or {}).get("run_id") for a in s["assets"]] == ["r-scrape", "r-load", None, None]
    assert s["assets"][1]["last_failure"] is None
    assert "skipped 1 torn or malformed line(s) and 3 invalid record(s)" in status_cli(settings)

    app = create_app(conn_params(settings), logs_path=logs, lake_path=settings.raw_data_path)
    with TestClient(app) as c:
        r = c.get("/api/pipeline/status")
    assert r.status_code == 200, r.text
    assert r.json()["run_log"] == {"records": 2, "skipped_lines": {"malformed": 1, "invalid": 3}}
    assert [a["last_success"] for a in r.json()["assets"]] == [a["last_success"] for a in s["assets"]]

    stats = read_log(logs / "runs.jsonl")
    assert (stats.records, stats.malformed) == (2, 4)


def test_the_api_does_not_describe_the_server(pg_admin, tmp_path, caplog):
    import logging

    from fastapi.testclient import TestClient

    from medical_etl.api.app import create_app
    from medical_etl.api.database import ReadOnlyPool
    from medical_etl.db import ConnParams
    from medical_etl.ops.status import pipeline_status

    logs, lake = tmp_path / "logs", tmp_path / "raw"
    RunLog(logs).append(_record("r-scrape", "scrape"))
    (lake / "messages").mkdir(parents=True)
    role = "no_such_role_7f3a"
    db = ConnParams(pg_admin.host, pg_admin.port, "no_such_db", role)  # refused, naming the role

    cli = pipeline_status(logs_path=logs, lake_path=lake, cursor=ReadOnlyPool(db, size=1).cursor)
    assert cli["run_log"]["path"] == str(logs / "runs.jsonl") and cli["assets"][0]["metadata"]["path"] == str(lake)
    assert role in cli["database"]["error"]

    with caplog.at_level(logging.WARNING), TestClient(create_app(db, logs_path=logs, lake_path=lake),
                                                      raise_server_exceptions=False) as c:
        status, refused = c.get("/api/pipeline/status"), c.get("/api/channels")
    assert status.status_code == 200 and refused.status_code == 503
    s = status.json()
    assert s["database"] == {"reachable": False, "error": "database unavailable (details in the server log)"}
    assert "path" not in s["run_log"] and "path" not in s["assets"][0]["metadata"]
    assert s["assets"][0]["last_success"]["run_id"] == "r-scrape"
    assert refused.json()["error"] == "database unreachable"
    for body in (status.text, refused.text):
        assert str(tmp_path) not in body and role not in body and pg_admin.host not in body
        assert f"port {pg_admin.port}" not in body
    logged = [r.getMessage() for r in caplog.records]
    assert sum(role in m for m in logged) == 2  # the details stay in the server log, once per answer
