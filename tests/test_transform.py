import psycopg2
import pytest
from helpers import query

from medical_etl.db import conn_params
from medical_etl.jobs import StageFailed, run_stage
from medical_etl.load import load_raw_to_postgres
from medical_etl.scrape.stage import scrape_telegram_data
from medical_etl.scrape.standin import Post, StandInClient, read_message_list
from medical_etl.transform import run_dbt_transformations

CHANNELS = ["CheMed123", "lobelia4cosmetics", "tikvahpharma"]


@pytest.fixture
def loaded(settings, shared_sample, tmp_path):
    """The real sample scraped into a lake and loaded into this test's database."""
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    scrape_telegram_data(StandInClient(posts), CHANNELS, settings.raw_data_path, download_photos=False)
    load_raw_to_postgres(conn_params(settings), settings.raw_data_path)
    return posts



def test_build_on_real_sample(settings, conn, loaded):
    s = run_dbt_transformations(conn_params(settings))
    assert s["status"] == "success", s["failing_nodes"]
    assert s["models_built"] >= 8 and s["tests_failed"] == 0
    assert s["unit_tests_passed"] == 1 and s["tests_passed"] > 50
    assert s["freshness"]["raw.telegram_messages"] == "pass"
    assert query(conn, "SELECT count(*) FROM marts.fct_messages")[0][0] == 276
    assert query(conn, "SELECT count(*) FROM raw.telegram_messages")[0][0] == 276
    channels = dict(query(conn, "SELECT channel_username, post_count FROM marts.dim_channels"))
    assert channels == {"CheMed123": 76, "lobelia4cosmetics": 100, "tikvahpharma": 100}
    # dim_dates covers every date the facts use
    assert query(conn, """SELECT count(*) FROM marts.fct_messages f
                      LEFT JOIN marts.dim_dates d USING (date_key) WHERE d.date_key IS NULL""")[0][0] == 0
    prices = query(conn, """SELECT message_id, product_name, price_birr FROM marts.fct_product_prices
                        WHERE channel_username = 'lobelia4cosmetics' AND message_id = 22905""")
    assert prices == [(22905, "ENSURE 850GM", 5000)]
    # no delivery fee or salary became a price
    assert query(conn, """SELECT count(*) FROM marts.fct_product_prices
                      WHERE source_line ~* '(deliver|ትራንስፖርት)' OR message_id IN (188963, 188929)""")[0][0] == 0
    # a bare "Price 7500" under the product is birr; the job advert line is not a product
    assert query(conn, """SELECT product_name, price_birr FROM marts.fct_product_prices
                      WHERE channel_username = 'lobelia4cosmetics' AND message_id = 22878""") == [
        ("Ashwagandha 180 tablets", 7500)]
    assert query(conn, """SELECT count(*) FROM marts.fct_product_prices
                      WHERE source_line ~* '(butagera|arbaminch)'""")[0][0] == 0
    n_prices, n_posts = query(conn, "SELECT count(*), count(DISTINCT message_key) FROM marts.fct_product_prices")[0]
    assert n_prices > 500 and n_posts > 100
    assert query(conn, "SELECT sum(price_count) FROM marts.fct_messages")[0][0] == n_prices


def test_incremental_run_touches_only_new_rows(settings, conn, loaded):
    run_dbt_transformations(conn_params(settings))
    before = dict(query(conn, "SELECT message_key, source_updated_at FROM marts.fct_messages"))
    from datetime import datetime, timezone

    new = [Post("CheMed123", 5000 + i, datetime(2026, 1, 20, 9, i, tzinfo=timezone.utc),
                f"Vitamin D3 1000IU {i}\nPrice {100 + i} birr", views=5) for i in range(3)]
    scrape_telegram_data(StandInClient(new), ["CheMed123"], settings.raw_data_path)
    assert load_raw_to_postgres(conn_params(settings), settings.raw_data_path)["rows_inserted"] == 3
    s = run_dbt_transformations(conn_params(settings))
    assert s["status"] == "success"
    after = dict(query(conn, "SELECT message_key, source_updated_at FROM marts.fct_messages"))
    assert len(after) == 279 and all(after[k] == v for k, v in before.items())
    rows = query(conn, """SELECT product_name, price_birr FROM marts.fct_product_prices
                      WHERE channel_username = 'CheMed123' AND message_id >= 5000
                      ORDER BY price_birr""")
    assert rows == [("Vitamin D3 1000IU 0", 100), ("Vitamin D3 1000IU 1", 101), ("Vitamin D3 1000IU 2", 102)]
    full = run_dbt_transformations(conn_params(settings), full_refresh=True)
    assert full["status"] == "success" and full["full_refresh"]
    assert query(conn, "SELECT count(*) FROM marts.fct_messages")[0][0] == 279


