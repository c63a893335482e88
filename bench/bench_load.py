"""Benchmark of stage 2 (load) against two baselines measured in the same run, same rows, same server.

- baseline A: what public implementations of this pipeline do: read each file, psycopg2
  ``execute_values`` in pages of 1,000 with ``ON CONFLICT DO NOTHING``.
- baseline B (the floor): read and parse each file and ``COPY`` its rows into an empty table with
  the same key: no validation, no merge, no bookkeeping.

Each measurement runs in a fresh child process (so peak RSS is its own) against a fresh database.
Usage: python bench/bench_load.py [--messages 200000] [--small 50000]
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psycopg2
from psycopg2.extras import execute_values

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synthetic import build_lake, change_views, scratch_database  # noqa: E402

from medical_etl.load import COLUMNS, FIELDS, load_raw_to_postgres  # noqa: E402
from medical_etl.load.records import copy_line  # noqa: E402

_SQL_TYPES = {"id": "bigint", "int": "bigint", "count": "bigint", "ts": "timestamptz"}
# The baselines store the same columns as the stage (FIELDS, then source_file and source_position).
BASE_DDL = "CREATE TABLE bench_messages ({}, source_file text, source_position integer, " \
           "PRIMARY KEY (channel, message_id))".format(
               ", ".join(f"{c} {_SQL_TYPES.get(kind.rstrip('?'), 'text')}" for c, _, kind in FIELDS))
LAKE_KEYS = [name for _, name, _ in FIELDS]


def _files(lake: Path):
    for f in sorted((lake / "telegram_messages").glob("*/*.json")):
        yield f.relative_to(lake).as_posix(), json.loads(f.read_text(encoding="utf-8"))


def run_ours(params, lake):
    return load_raw_to_postgres(params, lake)


def run_execute_values(params, lake):
    conn = psycopg2.connect(**params.kwargs())
    with conn, conn.cursor() as cur:
        cur.execute(BASE_DDL)
    page = []
    with conn.cursor() as cur:
        for rel, msgs in _files(lake):
            for pos, m in enumerate(msgs):
                page.append(tuple(m.get(k) for k in LAKE_KEYS) + (rel, pos))
                if len(page) == 1000:
                    execute_values(cur, f"INSERT INTO bench_messages ({', '.join(COLUMNS)}) VALUES %s "
                                        "ON CONFLICT DO NOTHING", page, page_size=1000)
                    conn.commit()
                    page = []
        if page:
            execute_values(cur, f"INSERT INTO bench_messages ({', '.join(COLUMNS)}) VALUES %s "
                                "ON CONFLICT DO NOTHING", page, page_size=1000)
    conn.commit()
    conn.close()


def run_plain_copy(params, lake):
    conn = psycopg2.connect(**params.kwargs())
    with conn, conn.cursor() as cur:
        cur.execute(BASE_DDL)
        for rel, msgs in _files(lake):
            # same COPY encoding as the stage, so the floor differs only by what the stage adds
            buf = io.BytesIO(b"".join(copy_line([m.get(k) for k in LAKE_KEYS] + [rel, pos])
                                      for pos, m in enumerate(msgs)))
            cur.copy_expert(f"COPY bench_messages ({', '.join(COLUMNS)}) FROM STDIN", buf)
    conn.close()


def _mb(lake: Path) -> float:
    return sum(f.stat().st_size for f in lake.rglob("*.json")) / 2**20


def _child(fn_name, params, lake, q):
    t0 = time.perf_counter()
    out = globals()[fn_name](params, lake)
    q.put((time.perf_counter() - t0, _peak_rss_mb(), out))


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across fork+exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn_name, params, lake):
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_child, args=(fn_name, params, lake, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--small", type=int, default=50_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_load_"))
    dbs = ExitStack()  # each measurement gets a fresh database, all dropped at the end

    def fresh():
        return dbs.enter_context(scratch_database())

    try:
        lake = work / "lake"
        t0 = time.perf_counter()
        n_files = build_lake(lake, args.messages)
        print(f"synthetic lake: {args.messages:,} messages in {n_files:,} files ({time.perf_counter() - t0:.1f} s to build)")
        n = args.messages

        ours_db = fresh()
        first_s, first_rss, s1 = measure("run_ours", ours_db, lake)
        assert s1["rows_inserted"] == n, s1
        reload_s, _, s2 = measure("run_ours", ours_db, lake)
        assert s2["rows_inserted"] == 0 and s2["rows_updated"] == 0, s2
        changed = change_views(lake, 0.01)
        changed_s, _, s3 = measure("run_ours", ours_db, lake)
        assert s3["rows_updated"] == changed, (s3, changed)

        ev_s, ev_rss, _ = measure("run_execute_values", fresh(), lake)
        copy_s, copy_rss, _ = measure("run_plain_copy", fresh(), lake)

        small = work / "small"
        build_lake(small, args.small)
        small_s, small_rss, _ = measure("run_ours", fresh(), small)

        lake_mb, small_mb = _mb(lake), _mb(small)
        growth = max(0.0, first_rss - small_rss) / (lake_mb - small_mb)
        print(f"lake sizes: {lake_mb:.0f} MB ({n:,} messages), {small_mb:.0f} MB ({args.small:,})")
        rate = lambda secs: n / secs  # noqa: E731
        rows = [
            ("ours: first load", first_s, rate(first_s), first_rss),
            ("ours: re-load, unchanged", reload_s, None, None),
            (f"ours: re-load, 1% changed ({changed:,} rows)", changed_s, None, None),
            ("baseline: execute_values pages of 1,000", ev_s, rate(ev_s), ev_rss),
            ("floor: plain COPY into empty keyed table", copy_s, rate(copy_s), copy_rss),
            (f"ours: first load of {args.small:,} messages", small_s, args.small / small_s, small_rss),
        ]
        print(f"\n{'measurement':<48} {'seconds':>8} {'msgs/s':>10} {'peak RSS MB':>12}")
        for name, secs, r, rss in rows:
            print(f"{name:<48} {secs:>8.2f} {(f'{r:,.0f}' if r else '-'):>10} {(f'{rss:.0f}' if rss else '-'):>12}")
        checks = [
            ("first load vs execute_values", ev_s / first_s, ">= 1.30", ev_s / first_s >= 1.3),
            ("first load vs plain COPY rate", copy_s / first_s, ">= 0.60", copy_s / first_s >= 0.6),
            ("unchanged re-load / first load", reload_s / first_s, "< 0.05", reload_s / first_s < 0.05),
            (f"peak RSS, {n:,} msgs (MB)", first_rss, "< 300", first_rss < 300),
            # flat: going from the small to the full lake adds under 10% of the added data to memory
            ("RSS growth / lake growth", growth, "< 0.10 (flat)", growth < 0.10),
        ]
        print(f"\n{'ratio':<34} {'measured':>9} {'target':>16}  result")
        for name, v, target, ok in checks:
            print(f"{name:<34} {v:>9.3f} {target:>16}  {'PASS' if ok else 'FAIL'}")
        return 0 if all(c[3] for c in checks) else 1
    finally:
        dbs.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
