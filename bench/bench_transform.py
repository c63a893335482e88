"""Benchmark of stage 3 (transform): a full build (catalogue + dbt) on the 200,000-message synthetic lake,
an incremental build after 1% new messages, and a full refresh after nothing changed, in the same run on the
same server; then the catalogue's throughput on distinct texts, cold (read and resolved now) against
remembered (found read and resolved before).

Targets: the incremental build takes under 25% of the full build's time; the full refresh after nothing
changed reads and resolves 0 texts.
Usage: python bench/bench_transform.py [--messages 200000] [--distinct 20000]
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

from medical_etl.catalogue.identity import Resolver, normalise, resolver_version  # noqa: E402
from medical_etl.catalogue.stage import _Resolving, build_catalogue  # noqa: E402
from medical_etl.load import load_raw_to_postgres  # noqa: E402
from medical_etl.transform import run_dbt_transformations  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--distinct", type=int, default=20_000, help="distinct texts for the catalogue's throughput")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_transform_"))
    try:
        with scratch_database() as db:
            lake = work / "lake"
            n = args.messages
            build_lake(lake, n, days=365)
            load_raw_to_postgres(db, lake)
            t0 = time.perf_counter()
            full = run_dbt_transformations(db, full_refresh=True, check_freshness=False, target_path=work / "target")
            full_s = time.perf_counter() - t0
            assert full["status"] == "success", full["failing_nodes"]

            new = n // 100  # 1% new messages, the next days' posts
            build_lake(lake, new, days=3, seed=99, start_id=10_000_000,
                       start=datetime(2026, 1, 1, tzinfo=timezone.utc))
            loaded = load_raw_to_postgres(db, lake)
            assert loaded["rows_inserted"] == new, loaded
            t0 = time.perf_counter()
            inc = run_dbt_transformations(db, check_freshness=False, target_path=work / "target")
            inc_s = time.perf_counter() - t0
            assert inc["status"] == "success", inc["failing_nodes"]
            with psycopg2.connect(**db.kwargs()) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM marts.fct_messages")
                assert cur.fetchone()[0] == n + new
                cur.execute("SELECT count(*) FROM marts.fct_product_prices")
                n_prices = cur.fetchone()[0]

            def model_time(summary, model):
                return next(x["seconds"] for x in summary["nodes"] if x["node"] == f"model.medical_warehouse.{model}")

            t0 = time.perf_counter()
            again = run_dbt_transformations(db, full_refresh=True, check_freshness=False, target_path=work / "target")
            again_s = time.perf_counter() - t0
            assert again["status"] == "success", again["failing_nodes"]
            cat = again["catalogue"]
            reread = cat["texts_read"] + cat["products_resolved"]

            print(f"\nsynthetic lake: {n:,} messages, then {new:,} new; {n_prices:,} price rows")
            print(f"{'build':<40} {'seconds':>8} {'catalogue':>10} {'texts read':>11} {'resolved':>9} "
                  f"{'fct_product_prices':>19} {'fct_messages':>13}")
            for label, s, secs in (("full (--full-refresh)", full, full_s), ("incremental, 1% new", inc, inc_s),
                                   ("full refresh, nothing changed", again, again_s)):
                c = s["catalogue"]
                print(f"{label:<40} {secs:>8.2f} {c['read_seconds'] + c['resolve_seconds']:>10.2f} "
                      f"{c['texts_read']:>11,} {c['products_resolved']:>9,} "
                      f"{model_time(s, 'fct_product_prices'):>19.2f} {model_time(s, 'fct_messages'):>13.2f}")
            for label, s in (("full build", full), ("incremental", inc)):
                slow = sorted(s["nodes"], key=lambda x: -x["seconds"])[:8]
                print(f"slowest nodes, {label}: " + ", ".join(
                    f"{x['node'].split('.')[-1][:40]} {x['seconds']:.1f}s" for x in slow))

            throughput(db, work / "distinct", args.distinct)

            ratio = inc_s / full_s
            ok = ratio < 0.25 and reread == 0
            print(f"\nincremental / full = {ratio:.3f} (target < 0.25): {'PASS' if ratio < 0.25 else 'FAIL'}")
            print(f"full refresh after nothing changed re-read or re-resolved {reread} texts (target 0): "
                  f"{'PASS' if reread == 0 else 'FAIL'}")
            return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def throughput(db, lake, n: int) -> None:
    """The catalogue on ``n`` posts of distinct texts (the sample's, each with a line of its own): read and
    resolved cold, then again with everything remembered; and the resolver alone on as many distinct product
    texts, cold (resolving) against remembered (a lookup of the stored resolution)."""
    build_lake(lake, n, days=2, seed=5, start_id=20_000_000, start=datetime(2026, 2, 1, tzinfo=timezone.utc),
               distinct_texts=True)
    load_raw_to_postgres(db, lake)
    cold = build_catalogue(db)
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


if __name__ == "__main__":
    sys.exit(main())
