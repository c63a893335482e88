"""Benchmark of stage 3 (transform) along the history axis: on a synthetic lake of each history size (100,000 and
1,000,000 posts by default; the sample's 276 texts reposted), the first build (catalogue + dbt, everything new),
an incremental build after the same number of new posts (1,000: the next days' posts), and a full refresh with
nothing changed, each with its slowest models. Then the same first build and full refresh on a history whose
posts all have texts of their own (as on the real channels, where a text is rarely posted twice: the first
build reads and resolves every one), and the catalogue's throughput there, cold (read and resolved now)
against remembered (found read and resolved before).

Targets: the incremental build on the largest history takes at most 1.3x the one on the smallest (the daily
cost follows the day, not the history); on each history it takes under 25% of the first build; a full
refresh after nothing changed reads and resolves 0 texts, and on the history of distinct texts takes at most
half its first build. (On the reposted lake there is next to nothing for a full refresh to skip: 276 texts
to read; its ratio is printed, not judged.)
Usage: python bench/bench_transform.py [--histories 100000,1000000] [--new 1000] [--distinct 20000]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synthetic import build_lake, scratch_database  # noqa: E402

from medical_etl.load import load_raw_to_postgres  # noqa: E402
from medical_etl.transform import run_dbt_transformations  # noqa: E402
from medical_etl.transform.catalogue.identity import Resolver, normalise, resolver_version  # noqa: E402
from medical_etl.transform.catalogue.stage import _Resolving, build_catalogue  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--histories", default="100000,1000000", help="history sizes in posts, comma-separated")
    ap.add_argument("--new", type=int, default=1_000, help="new posts before the incremental build")
    ap.add_argument("--distinct", type=int, default=20_000, help="distinct texts for the catalogue's throughput")
    args = ap.parse_args()
    sizes = [int(x) for x in args.histories.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_transform_"))
    results = []
    try:
        for n in sizes:
            results.append(history(work / f"h{n}", n, args.new))
            shutil.rmtree(work / f"h{n}", ignore_errors=True)
        with scratch_database() as db:
            distinct = throughput(db, work / "distinct", args.distinct)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'history':>10} {'build':<34} {'seconds':>8} {'catalogue':>10} {'texts read':>11} {'resolved':>9}  "
          "slowest models")
    for r in results:
        for label, key in (("first build (everything new)", "first"), (f"incremental, {args.new:,} new", "inc"),
                           ("full refresh, nothing changed", "again")):
            s, secs = r[key]
            c = s["catalogue"]
            slow = ", ".join(f"{m['model']} {m['seconds']:.1f}" for m in s["slowest_models"])
            print(f"{r['n']:>10,} {label:<34} {secs:>8.2f} {c['read_seconds'] + c['resolve_seconds']:>10.2f} "
                  f"{c['texts_read']:>11,} {c['products_resolved']:>9,}  {slow}")
    ok = True
    small, large = results[0], results[-1]
    growth = large["inc"][1] / small["inc"][1]
    if len(results) > 1:
        good = growth <= 1.3
        ok &= good
        print(f"\nincremental build, {large['n']:,} / {small['n']:,} posts of history = {growth:.2f}x "
              f"(target <= 1.3): {'PASS' if good else 'FAIL'}")
    for r in results:
        inc, again = r["inc"][1] / r["first"][1], r["again"][1] / r["first"][1]
        reread = r["again"][0]["catalogue"]["texts_read"] + r["again"][0]["catalogue"]["products_resolved"]
        ok &= inc < 0.25 and reread == 0
        print(f"{r['n']:>10,} posts: incremental / first build = {inc:.3f} (target < 0.25): "
              f"{'PASS' if inc < 0.25 else 'FAIL'}; re-read or re-resolved {reread} texts on the full refresh "
              f"(target 0): {'PASS' if reread == 0 else 'FAIL'}; full refresh / first build = {again:.2f} "
              f"(reposted texts: not judged)")
    (first, first_s), (again, again_s) = distinct["first"], distinct["again"]
    ratio = again_s / first_s
    reread = again["catalogue"]["texts_read"] + again["catalogue"]["products_resolved"]
    ok &= ratio <= 0.5 and reread == 0
    print(f"{distinct['n']:>10,} posts of distinct texts: first build {first_s:.1f} s (catalogue "
          f"{first['catalogue']['read_seconds'] + first['catalogue']['resolve_seconds']:.1f} s), full refresh "
          f"with nothing changed {again_s:.1f} s = {ratio:.2f} (target <= 0.5): {'PASS' if ratio <= 0.5 else 'FAIL'}; "
          f"re-read or re-resolved {reread} (target 0): {'PASS' if reread == 0 else 'FAIL'}")
    return 0 if ok else 1


def history(work: Path, n: int, new: int) -> dict:
    """On a fresh database: ``n`` posts over a year, built; ``new`` more on the next days, built; rebuilt."""
    with scratch_database() as db:
        lake = work / "lake"
        build_lake(lake, n, days=365)
        load_raw_to_postgres(db, lake)

        def timed(full_refresh: bool):
            t0 = time.perf_counter()
            s = run_dbt_transformations(db, full_refresh=full_refresh, check_freshness=False,
                                        target_path=work / "target")
            assert s["status"] == "success", s["failing_nodes"]
            return s, time.perf_counter() - t0

        first = timed(False)
        build_lake(lake, new, days=3, seed=99, start_id=10_000_000, start=datetime(2026, 1, 1, tzinfo=timezone.utc))
        loaded = load_raw_to_postgres(db, lake)
        assert loaded["rows_inserted"] == new, loaded
        inc = timed(False)
        with psycopg2.connect(**db.kwargs()) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM marts.fct_messages")
            assert cur.fetchone()[0] == n + new
            cur.execute("SELECT count(*) FROM marts.fct_product_prices")
            prices = cur.fetchone()[0]
        again = timed(True)
        print(f"history {n:,} posts ({prices:,} price rows): first build {first[1]:.1f} s, incremental "
              f"{inc[1]:.1f} s, full refresh {again[1]:.1f} s", flush=True)
        return {"n": n, "prices": prices, "first": first, "inc": inc, "again": again}


def throughput(db, lake, n: int) -> dict:
    """On ``n`` posts of distinct texts (the sample's, each with a line of its own): the first build (the
    catalogue reads and resolves every text cold) and a full refresh with nothing changed, timed; the
    catalogue again with everything remembered; and the resolver alone on as many distinct product texts,
    cold (resolving) against remembered (a lookup of the stored resolution)."""
    build_lake(lake, n, days=2, seed=5, start_id=20_000_000, start=datetime(2026, 2, 1, tzinfo=timezone.utc),
               distinct_texts=True)
    load_raw_to_postgres(db, lake)
    builds = {}
    for label, full_refresh in (("first", False), ("again", True)):
        t0 = time.perf_counter()
        s = run_dbt_transformations(db, full_refresh=full_refresh, check_freshness=False,
                                    target_path=lake.parent / "target")
        assert s["status"] == "success", s["failing_nodes"]
        builds[label] = (s, time.perf_counter() - t0)
    cold = builds["first"][0]["catalogue"]
    with psycopg2.connect(**db.kwargs()) as conn, conn.cursor() as cur:
        cur.execute("UPDATE raw.catalogue_state SET messages_until = NULL")  # check every post again
    t0 = time.perf_counter()
    warm = build_catalogue(db)
    warm_s = time.perf_counter() - t0
    assert warm["texts_read"] == 0 and warm["products_resolved"] == 0, warm
    with psycopg2.connect(**db.kwargs()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM raw.telegram_messages")
        posts = cur.fetchone()[0]
        cur.execute("SELECT product_text FROM raw.catalogue_offers GROUP BY 1")
        base = [r[0] for r in cur.fetchall()]
    texts = [f"{base[i % len(base)]} {i // len(base) + 1}0 mg" for i in range(n)]
    resolver = Resolver()
    t0 = time.perf_counter()
    for t in texts:
        resolver.resolve(t)
    cold_s = time.perf_counter() - t0
    conn = psycopg2.connect(**db.kwargs())
    try:
        keys = {normalise(t) for t in base}
        remembered = _Resolving(resolver_version(), resolver)
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            todo = remembered.new_keys(cur, keys)  # what a run does for the product texts of its new posts
        lookup_s = time.perf_counter() - t0
    finally:
        conn.close()
    assert todo == [] and remembered.remembered == len(keys)
    print(f"\ncatalogue on {n:,} posts of distinct texts: read {cold['texts_read']:,} texts "
          f"({cold['texts_per_s']:,.0f} texts/s), {cold['offers_found']:,} offers, resolved "
          f"{cold['products_resolved']:,} product texts ({cold['resolutions_per_s'] or 0:,.0f}/s, dictionary "
          f"load {cold['resolver_load_seconds']:.1f}s)")
    print(f"  the same again, all remembered: {posts:,} posts checked in {warm_s:.2f}s "
          f"({posts / warm_s:,.0f} texts/s), 0 read, 0 resolved")
    print(f"resolver on {len(texts):,} distinct product texts: cold {len(texts) / cold_s:,.0f} texts/s; "
          f"remembered {len(keys) / lookup_s:,.0f} texts/s ({len(keys):,} lookups)")
    return {"n": n, **builds}


if __name__ == "__main__":
    sys.exit(main())
