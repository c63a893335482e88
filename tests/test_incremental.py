"""Stage 3 at scale: the marts after any sequence of incremental builds are those of a full refresh of the
same raw rows, and a daily build rewrites only what its new posts touch."""
import json
from datetime import datetime, timezone

import pytest
from helpers import query

from medical_etl.db import conn_params
from medical_etl.jobs import run_stage
from medical_etl.load import load_raw_to_postgres
from medical_etl.scrape.stage import scrape_telegram_data
from medical_etl.scrape.standin import Post, StandInClient, read_message_list
from medical_etl.transform import run_dbt_transformations

CHANNELS = ["CheMed123", "lobelia4cosmetics", "tikvahpharma"]


@pytest.fixture
def loaded(settings, shared_sample):
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    scrape_telegram_data(StandInClient(posts), CHANNELS, settings.raw_data_path, download_photos=False)
    load_raw_to_postgres(conn_params(settings), settings.raw_data_path)
    return posts


def build(settings, full_refresh: bool = False) -> dict:
    s = run_dbt_transformations(conn_params(settings), full_refresh=full_refresh, check_freshness=False)
    assert s["status"] == "success", s["failing_nodes"]
    return s


def marts(conn) -> dict[str, list[tuple]]:
    """Every mart's rows, sorted, without the audit column (built_at: when a row was written)."""
    out = {}
    for (table,) in query(conn, """SELECT table_name FROM information_schema.tables
                                   WHERE table_schema = 'marts' AND table_type = 'BASE TABLE' ORDER BY 1"""):
        cols = [c for (c,) in query(conn, """SELECT column_name FROM information_schema.columns
                                             WHERE table_schema = 'marts' AND table_name = %s AND column_name <> 'built_at'
                                             ORDER BY ordinal_position""", (table,))]
        listed = ", ".join(f'"{c}"::text' for c in cols)
        out[table] = query(conn, f'SELECT {listed} FROM marts."{table}" ORDER BY {listed}')
    return out


def assert_same_as_full_refresh(settings, conn) -> dict:
    incremental = marts(conn)
    build(settings, full_refresh=True)
    full = marts(conn)
    assert incremental.keys() == full.keys()
    for table in full:
        assert incremental[table] == full[table], f"{table}: incremental builds differ from a full refresh"
    return full


def new_posts(settings, channel: str, first_id: int, texts: list[str], day: datetime) -> None:
    posts = [Post(channel, first_id + i, day.replace(minute=i), text, views=3 + i) for i, text in enumerate(texts)]
    scrape_telegram_data(StandInClient(posts), [channel], settings.raw_data_path)
    assert load_raw_to_postgres(conn_params(settings), settings.raw_data_path)["rows_inserted"] == len(texts)


def add_analysis(conn, channel: str, message_id: int, model: str, classes: list[str]) -> None:
    with conn.cursor() as cur:
        cur.execute("""INSERT INTO raw.image_analyses (channel, message_id, model, image_path, status, n_objects,
                                                       image_width, image_height)
                       VALUES (%s, %s, %s, 'images/x.jpg', %s, %s, 640, 480)""",
                    (channel, message_id, model, "ok" if classes else "no_objects", len(classes)))
        for i, cls in enumerate(classes):
            cur.execute("""INSERT INTO raw.image_detections (channel, message_id, model, object_index, image_path,
                                                             class_id, class_name, confidence, x1, y1, x2, y2,
                                                             image_width, image_height)
                           VALUES (%s, %s, %s, %s, 'images/x.jpg', %s, %s, 0.8, 10, 10, 200, 200, 640, 480)""",
                        (channel, message_id, model, i, 39 + i, cls))
    conn.commit()


