"""Benchmark of stage 4 (enrich) on the real photos of the shared sample, same weights, same run.

- baseline: what public implementations of this pipeline do: a Python loop calling ``model(path)``
  per image with Ultralytics defaults.
- the stage: run_yolo_enrichment over the same photos (decode thread + one worker per core).
- then a re-run with nothing new: no inference, under 5 seconds.
Targets: stage >= 1.5x the loop's photos per second; re-run < 5 s with zero photos analysed.
Usage: python bench/bench_enrich.py
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synthetic import SAMPLE, SHARED, scratch_database  # noqa: E402

from medical_etl.enrich import run_yolo_enrichment  # noqa: E402
from medical_etl.load import load_raw_to_postgres  # noqa: E402
from medical_etl.scrape import scrape_telegram_data  # noqa: E402
from medical_etl.standin import StandInClient, read_message_list  # noqa: E402

MODEL = SHARED / "models" / "yolov8n_int8.onnx"


def baseline(paths: list[Path]) -> float:
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    m = YOLO(str(MODEL), task="detect")
    m(str(paths[0]), verbose=False)  # warm-up, as the stage's model load does
    t0 = time.perf_counter()
    for p in paths:
        m(str(p), verbose=False)
    return time.perf_counter() - t0


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench_enrich_"))
    try:
        with scratch_database() as db:
            posts = read_message_list(SAMPLE / "messages", SAMPLE / "images")
            scrape_telegram_data(StandInClient(posts), ["CheMed123", "lobelia4cosmetics", "tikvahpharma"], work)
            load_raw_to_postgres(db, work)
            paths = sorted((work / "images").rglob("*.jpg"))
            n = len(paths)

            base_s = baseline(paths)
            t0 = time.perf_counter()
            s = run_yolo_enrichment(db, work, model=str(MODEL), build_models=False)
            ours_s = time.perf_counter() - t0
            assert s["photos_analysed"] == n, s
            t0 = time.perf_counter()
            again = run_yolo_enrichment(db, work, model=str(MODEL), build_models=False)
            rerun_s = time.perf_counter() - t0

            base_rate, ours_rate = n / base_s, n / ours_s
            print(f"\n{n} photos ({s['unreadable_photos']} unreadable, {s['duplicates_reused']} byte-identical reposts "
              f"analysed once), weights {MODEL.name}, {os.cpu_count()} cores")
            print(f"{'run':<44} {'seconds':>8} {'photos/s':>9}")
            print(f"{'baseline: loop of model(path), defaults':<44} {base_s:>8.2f} {base_rate:>9.2f}")
            print(f"{'stage: decode thread + worker per core':<44} {ours_s:>8.2f} {ours_rate:>9.2f}")
            print(f"{'stage re-run, nothing new':<44} {rerun_s:>8.2f} {'-':>9}")
            ratio = ours_rate / base_rate
            ok_speed, ok_rerun = ratio >= 1.5, rerun_s < 5 and again["photos_analysed"] == 0
            print(f"\nstage / loop photos per second = {ratio:.2f} (target >= 1.5): {'PASS' if ok_speed else 'FAIL'}")
            print(f"re-run {rerun_s:.2f} s, {again['photos_analysed']} photos analysed (target < 5 s, 0): "
                  f"{'PASS' if ok_rerun else 'FAIL'}")
            return 0 if ok_speed and ok_rerun else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
