"""Benchmark of the analytical API: 100,000 and 1,000,000 posts, 20 concurrent clients.

For each size a scratch warehouse is made: the real shared sample goes through the pipeline (load and
dbt) once, then its marts are multiplied in SQL to the size (same texts and prices, new channels, ids
and dates over one year; image categories and detected objects drawn per photo). Building a million
posts through dbt's text parsing would take most of an hour on 2 cores, so the marts are generated at
marts level; the API's own rollups (agg_*) and the search model are then built by dbt on top of them.

The API runs as ``medical-etl serve`` (one uvicorn process); 20 client threads with keep-alive
connections send each endpoint's requests; median and p95 per endpoint and size, the ratio
p95(1M) / p95(100k) (target < 2; the CSV downloads of top-products and of search included), the
dashboard's first load (its page, scripts and every API request it makes, in the order and concurrency
a browser uses) at 1M (target < 1 s), and the share of its API requests that ten reloads get answered
304 (each revalidates with the ETags of the load before).
"""
from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import REPO, SAMPLE, scratch_database  # noqa: E402

CLIENTS = 20
WORDS = ["vitamin", "cream", "tablet", "መድሀኒት", "ዋጋ", "glove", "syrup", "አድራሻ"]
SAMPLE_CHANNELS = ["CheMed123", "lobelia4cosmetics", "tikvahpharma"]


# --- the warehouse ---------------------------------------------------------------------------------

def build_sample_marts(params, workdir: Path) -> None:
    """The real sample through load and dbt: the templates the synthetic marts are made from."""
    from medical_etl.load import load_raw_to_postgres
    from medical_etl.scrape.stage import scrape_telegram_data
    from medical_etl.scrape.standin import StandInClient, read_message_list
    from medical_etl.transform import run_dbt_transformations

    posts = read_message_list(SAMPLE / "messages", SAMPLE / "images")
    lake = workdir / "lake"
    scrape_telegram_data(StandInClient(posts), SAMPLE_CHANNELS, lake, download_photos=False)
    load_raw_to_postgres(params, lake)
    r = run_dbt_transformations(params, check_freshness=False, target_path=workdir / "target",
                                log_path=workdir / "dbtlogs")
    assert r["status"] == "success", r["failing_nodes"]