def test_post_edited_to_hold_no_price_loses_its_price_rows(settings, conn, loaded):
    run_dbt_transformations(conn_params(settings), check_freshness=False)
    key = "channel = 'lobelia4cosmetics' AND message_id = 22905"
    assert query(conn, "SELECT count(*) FROM marts.fct_product_prices WHERE channel_username = 'lobelia4cosmetics' "
                       "AND message_id = 22905")[0][0] == 1
    with conn.cursor() as cur:
        cur.execute(f"UPDATE raw.telegram_messages SET message_text = 'ENSURE 850GM sold out', updated_at = now() "
                    f"WHERE {key}")
    conn.commit()
    assert run_dbt_transformations(conn_params(settings), check_freshness=False)["status"] == "success"
    assert query(conn, "SELECT count(*) FROM marts.fct_product_prices WHERE channel_username = 'lobelia4cosmetics' "
                       "AND message_id = 22905")[0][0] == 0
    assert query(conn, "SELECT price_count FROM marts.fct_messages WHERE channel_username = 'lobelia4cosmetics' "
                       "AND message_id = 22905")[0][0] == 0


def test_future_dated_row_fails_the_stage_naming_the_test(settings, conn, loaded):
    with conn.cursor() as cur:
        cur.execute("""UPDATE raw.telegram_messages SET message_date = now() + interval '30 days',
                       updated_at = now() WHERE channel = 'CheMed123' AND message_id = 10""")
    conn.commit()
    with pytest.raises(StageFailed) as info:
        run_stage("transform", settings)
    assert "assert_no_future_posts" in str(info.value)
    failing = [n["node"] for n in info.value.summary["failing_nodes"]]
    assert any("assert_no_future_posts" in n for n in failing)
    import json

    record = [json.loads(line) for line in (settings.logs_path / "runs.jsonl").read_text().splitlines()][-1]
    assert record["stage"] == "transform" and record["status"] == "failed"
    assert "assert_no_future_posts" in record["error"]["message"]


def test_transform_script_exit_code(settings, loaded):
    import subprocess
    import sys

    from helpers import REPO, settings_env

    r = subprocess.run([sys.executable, str(REPO / "scripts/run_dbt_transformations.py")],
                       env=settings_env(settings), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    c = psycopg2.connect(host=settings.db_host, port=settings.db_port, dbname=settings.db_name,
                         user=settings.db_user)
    assert query(c, "SELECT count(*) FROM marts.fct_messages")[0][0] == 276
    c.close()


def test_imported_and_scraped_channels_fill_the_same_columns(settings, conn, tmp_path):
    """A Telegram Desktop export keeps edit time, media type and status, and forward origin through
    load (raw table) and staging, like a scraped channel."""
    import json
    from datetime import datetime, timezone

    from medical_etl.scrape.stage import import_telegram_export

    not_included = "(File not included. Change data exporting settings to download.)"
    export = tmp_path / "exported"
    (export / "photos").mkdir(parents=True)
    (export / "photos" / "p.jpg").write_bytes(b"\xff\xd8 photo")
    msgs = [
        {"id": 1, "type": "message", "date": "2026-01-10T08:00:00", "date_unixtime": "1768032000",
         "edited": "2026-01-10T09:00:00", "edited_unixtime": "1768035600", "text": "Price 7500", "photo": "photos/p.jpg"},
        {"id": 2, "type": "message", "date": "2026-01-10T08:05:00", "date_unixtime": "1768032300",
         "forwarded_from": "Tikvah | Pharma", "text": "fwd", "file": not_included, "media_type": "video_file"},
        {"id": 3, "type": "message", "date": "2026-01-10T08:10:00", "date_unixtime": "1768032600", "text": "plain"},
    ]
    (export / "result.json").write_text(json.dumps({"name": "Exported", "messages": msgs}), encoding="utf-8")
    import_telegram_export(export, settings.raw_data_path, "exportedchan")
    scraped = [Post("scrapedchan", 1, datetime(2026, 1, 10, 8, tzinfo=timezone.utc), "x",
                    edit_date=datetime(2026, 1, 10, 9, tzinfo=timezone.utc), media_type="voice",
                    media_unavailable=None, forward_from_id=777, forward_from_name="Origin")]
    scrape_telegram_data(StandInClient(scraped), ["scrapedchan"], settings.raw_data_path)
    assert load_raw_to_postgres(conn_params(settings), settings.raw_data_path)["rows_inserted"] == 4
    s = run_dbt_transformations(conn_params(settings), select=["stg_telegram_messages"])
    assert s["status"] == "success", s["failing_nodes"]
    rows = query(conn, """SELECT channel_username, message_id, is_edited, edit_date, media_type, media_status,
                                 is_forwarded, forward_from_id, forward_from_name, has_image
                          FROM staging.stg_telegram_messages ORDER BY 1, 2""")
    edited = datetime(2026, 1, 10, 9, tzinfo=timezone.utc)
    assert rows == [
        ("exportedchan", 1, True, edited, "photo", "saved", False, None, None, True),
        ("exportedchan", 2, False, None, "video", "not_included", True, None, "Tikvah | Pharma", False),
        ("exportedchan", 3, False, None, None, None, False, None, None, False),
        ("scrapedchan", 1, True, edited, "voice", "not_saved", True, 777, "Origin", False),
    ]