def test_incremental_builds_equal_a_full_refresh(settings, conn, loaded):
    build(settings)
    # new posts: a price list on a new day, a repeat of a product at another price, a post with no price
    new_posts(settings, "CheMed123", 90_000, [
        "Amoxicillin 500mg capsule 150 birr\nParacetamol 500 mg tab 40 birr\nAzitromicin 500 - 320 ETB",
        "Amoxicillin 500 mg caps\nPrice 170 birr", "Open on Sunday"], datetime(2026, 1, 20, 9, tzinfo=timezone.utc))
    build(settings)

    # edits: one post's products and prices change, another loses its only price, one gains some
    priced = query(conn, """SELECT channel_username, message_id FROM marts.fct_messages WHERE price_count > 1
                            ORDER BY message_id LIMIT 2""")
    unpriced = query(conn, """SELECT channel_username, message_id FROM marts.fct_messages WHERE price_count = 0
                              ORDER BY message_id LIMIT 1""")[0]
    with conn.cursor() as cur:
        cur.execute("""UPDATE raw.telegram_messages SET message_text = 'Ibuprofen 400mg 60 birr\nMetformin 500mg 90 birr',
                       updated_at = now() WHERE channel = %s AND message_id = %s""", priced[0])
        cur.execute("UPDATE raw.telegram_messages SET message_text = 'sold out', updated_at = now() "
                    "WHERE channel = %s AND message_id = %s", priced[1])
        cur.execute("UPDATE raw.telegram_messages SET message_text = 'Cetirizine 10mg 55 birr', updated_at = now() "
                    "WHERE channel = %s AND message_id = %s", unpriced)
    conn.commit()
    build(settings)

    # a row of the same post under the username's other case, scraped later: it wins the deduplication
    channel, message_id = priced[0]
    with conn.cursor() as cur:
        cur.execute("""INSERT INTO raw.telegram_messages (channel, message_id, channel_title, message_date, message_text,
                                                          views, scraped_at, source_file)
                       SELECT lower(channel), message_id, channel_title, message_date, 'Omeprazole 20mg 80 birr',
                              views + 1, now(), 'telegram_messages/late/lower.json'
                       FROM raw.telegram_messages WHERE channel = %s AND message_id = %s""", (channel, message_id))
    conn.commit()
    build(settings)
    assert query(conn, "SELECT channel_username FROM marts.fct_messages WHERE message_id = %s AND "
                       "lower(channel_username) = lower(%s)", (message_id, channel)) == [(channel.lower(),)]

    # photos analysed by one model, then again by a second
    photo = query(conn, "SELECT channel_username, message_id FROM marts.fct_messages ORDER BY message_id LIMIT 1")[0]
    add_analysis(conn, *photo, "yolov8n@aaaa", ["person", "bottle"])
    build(settings)
    add_analysis(conn, *photo, "yolov8s@bbbb", ["bottle"])
    build(settings)

    full = assert_same_as_full_refresh(settings, conn)
    assert len(full["fct_messages"]) == 279 and full["fct_image_detections"]

    # a deletion reaches the marts by the weekly run (a full refresh); the daily builds after it still agree
    with conn.cursor() as cur:
        cur.execute("DELETE FROM raw.telegram_messages WHERE lower(channel) = 'chemed123' AND message_id = 90001")
    conn.commit()
    build(settings, full_refresh=True)
    for table in ("fct_messages", "fct_product_prices", "search_messages"):
        assert query(conn, f"SELECT count(*) FROM marts.{table} WHERE dedup_key = 'chemed123/90001'")[0][0] == 0
    new_posts(settings, "tikvahpharma", 950_000, ["Amoxicillin 500mg capsule 160 birr"],
              datetime(2026, 1, 21, 8, tzinfo=timezone.utc))
    build(settings)
    assert_same_as_full_refresh(settings, conn)


