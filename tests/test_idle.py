"""A day with nothing new costs next to nothing, without skipping what matters (issue 16)."""
# 20 models built: the 10 of the star schema (dim_products among them), the analytical API's 6 (agg_* rollups,
# search_messages), int_messages_deduplicated and the catalogue's 3 staging views (int_message_offers is
# ephemeral: not built on its own).
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from helpers import SHARED_MODEL, query

from medical_etl.db import conn_params
from medical_etl.jobs import run_stage
from medical_etl.jobs.job import stage_options
from medical_etl.load import load_raw_to_postgres
from medical_etl.scrape.stage import scrape_telegram_data
from medical_etl.scrape.standin import Post, StandInClient, read_message_list
from medical_etl.transform import PROJECT_DIR, run_dbt_transformations
from medical_etl.transform.dbt import judge_freshness

CHANNELS = ["CheMed123", "lobelia4cosmetics", "tikvahpharma"]


@pytest.fixture
def project(tmp_path):
    """A copy of the dbt project (so a model can be edited), with its own target folder."""
    dst = tmp_path / "medical_warehouse"
    shutil.copytree(PROJECT_DIR, dst, ignore=shutil.ignore_patterns("target", "logs"))
    return dst


def test_unchanged_inputs_skip_the_build_and_any_change_rebuilds(settings, conn, shared_sample, project):
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    scrape_telegram_data(StandInClient(posts), CHANNELS, settings.raw_data_path)
    load_raw_to_postgres(conn_params(settings), settings.raw_data_path)

    def build(**kw):
        s = run_dbt_transformations(conn_params(settings), project_dir=project, **kw)
        assert s["status"] == "success", s["failing_nodes"]
        return s

    first = build()
    assert first["build_scope"] == "all" and first["models_built"] == 25 and first["tests_passed"] > 50
    again = build()   # same project, same rows, same relations, same day: nothing to rebuild or re-test
    assert again["build_scope"] == "none" and again["models_built"] == 0 and "nothing changed" in again["build_skipped"]
    assert again["freshness"] == first["freshness"] and set(again["freshness"]) == {"raw.telegram_messages",
                                                                                    "raw.image_detections"}
    # the next day: dim_dates runs to today, so it is rebuilt, with the tests that read it
    with conn.cursor() as cur:
        cur.execute("UPDATE raw.transform_state SET built_on = built_on - 1")
    conn.commit()
    day = build()
    assert day["build_scope"].startswith("dim_dates+") and day["models_built"] == 1 and day["tests_passed"] >= 5
    assert query(conn, "SELECT max(full_date) FROM marts.dim_dates")[0][0] == \
        query(conn, "SELECT current_date")[0][0]
    assert build()["build_scope"] == "none"
    # a new message: everything downstream is rebuilt and tested
    new = [Post("CheMed123", 9001, datetime(2026, 1, 20, 9, tzinfo=timezone.utc), "Zinc 20mg\nPrice 150 birr")]
    scrape_telegram_data(StandInClient(new), ["CheMed123"], settings.raw_data_path)
    load_raw_to_postgres(conn_params(settings), settings.raw_data_path)
    s = build()
    assert s["build_scope"] == "all" and query(conn, "SELECT count(*) FROM marts.fct_messages "
                                                     "WHERE message_id = 9001")[0][0] == 1
    # an edit in place (same count, same newest time) is a change too
    with conn.cursor() as cur:
        cur.execute("UPDATE raw.telegram_messages SET views = views + 1 WHERE message_id = 9001")
    conn.commit()
    assert build()["build_scope"] == "all"
    # a warehouse table dropped by hand is rebuilt
    with conn.cursor() as cur:
        cur.execute("DROP TABLE marts.dim_channels")
    conn.commit()
    assert build()["build_scope"] == "all" and query(conn, "SELECT count(*) FROM marts.dim_channels")[0][0] == 3
    # a model edited: rebuilt and tested
    sql = project / "models" / "marts" / "dim_channels.sql"
    sql.write_text(sql.read_text() + "\n-- edited\n")
    assert build()["build_scope"] == "all"
    # a full refresh and a selection always build
    assert build(full_refresh=True)["models_built"] == 25
    assert build(select=["dim_channels"])["models_built"] == 1


def test_freshness_is_judged_at_each_runs_time_with_dbts_rule():
    now = datetime(2026, 3, 10, 12, tzinfo=timezone.utc)
    facts = {"raw.a": {"status": "pass", "max_loaded_at": (now - timedelta(days=1)).isoformat(),
                       "warn_after": 2 * 86400, "error_after": 7 * 86400},
             "raw.b": {"status": "pass", "max_loaded_at": (now - timedelta(days=3)).isoformat(),
                       "warn_after": 2 * 86400, "error_after": 7 * 86400},
             "raw.c": {"status": "warn", "max_loaded_at": (now - timedelta(days=8)).isoformat(),
                       "warn_after": 2 * 86400, "error_after": 7 * 86400},
             "raw.d": {"status": "pass", "max_loaded_at": (now - timedelta(days=30)).isoformat(),
                       "warn_after": 8 * 86400, "error_after": None},
             "raw.e": {"status": "runtime error", "max_loaded_at": None, "warn_after": None, "error_after": None}}
    assert judge_freshness(facts, now) == {"raw.a": "pass", "raw.b": "warn", "raw.c": "error", "raw.d": "warn",
                                  "raw.e": "runtime error"}


def test_a_job_with_a_transform_builds_detection_models_only_for_new_photos():
    assert stage_options("pipeline", "enrich") == {"build_models": "if_new"}
    assert stage_options("weekly", "enrich") == {"build_models": "if_new"}
    assert stage_options("enrich", "enrich") == {}   # the enrich job alone rebuilds and re-tests them


def test_photos_analysed_after_the_build_do_not_force_tomorrows_rebuild(settings, conn, shared_sample):
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")[:40]
    scrape_telegram_data(StandInClient(posts), CHANNELS, settings.raw_data_path)
    load_raw_to_postgres(conn_params(settings), settings.raw_data_path)
    assert run_dbt_transformations(conn_params(settings))["build_scope"] == "all"
    s = run_stage("enrich", replace(settings, yolo_model=str(SHARED_MODEL)), build_models="if_new")
    assert s["photos_analysed"] > 0 and s["dbt"]["status"] == "success"   # built and tested with the photos
    again = run_dbt_transformations(conn_params(settings))
    assert again["build_scope"] == "none"
    assert again["freshness"]["raw.image_detections"] == "pass"           # judged on the new detections
    n = query(conn, "SELECT count(*) FROM marts.fct_image_detections")[0][0]
    assert n == s["objects_found"] > 0