SYNTH_SQL = """
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';
SET work_mem = '256MB';
CREATE TEMP TABLE tpl AS
    SELECT row_number() OVER (ORDER BY message_key) - 1 AS t, * FROM marts.fct_messages;
CREATE TEMP TABLE tpl_prices AS
    SELECT m.t, p.product_key, p.product_name, p.price_birr, p.currency_text, p.line_no, p.source_line
    FROM marts.fct_product_prices AS p JOIN tpl AS m USING (message_key);
CREATE TEMP TABLE gen AS
    SELECT g AS n, g %% %(tpl)s AS t, 'pharma_channel_' || lpad((g %% 12)::text, 2, '0') AS channel_username,
           g / 12 + 1 AS message_id,
           timestamptz '2025-01-01 00:00+00' + make_interval(secs => (g::float8 / %(n)s) * 365 * 86400)
               + make_interval(secs => (g * 7919) %% 60) AS message_date
    FROM generate_series(0::bigint, %(n)s - 1) AS g;
TRUNCATE marts.fct_messages, marts.fct_product_prices, marts.fct_image_categories, marts.fct_image_detections,
         marts.dim_channels, marts.search_messages;
DROP INDEX IF EXISTS marts.search_messages_vector_idx;
INSERT INTO marts.fct_messages (dedup_key, message_key, channel_key, date_key, channel_username, channel_title,
        message_id, message_date, hour_of_day, message_text, text_length, views, forwards, replies, media_type,
        has_image, image_path, price_count, min_price_birr, max_price_birr, source_updated_at)
SELECT g.channel_username || '/' || g.message_id, md5(g.channel_username || '|' || g.message_id),
       md5(g.channel_username), to_char(g.message_date AT TIME ZONE 'UTC', 'YYYYMMDD')::int, g.channel_username,
       initcap(replace(g.channel_username, '_', ' ')), g.message_id,
       g.message_date, extract(hour FROM g.message_date AT TIME ZONE 'UTC')::int, t.message_text, t.text_length,
       t.views + (g.n %% 50), t.forwards, t.replies, t.media_type, t.has_image,
       CASE WHEN t.has_image THEN 'images/' || g.channel_username || '/' || g.message_id || '.jpg' END,
       t.price_count, t.min_price_birr, t.max_price_birr, g.message_date
FROM gen AS g JOIN tpl AS t USING (t);
INSERT INTO marts.fct_product_prices (price_key, dedup_key, message_key, channel_key, date_key, product_key,
        channel_username, message_id, message_date, product_name, price_birr, currency_text, line_no, source_line,
        source_updated_at)
SELECT md5(g.channel_username || '|' || g.message_id || '|' || p.line_no || '|' || p.product_key || p.price_birr),
       g.channel_username || '/' || g.message_id, md5(g.channel_username || '|' || g.message_id),
       md5(g.channel_username), to_char(g.message_date AT TIME ZONE 'UTC', 'YYYYMMDD')::int, p.product_key,
       g.channel_username, g.message_id, g.message_date, p.product_name, p.price_birr, p.currency_text, p.line_no,
       p.source_line, g.message_date
FROM gen AS g JOIN tpl_prices AS p USING (t);
INSERT INTO marts.fct_image_categories (dedup_key, message_key, channel_key, date_key, channel_username, message_id,
        model, n_objects, has_person, has_product, detected_classes, max_confidence, image_category, analysed_at)
SELECT g.channel_username || '/' || g.message_id, md5(g.channel_username || '|' || g.message_id), md5(g.channel_username),
       to_char(g.message_date AT TIME ZONE 'UTC', 'YYYYMMDD')::int, g.channel_username, g.message_id, 'bench@0',
       1 + g.n %% 3, g.n %% 4 IN (0, 2), g.n %% 4 IN (0, 1), 'bottle', 0.8,
       (ARRAY['promotional', 'product_display', 'lifestyle', 'other'])[1 + (g.n * 31 + (g.n %% 12) * 7) %% 4],
       g.message_date
FROM gen AS g JOIN tpl AS t USING (t) WHERE t.has_image;
INSERT INTO marts.fct_image_detections (detection_key, dedup_key, message_key, channel_key, date_key,
        channel_username, message_id, model, object_index, class_id, class_name, confidence, x1, y1, x2, y2,
        box_area_share, image_width, image_height, detected_at, analysed_at)
SELECT md5(c.message_key || k), c.dedup_key, c.message_key, c.channel_key, c.date_key, c.channel_username,
       c.message_id, c.model, k, 0,
       (ARRAY['bottle', 'person', 'cell phone', 'cup', 'book', 'scissors'])[1 + (c.message_id + k) %% 6],
       0.5, 0, 0, 10, 10, 0.1, 640, 640, c.analysed_at, c.analysed_at
FROM marts.fct_image_categories AS c CROSS JOIN generate_series(0, 1) AS k;
INSERT INTO marts.dim_channels (channel_key, channel_username, channel_title, first_post_at, last_post_at,
        post_count, image_post_count, avg_views, image_post_share)
SELECT md5(channel_username), channel_username, initcap(replace(channel_username, '_', ' ')), min(message_date),
       max(message_date), count(*), count(*) FILTER (WHERE has_image), round(avg(views), 1),
       round(count(*) FILTER (WHERE has_image)::numeric / count(*), 4)
FROM marts.fct_messages GROUP BY channel_username;
INSERT INTO marts.search_messages (dedup_key, message_key, channel_username, message_id, message_date, views,
        search_vector, source_updated_at)
SELECT dedup_key, message_key, channel_username, message_id, message_date, views, to_tsvector('simple', message_text),
       source_updated_at
FROM marts.fct_messages;
CREATE INDEX search_messages_vector_idx ON marts.search_messages USING gin (search_vector);
"""

# what the API reads above the facts, rebuilt from the generated facts (a full refresh of these alone)
ROLLUPS = ["int_product_price_counts", "agg_product_prices", "agg_product_daily", "agg_channel_daily",
           "agg_visual_content", "agg_detected_classes", "agg_visual_daily", "int_views_counts",
           "agg_image_engagement"]