def test_daily_build_rewrites_only_what_its_posts_touch(settings, conn, loaded):
    build(settings)
    before = {t: query(conn, f"SELECT count(*), max(built_at) FROM marts.{t}")[0]
              for t in ("fct_messages", "fct_product_prices", "agg_product_daily", "agg_channel_daily",
                        "agg_product_prices", "search_messages")}
    new_posts(settings, "lobelia4cosmetics", 80_000, ["Amoxicillin 500mg capsule 150 birr\nCetaphil cream 900 birr",
                                                      "Open on Sunday"], datetime(2026, 1, 22, 9, tzinfo=timezone.utc))
    s = run_stage("transform", settings, check_freshness=False)  # as a job runs it: with its run-log record

    def rewritten(table, what="*"):
        return query(conn, f"SELECT {what} FROM marts.{table} WHERE built_at > %s", (before[table][1],))

    assert len(rewritten("fct_messages")) == 2 and len(rewritten("search_messages")) == 2
    assert len(rewritten("fct_product_prices")) == 2
    # the rollups: only the new posts' day, and only the products they name
    assert {d for (d,) in rewritten("agg_product_daily", "DISTINCT date_day::text")} == {"2026-01-22"}
    assert {d for (d,) in rewritten("agg_channel_daily", "DISTINCT date_day::text")} == {"2026-01-22"}
    products = {k for (k,) in query(conn, "SELECT DISTINCT product_key FROM marts.fct_product_prices "
                                          "WHERE channel_username = 'lobelia4cosmetics' AND message_id >= 80000")}
    assert len(products) == 2
    assert {k for (k,) in rewritten("agg_product_prices", "DISTINCT product_key")} == products
    # the rest kept its rows
    for table in ("fct_messages", "agg_channel_daily"):
        assert query(conn, f"SELECT count(*) FROM marts.{table} WHERE built_at = %s",
                     (before[table][1],))[0][0] == before[table][0]
    # the run log keeps the build's five slowest models (not every node)
    assert s["full_refresh"] is False and len(s["slowest_models"]) == 5
    record = json.loads((settings.logs_path / "runs.jsonl").read_text().splitlines()[-1])
    assert record["stage"] == "transform" and "nodes" not in record["metrics"]
    assert record["metrics"]["slowest_models"] == s["slowest_models"]
    assert all(set(m) == {"model", "seconds"} for m in s["slowest_models"])
    seconds = [m["seconds"] for m in s["slowest_models"]]
    assert seconds == sorted(seconds, reverse=True)


def test_statistics_are_refreshed_when_stale_and_only_then(settings, conn, loaded):
    """Autovacuum may be off (it is on this project's servers): the loader analyses raw after a load that
    changed enough of it, and the marts are analysed when built and when enough of them changed."""
    from medical_etl.db import analyze_if_stale

    def analysed(table):
        return query(conn, "SELECT coalesce(last_analyze, last_autoanalyze) FROM pg_stat_user_tables "
                           "WHERE relid = %s::regclass", (table,))[0][0]

    assert analysed("raw.telegram_messages") is not None  # the first load: a table without statistics
    build(settings)
    assert analysed("marts.fct_messages") is not None and analysed("marts.agg_product_daily") is not None
    with conn.cursor() as cur:
        cur.execute("ANALYZE raw.telegram_messages")
    conn.commit()
    first = analysed("raw.telegram_messages")
    assert analyze_if_stale(conn, ["raw.telegram_messages"]) == [] and analysed("raw.telegram_messages") == first
    # the table doubled (more than a tenth, and over the floor of 100 rows): analysed again
    with conn.cursor() as cur:
        cur.execute("""INSERT INTO raw.telegram_messages (channel, message_id, message_date, message_text, source_file)
                       SELECT channel, message_id + 10000000, message_date, message_text, 'x.json'
                       FROM raw.telegram_messages""")
    conn.commit()
    query(conn, "SELECT pg_stat_force_next_flush()")  # this session's writes counted when it is idle next
    conn.commit()
    assert analyze_if_stale(conn, ["raw.telegram_messages"]) == ["raw.telegram_messages"]
    assert analysed("raw.telegram_messages") > first
