"""Benchmark of the daily job on a day with nothing new: `run_job("pipeline")` after a first run over
the same source, in the same run on the same server.

The first run scrapes, loads, builds the warehouse and analyses the photos; each later run finds
nothing new (0 messages, 0 photos). Two cases, each the median of 5 runs:
- the next day (the daily cron's case; the recorded build is moved back one day before each run):
  dbt rebuilds dim_dates, which runs to today, with its tests; nothing else changed;
- the same day again: no dbt build at all (same project, same raw rows, same relations);
- a baseline in the same run: the recorded build forgotten before each run, so dbt builds and tests
  everything and checks freshness, as every run did before (the enrich stage's own rebuild of the
  detection models, also done before, is not repeated: the baseline is a lower bound).
Every stage still runs, and source freshness is judged at each run's time.
Target: the next-day nothing-new job's median < 5 s; both printed beside the first run's time.
Usage: python bench/bench_idle.py [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synthetic import SHARED, scratch_database  # noqa: E402

from medical_etl.config import load_settings  # noqa: E402
from medical_etl.jobs import run_job  # noqa: E402
from medical_etl.runlog import RunLog  # noqa: E402

MODEL = SHARED / "models" / "yolov8n_int8.onnx"


def stage_seconds(logs: Path, run_id: str) -> dict[str, float]:
    return {r["stage"]: r["duration_s"] for r in RunLog(logs).records()
            if r.get("run_id") == run_id and r.get("stage")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_idle_"))
    try:
        with scratch_database() as db:
            env = {**os.environ, "DB_HOST": db.host, "DB_PORT": str(db.port), "DB_NAME": db.dbname,
                   "DB_USER": db.user, "RAW_DATA_PATH": str(work / "lake"), "LOGS_PATH": str(work / "logs"),
                   "TELEGRAM_SOURCE": "sample", "YOLO_MODEL": str(MODEL), "YOLO_OFFLINE": "1"}
            settings = load_settings(env, dotenv_path=None)
            t0 = time.perf_counter()
            first = run_job("pipeline", settings)
            first_s = time.perf_counter() - t0
            photos = first["stages"]["enrich"]["photos_analysed"]
            assert photos > 0, first["stages"]["enrich"]
            def nothing_new(before_each: str | None) -> tuple[list[float], list[dict], dict]:
                times, rows = [], []
                for _ in range(args.runs):
                    if before_each:
                        with psycopg2.connect(**db.kwargs()) as c, c.cursor() as cur:
                            cur.execute(before_each)
                        c.close()
                    t0 = time.perf_counter()
                    s = run_job("pipeline", settings)
                    times.append(time.perf_counter() - t0)
                    st = s["stages"]
                    assert st["load"]["rows_inserted"] == 0 and st["enrich"]["photos_analysed"] == 0, st
                    assert st["transform"]["status"] == "success" and st["transform"]["tests_failed"] == 0
                    rows.append(stage_seconds(settings.logs_path, s["run_id"]))
                return times, rows, st["transform"]

            whole_times, whole_rows, whole_tf = nothing_new("DELETE FROM raw.transform_state")
            assert whole_tf["build_scope"] == "all"
            day_times, day_rows, day_tf = nothing_new("UPDATE raw.transform_state SET built_on = built_on - 1")
            same_times, same_rows, same_tf = nothing_new(None)
            print(f"\nsample export: {first['stages']['load']['rows_inserted']} messages, {photos} photos; "
                  f"{os.cpu_count()} cores")
            print(f"{'run':<44} {'seconds':>8}   per stage (s)")
            print(f"{'first run (everything new)':<44} {first_s:>8.2f}   "
                  f"{json.dumps(stage_seconds(settings.logs_path, first['run_id']))}")
            for label, times, rows in (("nothing new, whole build (before)", whole_times, whole_rows),
                                       ("nothing new, next day", day_times, day_rows),
                                       ("nothing new, same day", same_times, same_rows)):
                for i, (t, r) in enumerate(zip(times, rows, strict=True)):
                    print(f"{f'{label}, run {i + 1}':<44} {t:>8.2f}   {json.dumps(r)}")
            print(f"\nnext day: dbt {day_tf['build_scope']!r}, {day_tf['models_built']} model built, "
                  f"{day_tf['tests_passed']} tests passed; same day: dbt {same_tf['build_scope']!r}; "
                  f"freshness judged: {same_tf['freshness']}")
            day_s, same_s = statistics.median(day_times), statistics.median(same_times)
            whole_s = statistics.median(whole_times)
            ok = day_s < 5
            print(f"nothing-new daily job, median of {args.runs}: next day {day_s:.2f} s, same day {same_s:.2f} s, "
                  f"whole build as before {whole_s:.2f} s; first run {first_s:.2f} s")
            print(f"next day / whole build = {day_s / whole_s:.2f}, next day / first run = {day_s / first_s:.2f}; "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; target < 5 s: "
                  f"{'PASS' if ok else 'FAIL'}")
            return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
