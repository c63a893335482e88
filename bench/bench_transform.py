"""Benchmark of stage 3 (transform): a full dbt build on the 200,000-message synthetic lake, then an
incremental build after 1% new messages, in the same run on the same server.

Target: the incremental build takes under 25% of the full build's time.
Usage: python bench/bench_transform.py [--messages 200000]
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
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

            print(f"\nsynthetic lake: {n:,} messages, then {new:,} new; {n_prices:,} price rows")
            print(f"{'build':<34} {'seconds':>8} {'fct_product_prices':>19} {'fct_messages':>13}")
            for label, s, secs in (("full (--full-refresh)", full, full_s), ("incremental, 1% new", inc, inc_s)):
                print(f"{label:<34} {secs:>8.2f} {model_time(s, 'fct_product_prices'):>19.2f} "
                      f"{model_time(s, 'fct_messages'):>13.2f}")
            ratio = inc_s / full_s
            print(f"\nincremental / full = {ratio:.3f} (target < 0.25): {'PASS' if ratio < 0.25 else 'FAIL'}")
            return 0 if ratio < 0.25 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