def synthesize(params, n_posts: int, workdir: Path) -> dict:
    import psycopg2

    from medical_etl.transform import run_dbt_transformations

    t0 = time.perf_counter()
    conn = psycopg2.connect(**params.kwargs())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM marts.fct_messages")
        n_tpl = cur.fetchone()[0]
        cur.execute(SYNTH_SQL, {"n": n_posts, "tpl": n_tpl})
        for t in ("fct_messages", "fct_product_prices", "fct_image_categories", "fct_image_detections",
                  "dim_channels", "search_messages"):
            cur.execute(f"VACUUM ANALYZE marts.{t}")
    t_sql = time.perf_counter() - t0
    r = run_dbt_transformations(params, select=ROLLUPS, full_refresh=True, check_freshness=False,
                                target_path=workdir / "target", log_path=workdir / "dbtlogs")
    assert r["status"] == "success", r["failing_nodes"]
    with conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM marts.fct_messages), (SELECT count(*) FROM marts.fct_product_prices)")
        posts, prices = cur.fetchone()
    conn.close()
    return {"posts": posts, "prices": prices, "generate_s": round(t_sql, 1),
            "rollups_s": round(time.perf_counter() - t0 - t_sql, 1)}


# --- the load --------------------------------------------------------------------------------------

def start_server(params, workdir: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, DB_HOST=params.host, DB_PORT=str(params.port), DB_NAME=params.dbname,
               DB_USER=params.user, DB_PASSWORD=params.password or "", API_HOST="127.0.0.1", API_PORT=str(port),
               RAW_DATA_PATH=str(workdir / "lake"), LOGS_PATH=str(workdir / "logs"), API_RATE_LIMIT="1000000",
               PYTHONPATH=str(REPO))
    env.pop("API_KEYS", None)
    proc = subprocess.Popen([sys.executable, "-m", "medical_etl", "serve", "--no-access-log"], env=env,
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit("the API exited: " + (proc.stderr.read() or "")[-2000:])
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the API did not start: " + (proc.stderr.read() or "")[-2000:])


def get(conn: http.client.HTTPConnection, path: str, headers: dict | None = None, with_headers: bool = False):
    conn.request("GET", path, headers={"Accept-Encoding": "gzip", **(headers or {})})
    r = conn.getresponse()
    body = r.read()
    body = gzip.decompress(body) if r.getheader("Content-Encoding") == "gzip" else body
    return (r.status, body, dict(r.getheaders())) if with_headers else (r.status, body)


def run_load(port: int, paths: list[str], requests_per_client: int) -> list[float]:
    """20 clients, each with its own keep-alive connection, cycling through ``paths``; latencies in ms."""
    lat: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(i: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        start.wait()
        for k in range(requests_per_client):
            path = paths[(i * requests_per_client + k) % len(paths)]
            t0 = time.perf_counter()
            status, body = get(conn, path)
            mine.append((time.perf_counter() - t0) * 1000)
            if not body:
                raise RuntimeError(f"{path}: empty answer")
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}")
        conn.close()
        with lock:
            lat.extend(mine)

    with ThreadPoolExecutor(CLIENTS) as ex:
        list(ex.map(client, range(CLIENTS)))
    return lat


def endpoints(port: int) -> dict[str, list[str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    top = json.loads(get(conn, "/api/reports/top-products?limit=20")[1])["items"]
    chans = [c["channel"] for c in json.loads(get(conn, "/api/channels")[1])["items"]]
    q = urllib.parse.quote
    return {
        "top-products": ["/api/reports/top-products?limit=10"],
        "top-products?channel": [f"/api/reports/top-products?limit=10&channel={c}" for c in chans],
        "top-products?since&until (7 days)": [f"/api/reports/top-products?limit=10&since=2025-{m:02d}-01&until=2025-{m:02d}-07"
                                              for m in range(1, 13)],
        "products/{name}/prices": [f"/api/products/{q(p['product'])}/prices" for p in top],
        "channels": ["/api/channels"],
        "channels/{c}/activity?day": [f"/api/channels/{c}/activity?granularity=day" for c in chans],
        "channels/{c}/activity?week": [f"/api/channels/{c}/activity?granularity=week" for c in chans],
        "top-products CSV": ["/api/reports/top-products?limit=10&format=csv"] +
                            [f"/api/reports/top-products?limit=10&channel={c}&format=csv" for c in chans],
        "search/messages": [f"/api/search/messages?query={q(w)}&limit=20" for w in WORDS],
        "search/messages CSV": [f"/api/search/messages?query={q(w)}&limit=20&format=csv" for w in WORDS],
        "reports/visual-content": ["/api/reports/visual-content"],
        "pipeline/status": ["/api/pipeline/status"],
        "health": ["/health"],
    }


def dashboard_requests(port: int, cache: dict | None = None) -> tuple[float, int, int]:
    """The page, its two scripts, then the dashboard's API requests as it makes them (parallel waves, a
    browser's 6 connections). ``cache`` (path -> (ETag, body)) plays the browser's cache: when given,
    every request for a path it holds is conditional, as a reload's revalidation is, and a 304 is
    answered from it; it is filled as answers come. Returns the seconds and, of the API requests, how
    many there were and how many were answered 304 (nothing sent again, no query run)."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(6)]
    revalidate = cache is not None
    cache = {} if cache is None else cache
    counts = {"api": 0, "304": 0}
    lock = threading.Lock()

    def fetch(args):
        i, path = args
        headers = {"If-None-Match": cache[path][0]} if revalidate and path in cache else {}
        status, body, h = get(conns[i], path, headers, with_headers=True)
        assert status in (200, 304), (path, status)
        with lock:
            if path.startswith("/api/"):
                counts["api"] += 1
                counts["304"] += status == 304
            if status == 304:
                return cache[path][1]
            if h.get("etag"):
                cache[path] = (h["etag"], body)
        return body

    t0 = time.perf_counter()
    with ThreadPoolExecutor(6) as ex:
        fetch((0, "/"))
        list(ex.map(fetch, [(0, "/static/echarts.min.js"), (1, "/static/dashboard.js")]))
        waves = list(ex.map(fetch, [(0, "/api/pipeline/status"), (2, "/api/channels?limit=500"),
                                    (3, "/api/reports/top-products?limit=50")]))
        chans, top = json.loads(waves[1])["items"], json.loads(waves[2])["items"]
        list(ex.map(fetch, [(0, f"/api/channels/{chans[0]['channel']}/activity?granularity=week"),
                            (1, "/api/reports/top-products?limit=15&group=product"),
                            (2, f"/api/products/{urllib.parse.quote(top[0]['product'])}/prices"),
                            (3, "/api/reports/visual-content")]))
    return time.perf_counter() - t0, counts["api"], counts["304"]


def dashboard_first_load(port: int) -> float:
    return dashboard_requests(port)[0]


def dashboard_reloads(port: int, n: int = 10) -> tuple[int, int]:
    """``n`` reloads after a first load, each revalidating its answers with their ETags: (API requests,
    answered 304)."""
    cache: dict = {}
    dashboard_requests(port, cache)
    total = not_modified = 0
    for _ in range(n):
        _, api, hits = dashboard_requests(port, cache)
        total, not_modified = total + api, not_modified + hits
    return total, not_modified


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure(servers: dict[int, int], requests_per_client: int) -> dict[int, dict]:
    """Each endpoint on every size, rounds interleaved (small, large, small, large) so that the
    machine's background load falls on both sizes alike."""
    sizes = list(servers)
    eps = {n: endpoints(port) for n, port in servers.items()}
    out: dict[int, dict] = {n: {} for n in sizes}
    for name in eps[sizes[0]]:
        lat: dict[int, list[float]] = {n: [] for n in sizes}
        for n in sizes:
            run_load(servers[n], eps[n][name], 2)  # warm-up
        for _ in range(2):
            for n in sizes:
                lat[n] += run_load(servers[n], eps[n][name], max(1, requests_per_client // 2))
        for n in sizes:
            out[n][name] = {"median_ms": round(statistics.median(lat[n]), 1), "p95_ms": round(pct(lat[n], 95), 1),
                            "requests": len(lat[n])}
        print(f"  {name:<36} " + "   ".join(
            f"{n // 1000}k: median {out[n][name]['median_ms']:>7.1f} p95 {out[n][name]['p95_ms']:>7.1f} ms"
            for n in sizes), flush=True)
    loads: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(5):
        for n in sizes:
            loads[n].append(dashboard_first_load(servers[n]))
    for n in sizes:
        out[n]["dashboard first load"] = {"median_ms": round(statistics.median(loads[n]) * 1000, 1),
                                          "p95_ms": round(max(loads[n]) * 1000, 1), "requests": 5}
    print("  dashboard first load (5 loads, no other clients) " + "   ".join(
        f"{n // 1000}k: median {out[n]['dashboard first load']['median_ms']:.0f} max "
        f"{out[n]['dashboard first load']['p95_ms']:.0f} ms" for n in sizes), flush=True)
    for n in sizes:
        total, hits = dashboard_reloads(servers[n])
        out[n]["reloads answered 304"] = {"api_requests": total, "not_modified": hits,
                                          "share": round(hits / total, 3) if total else None}
        print(f"  dashboard reloads at {n // 1000}k: {hits} of {total} API requests answered 304 "
              f"({100 * hits / total:.0f}%)", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--requests", type=int, default=30, help="requests per client per endpoint and size (default 30)")
    ap.add_argument("--port", type=int, default=0, help="default: a free port")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--databases", help="comma-separated databases already built by this bench for --sizes "
                                        "(on the configured server), to measure again without rebuilding")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if not args.port:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = sock.getsockname()[1]
    import contextlib

    with contextlib.ExitStack() as stack:
        servers: dict[int, int] = {}
        reuse = args.databases.split(",") if args.databases else None
        for i, n in enumerate(sizes):
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_api_")))
            (work / "logs").mkdir()
            if reuse:
                from medical_etl.config import load_settings
                from medical_etl.db import ConnParams, conn_params

                admin = conn_params(load_settings())
                params = ConnParams(admin.host, admin.port, reuse[i], admin.user, admin.password)
                print(f"{n:,} posts: reusing database {reuse[i]}", flush=True)
            else:
                params = stack.enter_context(scratch_database())
                t0 = time.perf_counter()
                build_sample_marts(params, work)
                info = synthesize(params, n, work)
                print(f"{n:,} posts: {info['posts']:,} posts, {info['prices']:,} price rows; generated in "
                      f"{info['generate_s']} s, rollups built by dbt in {info['rollups_s']} s "
                      f"(total {time.perf_counter() - t0:.0f} s)", flush=True)
            port = args.port + len(servers)
            proc = start_server(params, work, port)
            stack.callback(proc.wait, 30)
            stack.callback(proc.terminate)
            servers[n] = port
        print(f"\n{CLIENTS} concurrent clients, {args.requests} requests per client per endpoint and size", flush=True)
        results = measure(servers, args.requests)
    if len(sizes) == 2:
        small, large = sizes
        print(f"\n| endpoint | median {small // 1000}k (ms) | p95 {small // 1000}k (ms) | median {large // 1000}k (ms) "
              f"| p95 {large // 1000}k (ms) | p95 ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        failed = []
        for name in results[small]:
            if name == "reloads answered 304":
                continue
            a, b = results[small][name], results[large][name]
            ratio = b["p95_ms"] / a["p95_ms"] if a["p95_ms"] else float("inf")
            flag = "" if ratio < 2 or name == "dashboard first load" else " (over 2x)"
            if flag:
                failed.append(name)
            print(f"| {name} | {a['median_ms']} | {a['p95_ms']} | {b['median_ms']} | {b['p95_ms']} | {ratio:.2f}{flag} |")
        first = results[large]["dashboard first load"]["p95_ms"]
        print(f"\nDashboard first load at {large:,} posts: worst of 5 {first:.0f} ms (target < 1000 ms): "
              f"{'ok' if first < 1000 else 'OVER'}")
        print(f"Endpoints with p95({large:,}) >= 2x p95({small:,}): {', '.join(failed) or 'none'}")
        for n in sizes:
            r = results[n]["reloads answered 304"]
            print(f"Dashboard reloads at {n:,} posts: {r['not_modified']} of {r['api_requests']} API requests "
                  f"answered 304 ({100 * (r['share'] or 0):.0f}%; /api/pipeline/status keeps its own 30 s cache)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
