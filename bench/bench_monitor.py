"""Benchmark of the monitor on a large run log: 100,000 records against 10,000, and against the naive
approach (load every record into a list, then compute), in the same run.

Targets: the 100,000-record evaluation takes under 5 s; its memory is flat (peak RSS grows by under
20 MB from 10,000 to 100,000 records) where the naive approach's grows with the log.
Usage: python bench/bench_monitor.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
mode, log = sys.argv[1], Path(sys.argv[2])
t0 = time.perf_counter()
if mode == "ours":
    from medical_etl.monitor.evaluate import run_monitor
    res, rc = run_monitor(log, state_path=log.with_suffix(".state"), send=False)
    n = res["metrics"]["log"]["records"]
else:  # naive: every record in memory, then the same kind of summary
    import statistics
    recs = [json.loads(l) for l in open(log)]
    by_stage = {{}}
    for r in recs:
        by_stage.setdefault(r.get("stage"), []).append(r["duration_s"])
    {{k: statistics.median(v) for k, v in by_stage.items()}}
    n = len(recs)
secs = time.perf_counter() - t0
hwm = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({{"records": n, "seconds": secs, "peak_mb": hwm}}))
"""


def write_log(path: Path, n: int) -> None:
    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    stages = ["scrape", "load", "transform", "enrich", None]
    with open(path, "w") as fh:
        for i in range(n):
            stage = stages[i % 5]
            at = start + timedelta(minutes=10 * i)
            fh.write(json.dumps({
                "run_id": f"r{i // 5}", "job": "pipeline", "stage": stage,
                "status": "failed" if i % 97 == 0 else "success", "started_at": at.isoformat(),
                "finished_at": (at + timedelta(seconds=30)).isoformat(), "duration_s": 30 + i % 17,
                "metrics": {"new_messages": 100 + i % 50, "rows_inserted": 100, "channels": {"a": {"x": 1}}},
                "error": None, "host": "h", "pid": 1, "peak_rss_mb": 100.0, "cpu_s": 3.0}) + "\n")


def measure(mode: str, log: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), mode, str(log)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        small, big = Path(d) / "small.jsonl", Path(d) / "big.jsonl"
        write_log(small, 10_000)
        write_log(big, 100_000)
        rows = {(mode, name): measure(mode, log) for mode in ("ours", "naive")
                for name, log in (("10k", small), ("100k", big))}
    print(f"{'run':<22} {'records':>8} {'seconds':>8} {'peak RSS MB':>12}")
    for (mode, name), r in rows.items():
        print(f"{mode + ' ' + name:<22} {r['records']:>8} {r['seconds']:>8.2f} {r['peak_mb']:>12.1f}")
    ours_growth = rows[("ours", "100k")]["peak_mb"] - rows[("ours", "10k")]["peak_mb"]
    naive_growth = rows[("naive", "100k")]["peak_mb"] - rows[("naive", "10k")]["peak_mb"]
    secs = rows[("ours", "100k")]["seconds"]
    print(f"\nmemory growth 10k -> 100k: ours {ours_growth:.1f} MB, naive {naive_growth:.1f} MB "
          f"(ratio {ours_growth / naive_growth if naive_growth else 0:.2f})")
    ok_time, ok_mem = secs < 5, ours_growth < 20
    print(f"100k evaluation {secs:.2f} s (target < 5 s): {'PASS' if ok_time else 'FAIL'}")
    print(f"flat memory, growth {ours_growth:.1f} MB (target < 20 MB): {'PASS' if ok_mem else 'FAIL'}")
    return 0 if ok_time and ok_mem else 1


if __name__ == "__main__":
    sys.exit(main())
