"""The analytical API against a real warehouse built from the shared sample; every answer is checked
against SQL written here, independently of the API's queries and rollups."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal

import psycopg2
import pytest
from fastapi.testclient import TestClient
from helpers import REPO, query, settings_env, stop_embedded_server

from medical_etl.api.app import create_app
from medical_etl.api.settings import ApiSettings
from medical_etl.db import ConnParams

KEY = "k-0123456789abcdef-api-test"


@pytest.fixture(scope="module")
def wh(sample_warehouse):
    return sample_warehouse


@pytest.fixture(scope="module")
def db(wh):
    c = psycopg2.connect(**wh.params.kwargs())
    yield c
    c.close()


@pytest.fixture(scope="module")
def client(wh):
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)
    with TestClient(app) as c:
        yield c


def ok(client, url, **kw):
    r = client.get(url, **kw)
    assert r.status_code == 200, (url, r.status_code, r.text[:500])
    return r.json()


def num(v):
    return float(v) if isinstance(v, Decimal) else v


# --- reports -------------------------------------------------------------------------------------

# the facts with their product's name as the API names it (dim_products.product_name, lower case)
PRICES = """(SELECT f.*, lower(d.product_name) AS product_name_normalized, d.generic_name, d.product_kind
             FROM marts.fct_product_prices AS f JOIN marts.dim_products AS d USING (product_key)) AS fp"""

TOP_SQL = """
    SELECT product_name_normalized, count(*), min(price_birr),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY price_birr), max(price_birr),
           array_agg(DISTINCT channel_username ORDER BY channel_username)
    FROM """ + PRICES + """
    WHERE channel_username = coalesce(%(c)s, channel_username)
      AND message_date >= coalesce(%(lo)s::timestamptz, '-infinity')
      AND message_date < coalesce(%(hi)s::timestamptz, 'infinity')
    GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %(n)s OFFSET %(off)s"""


def _top(r):
    return [(p["product"], p["mentions"], p["min_price_birr"], p["median_price_birr"], p["max_price_birr"],
             p["channels"]) for p in r["items"]]


def _top_sql(db, c=None, lo=None, hi=None, n=10, off=0):
    return [(p, n_, num(lo_), round(float(med), 2), num(hi_), chans)
            for p, n_, lo_, med, hi_, chans in query(db, TOP_SQL, dict(c=c, lo=lo, hi=hi, n=n, off=off))]


def test_top_products_match_sql(client, db):
    r = ok(client, "/api/reports/top-products?limit=10")
    assert r["currency"] == "ETB" and len(r["items"]) == 10
    assert _top(r) == _top_sql(db)
    assert r["page"]["total"] == query(db, f"SELECT count(DISTINCT product_name_normalized) FROM {PRICES}")[0][0]
    page2 = ok(client, "/api/reports/top-products?limit=10&offset=10")
    assert _top(page2) == _top_sql(db, off=10) and page2["page"]["next_offset"] == 20

    r = ok(client, "/api/reports/top-products?limit=5&channel=lobelia4cosmetics")
    assert _top(r) == _top_sql(db, c="lobelia4cosmetics", n=5)
    assert all(p["channels"] == ["lobelia4cosmetics"] for p in r["items"])

    r = ok(client, "/api/reports/top-products?limit=8&since=2026-01-13&until=2026-01-14")
    assert _top(r) == _top_sql(db, lo="2026-01-13", hi="2026-01-15", n=8)
    assert all("2026-01-13" <= p["first_seen_at"][:10] <= p["last_seen_at"][:10] <= "2026-01-14" for p in r["items"])


def test_price_history_matches_sql(client, db):
    # a product's name that is no generic's (a generic's name gives all its products: the next test)
    (name,) = query(db, f"""SELECT product_name_normalized FROM {PRICES}
                            WHERE product_name_normalized NOT IN (SELECT generic_name FROM marts.dim_products
                                                                  WHERE generic_name IS NOT NULL) GROUP BY 1
                           HAVING count(DISTINCT message_date::date) > 2 ORDER BY count(*) DESC, 1 LIMIT 1""")[0]
    r = ok(client, f"/api/products/{urllib.request.quote(name.upper())}/prices")  # any case finds it
    expected = query(db, f"""
        SELECT (message_date AT TIME ZONE 'UTC')::date, channel_username, count(*), min(price_birr),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY price_birr), max(price_birr)
        FROM {PRICES} WHERE product_name_normalized = %s GROUP BY 1, 2 ORDER BY 1, 2""", (name,))
    got = [(p["date"], p["channel"], p["mentions"], p["min_price_birr"], p["median_price_birr"], p["max_price_birr"])
           for p in r["points"]]
    assert got == [(d.isoformat(), c, n, num(lo), round(float(m), 2), num(hi)) for d, c, n, lo, m, hi in expected]
    assert r["product"] == name and r["currency"] == "ETB" and len(got) > 2
    first_day = expected[1][0].isoformat()
    later = ok(client, f"/api/products/{urllib.request.quote(name)}/prices?since={first_day}")
    assert [p["date"] for p in later["points"]] == [d.isoformat() for d, *_ in expected if d.isoformat() >= first_day]


def test_price_history_of_a_name_with_a_slash(client, db):
    (name, n) = query(db, f"""SELECT product_name_normalized, count(*) FROM {PRICES}
                             WHERE product_name_normalized LIKE '%%/%%' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1""")[0]
    r = ok(client, f"/api/products/{urllib.request.quote(name, safe='')}/prices")
    assert r["product"] == name and sum(p["mentions"] for p in r["points"]) == n


def test_top_products_by_generic_and_kind_match_sql(client, db):
    r = ok(client, "/api/reports/top-products?group=generic&limit=5")
    expected = query(db, f"""SELECT generic_name, count(*), count(DISTINCT product_key) FROM {PRICES}
                             WHERE generic_name IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5""")
    assert [(p["product"], p["mentions"], p["products"]) for p in r["items"]] == expected
    assert all(p["product_kind"] == "medicine" and p["generic_name"] == p["product"] for p in r["items"])
    assert any(p["products"] > 1 for p in r["items"])  # a generic gathers several products
    devices = ok(client, "/api/reports/top-products?kind=device&limit=200")["items"]
    assert devices and all(p["product_kind"] == "device" and p["generic_name"] is None for p in devices)
    assert len(devices) == query(db, f"SELECT count(DISTINCT product_key) FROM {PRICES} WHERE product_kind = 'device'")[0][0]
    generic = expected[0][0]
    of_generic = ok(client, f"/api/reports/top-products?generic={urllib.request.quote(generic.upper())}&limit=200")
    assert {p["generic_name"] for p in of_generic["items"]} == {generic} and len(of_generic["items"]) == expected[0][2]
    # the price history of a generic covers all its products
    h = ok(client, f"/api/products/{urllib.request.quote(generic)}/prices")
    assert h["matched"] == "generic" and h["generic_name"] == generic and len(h["products"]) == expected[0][2]
    assert sum(p["mentions"] for p in h["points"]) == expected[0][1]


def test_channels_and_activity_match_sql(client, db):
    r = ok(client, "/api/channels")
    expected = query(db, """SELECT channel_username, count(*), count(*) FILTER (WHERE has_image) FROM marts.fct_messages
                            GROUP BY 1 ORDER BY 2 DESC, 1""")
    assert [(c["channel"], c["posts"], c["photo_posts"]) for c in r["items"]] == expected
    assert r["page"]["total"] == 3
    assert [c["channel"] for c in ok(client, "/api/channels?limit=1&offset=1")["items"]] == [expected[1][0]]

    for granularity, bucket in (("day", "(message_date AT TIME ZONE 'UTC')::date"),
                                ("week", "date_trunc('week', (message_date AT TIME ZONE 'UTC')::date)::date")):
        r = ok(client, f"/api/channels/CheMed123/activity?granularity={granularity}")
        rows = query(db, f"""SELECT {bucket}, count(*), sum(views), count(*) FILTER (WHERE has_image),
                                    sum(price_count), count(*) FILTER (WHERE price_count > 0)
                             FROM marts.fct_messages WHERE channel_username = 'CheMed123' GROUP BY 1 ORDER BY 1""")
        got = [(p["period_start"], p["posts"], p["views"], p["photo_posts"], p["prices_posted"], p["posts_with_prices"])
               for p in r["periods"]]
        assert got == [(d.isoformat(), n, int(v), ph, int(pr), pp) for d, n, v, ph, pr, pp in rows]
        assert all(abs(p["photo_share"] - p["photo_posts"] / p["posts"]) < 1e-3 for p in r["periods"])
    assert sum(p["posts"] for p in r["periods"]) == 76
    days = ok(client, "/api/channels/tikvahpharma/activity?since=2026-01-12&until=2026-01-13")["periods"]
    assert [p["period_start"] for p in days] == ["2026-01-12", "2026-01-13"]


def test_visual_content_matches_sql(client, db):
    r = ok(client, "/api/reports/visual-content?top_classes=5")
    cats = query(db, "SELECT channel_username, image_category, count(*) FROM marts.fct_image_categories GROUP BY 1, 2")
    expected = {}
    for ch, cat, n in cats:
        expected.setdefault(ch, {}).update({cat: n})
    for c in r["channels"]:
        assert {k: v for k, v in c["categories"].items() if v} == expected[c["channel"]]
        assert c["photos_analysed"] == sum(expected[c["channel"]].values())
        assert abs(sum(c["category_share"].values()) - 1) < 1e-3
    shares = [c["photo_share"] for c in r["channels"]]
    assert shares == sorted(shares, reverse=True) and len(shares) == 3
    classes = query(db, """SELECT class_name, count(*), count(DISTINCT message_key) FROM marts.fct_image_detections
                           GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5""")
    assert [(c["class_name"], c["objects"], c["photos"]) for c in r["top_classes"]] == classes


# --- search ------------------------------------------------------------------------------------------

def _all_pages(client, q, limit=3, **params):
    items, cursor, pages = [], None, 0
    while True:
        url = f"/api/search/messages?query={urllib.request.quote(q)}&limit={limit}" + \
              "".join(f"&{k}={v}" for k, v in params.items()) + (f"&cursor={cursor}" if cursor else "")
        r = ok(client, url)
        items += r["items"]
        pages += 1
        cursor = r["next_cursor"]
        if not cursor:
            return r["total"], items, pages


@pytest.mark.parametrize("word", ["vitamin", "መድሀኒት", "ዋጋ"])
def test_search_english_and_amharic(client, db, word):
    expected = {(c, m) for c, m in query(db, """
        SELECT channel_username, message_id FROM marts.fct_messages
        WHERE message_text ~* ('(^|[^[:alnum:]])' || %s || '($|[^[:alnum:]])')""", (word,))}
    assert len(expected) >= 2
    total, items, pages = _all_pages(client, word)
    assert total == len(expected) and pages > 1
    assert {(h["channel"], h["message_id"]) for h in items} == expected  # every match, each once, over the pages
    assert len(items) == len(expected)
    ranks = [h["rank"] for h in items]
    assert ranks == sorted(ranks, reverse=True)
    assert all(f"«{word}»" in h["snippet"].lower() or f"«{word.capitalize()}»" in h["snippet"] for h in items)


def test_search_filters_phrases_and_uses_the_index(client, db, wh):
    r = ok(client, "/api/search/messages?query=vitamin&channel=CheMed123&limit=100")
    assert r["items"] and all(h["channel"] == "CheMed123" for h in r["items"])
    r = ok(client, '/api/search/messages?query=' + urllib.request.quote('"nature made" -xyzzy') + "&limit=100")
    assert r["items"] and all("nature made" in h["text"].lower() for h in r["items"])
    assert ok(client, "/api/search/messages?query=zzqqxxnotaword")["total"] == 0
    with psycopg2.connect(**wh.params.kwargs()) as c, c.cursor() as cur:
        cur.execute("SET enable_seqscan = off")
        cur.execute("""EXPLAIN SELECT message_key FROM marts.search_messages
                       WHERE search_vector @@ websearch_to_tsquery('simple', 'vitamin')""")
        plan = "\n".join(r[0] for r in cur.fetchall())
    assert "Bitmap Index Scan" in plan and "search_vector" in plan


# --- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url,status,param", [
    ("/api/channels/no_such_channel/activity", 404, None),
    ("/api/reports/top-products?channel=no_such_channel", 404, None),
    ("/api/products/no%20such%20product/prices", 404, None),
    ("/api/search/messages?query=vitamin&channel=nope", 404, None),
    ("/api/nothing/here", 404, None),
    ("/api/reports/top-products?limit=0", 422, "limit"),
    ("/api/reports/top-products?limit=abc", 422, "limit"),
    ("/api/reports/top-products?since=2026-13-01", 422, "since"),
    ("/api/reports/top-products?since=2026-01-10&until=2026-01-01", 422, "until"),
    ("/api/channels/CheMed123/activity?granularity=month", 422, "granularity"),
    ("/api/search/messages", 422, "query"),
    ("/api/search/messages?query=%20", 422, "query"),
    ("/api/search/messages?query=a&cursor=notacursor", 422, "cursor"),
])
def test_errors_are_json_with_a_message(client, url, status, param):
    r = client.get(url)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and body["error"] and "Traceback" not in r.text
    if param:
        assert body["parameter"] == param and param in body["error"]
    if status == 404 and "no_such_channel" in url:
        assert "no_such_channel" in body["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_unreachable_is_503(wh):
    dead = ConnParams("127.0.0.1", _free_port(), "nowhere", "postgres")
    app = create_app(dead, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)
    with TestClient(app, raise_server_exceptions=False) as c:
        for url in ("/api/reports/top-products", "/api/channels", "/api/search/messages?query=x",
                    "/api/reports/visual-content", "/health"):
            r = c.get(url)
            assert r.status_code == 503, (url, r.text)
            assert "Traceback" not in r.text and "psycopg2" not in r.text
        assert "unreachable" in c.get("/api/channels").json()["error"]
        status = c.get("/api/pipeline/status")  # the lake and run-log parts still answer
        assert status.status_code == 200
        s = status.json()
        assert s["database"]["reachable"] is False and s["assets"][0]["metadata"]["messages"] == 276


def test_warehouse_not_built_is_503(pg_admin, tmp_path):
    from helpers import scratch_database

    with scratch_database(pg_admin) as empty:
        app = create_app(empty, logs_path=tmp_path, lake_path=tmp_path)
        with TestClient(app) as c:
            r = c.get("/api/channels")
            assert r.status_code == 503 and "not been built" in r.json()["error"]
            assert c.get("/health").status_code == 200


# --- access ------------------------------------------------------------------------------------------

def test_keys_rate_limit_and_keys_never_logged(wh, caplog):
    api = ApiSettings(keys=(KEY, "another-key-of-16-chars"), rate_limit_per_min=5)
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path, api=api)
    caplog.set_level(logging.DEBUG)
    with TestClient(app) as c:
        assert c.get("/api/channels").status_code == 401
        assert c.get("/api/channels", headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401
        assert c.get("/api/channels", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
        r = c.get("/api/channels", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and KEY not in r.text
        good = {"Authorization": f"Bearer {KEY}"}
        codes = [c.get("/api/channels", headers=good).status_code for _ in range(7)]
        assert codes == [200] * 5 + [429] * 2
        r = c.get("/api/channels", headers=good)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["error"]
        # the limit is per key: the other key still gets through
        assert c.get("/api/channels", headers={"Authorization": "Bearer another-key-of-16-chars"}).status_code == 200
        assert c.get("/health").status_code == 200  # probes need no key
        assert c.get("/").status_code == 200
    assert KEY not in caplog.text


def test_cors_off_unless_configured(wh):
    origin = {"Origin": "http://analyst.example"}
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)
    with TestClient(app) as c:
        assert "access-control-allow-origin" not in c.get("/api/channels", headers=origin).headers
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path,
                     api=ApiSettings(cors_origins=("http://analyst.example",)))
    with TestClient(app) as c:
        r = c.get("/api/channels", headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://analyst.example"


def test_the_api_connection_is_read_only(client, db):
    before = query(db, "SELECT count(*) FROM marts.fct_messages")[0][0]
    pool = client.app.state.pool
    for statement in ("DELETE FROM marts.fct_messages", "CREATE TABLE marts.api_probe (i int)",
                      "UPDATE raw.telegram_messages SET views = 0"):
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            with pool.cursor() as cur:
                cur.execute(statement)
    assert query(db, "SELECT count(*) FROM marts.fct_messages")[0][0] == before
    assert ok(client, "/api/channels")["page"]["total"] == 3  # the pool still serves


# --- serve -------------------------------------------------------------------------------------------

def test_serve_refuses_a_public_address_without_keys(wh):
    env = settings_env(wh.settings)
    env.update(API_HOST="0.0.0.0", API_PORT=str(_free_port()))
    env.pop("API_KEYS", None)
    r = subprocess.run([sys.executable, "-m", "medical_etl", "serve"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "API_KEYS" in r.stderr


def test_serve_on_loopback_with_keys_from_the_environment(wh):
    port = _free_port()
    env = settings_env(wh.settings)
    env.update(API_PORT=str(port), API_KEYS=KEY)
    proc = subprocess.Popen([sys.executable, "-m", "medical_etl", "serve"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(150):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        req = urllib.request.Request(f"{base}/api/channels", headers={"Authorization": f"Bearer {KEY}"})
        assert b'"lobelia4cosmetics"' in urllib.request.urlopen(req, timeout=10).read()
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{base}/api/channels", timeout=10)
        assert denied.value.code == 401
        page = urllib.request.urlopen(f"{base}/", timeout=10).read().decode()
        assert "/static/echarts.min.js" in page and "cdn" not in page.lower()
        assert urllib.request.urlopen(f"{base}/openapi.json", timeout=10).status == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "Application startup complete" in out
    assert KEY not in out


def test_serve_against_the_embedded_postgresql(tmp_path):
    """DB_HOST empty: serve starts (or reuses) the embedded server, like every other command."""
    port = _free_port()
    env = {k: v for k, v in settings_env_base().items() if not k.startswith(("DB_", "API_"))}
    env.update(DB_HOST="", EMBEDDED_PG_PATH=str(tmp_path / "pg"), DB_NAME="medical_warehouse",
               RAW_DATA_PATH=str(tmp_path / "raw"), LOGS_PATH=str(tmp_path / "logs"), API_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "medical_etl", "serve"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        health = None
        for _ in range(300):
            try:
                health = json.loads(urllib.request.urlopen(f"{base}/health", timeout=2).read())
                break
            except OSError:
                time.sleep(0.2)
        assert health == {"status": "ok", "database": "ok", "version": health["version"]}
        with pytest.raises(urllib.error.HTTPError) as not_built:
            urllib.request.urlopen(f"{base}/api/channels", timeout=10)
        assert not_built.value.code == 503 and b"not been built" in not_built.value.read()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]

        stop_embedded_server(tmp_path / "pg")
    assert "embedded database" in out


def settings_env_base() -> dict:
    import os

    return dict(os.environ, PYTHONPATH=str(REPO))


# --- bad input and settings that must not make things worse -----------------------------------------

@pytest.mark.parametrize("url,param", [
    ("/api/search/messages?query=vita%00min", "query"),
    ("/api/reports/top-products?channel=CheMed%00123", "channel"),
    ("/api/products/para%00cetamol/prices", "name"),
    ("/api/channels/CheMed%00123/activity", "channel"),
])
def test_a_nul_in_a_string_parameter_is_422_naming_it(pg_database, tmp_path, caplog, url, param):
    # PostgreSQL cannot take a NUL in a string: refused before any endpoint runs, so an empty database will do
    app = create_app(pg_database, logs_path=tmp_path, lake_path=tmp_path)
    caplog.set_level(logging.DEBUG)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get(url)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["parameter"] == param and "NUL" in body["error"] and f"'{param}'" in body["error"]
    assert "\x00" not in caplog.text and "\x00" not in r.text


def test_failed_authentications_are_throttled_per_address(wh):
    from medical_etl.api.access import AUTH_FAILURES_PER_MIN

    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path,
                     api=ApiSettings(keys=(KEY,)))
    good = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app, client=("203.0.113.7", 40000)) as guesser, \
            TestClient(app, client=("198.51.100.2", 40000)) as analyst:
        codes = [guesser.get("/api/channels", headers={"Authorization": f"Bearer guess-{i:016d}"}).status_code
                 for i in range(AUTH_FAILURES_PER_MIN + 2)]
        assert codes == [401] * AUTH_FAILURES_PER_MIN + [429] * 2
        # once throttled the key is not even looked at: a 200 for the right one would let guessing go on
        r = guesser.get("/api/channels", headers=good)
        assert r.status_code == 429 and "failed authentications" in r.json()["error"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert analyst.get("/api/channels", headers=good).status_code == 200  # another address is not slowed


def test_rate_limiter_refills_and_forgets_full_buckets():
    from medical_etl.api.access import RateLimiter

    now = [0.0]
    lim = RateLimiter(60, clock=lambda: now[0], max_keys=2)  # a token a second
    assert all(lim.allow("a")[0] for _ in range(60)) and lim.allow("a") == (False, 1.0)
    assert lim.wait("a") == 1.0 and lim.wait("b") == 0.0  # wait() takes no token
    now[0] = 1.0
    assert lim.wait("a") == 0.0 and lim.allow("a") == (True, 0.0)
    lim.allow("b")
    now[0] = 100.0  # "a" and "b" full again: a third key over max_keys drops them
    lim.allow("c")
    assert set(lim._buckets) == {"c"}


def test_cors_wildcard_with_keys_is_refused(tmp_path, monkeypatch, capsys):
    from medical_etl.api.serve import serve
    from medical_etl.api.settings import load_api_settings
    from medical_etl.config import ConfigError, Settings

    with pytest.raises(ConfigError) as info:
        load_api_settings({"API_KEYS": KEY, "API_CORS_ORIGINS": "https://a.example, *"}, dotenv_path=None)
    assert info.value.variable == "API_CORS_ORIGINS" and "'*' is refused together with API_KEYS" in str(info.value)
    assert load_api_settings({"API_CORS_ORIGINS": "*"}, dotenv_path=None).cors_origins == ("*",)  # no keys
    named = load_api_settings({"API_KEYS": KEY, "API_CORS_ORIGINS": "https://a.example"}, dotenv_path=None)
    assert named.cors_origins == ("https://a.example",)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's
    assert serve(Settings(), env={"API_KEYS": KEY, "API_CORS_ORIGINS": "*"}) == 2  # before anything starts
    assert "configuration error: API_CORS_ORIGINS" in capsys.readouterr().err
