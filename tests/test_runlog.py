import json
import multiprocessing as mp

import pytest

from medical_etl import secrets
from medical_etl.runlog import RunLog, track_run


def _writer(path, n, tag):
    log = RunLog(path)
    for i in range(n):
        log.append({"writer": tag, "i": i, "pad": "x" * 2000})


def test_concurrent_appends_never_tear(tmp_path):
    path = tmp_path / "runs.jsonl"
    procs = [mp.get_context("fork").Process(target=_writer, args=(path, 1000, t)) for t in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 2000
    recs = [json.loads(line) for line in lines]
    assert sorted((r["writer"], r["i"]) for r in recs) == sorted(
        [("a", i) for i in range(1000)] + [("b", i) for i in range(1000)])


def test_success_record(tmp_path):
    with track_run(tmp_path, job="pipeline", stage="load", run_id="r1") as rec:
        rec.metrics["rows"] = 7
    (r,) = list(RunLog(tmp_path).records())
    assert r["run_id"] == "r1" and r["job"] == "pipeline" and r["stage"] == "load"
    assert r["status"] == "success" and r["metrics"] == {"rows": 7} and r["error"] is None
    for key in ("started_at", "finished_at", "duration_s", "host", "pid", "peak_rss_mb", "cpu_s"):
        assert key in r
    assert r["started_at"].endswith("Z")


def test_failure_is_recorded_masked_and_reraised(tmp_path):
    secrets.register("topsecret-value-123")
    with pytest.raises(RuntimeError, match="boom"):
        with track_run(tmp_path, job="j", stage="s"):
            raise RuntimeError("boom with topsecret-value-123")
    (r,) = list(RunLog(tmp_path).records())
    assert r["status"] == "failed"
    assert r["error"]["type"] == "RuntimeError"
    assert "topsecret-value-123" not in json.dumps(r)
    assert "boom with ***" in r["error"]["message"]


def test_unwritable_log_never_hides_result(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    with track_run(blocker / "sub", job="j") as rec:  # folder cannot be created
        rec.metrics["x"] = 1
    with pytest.raises(ValueError, match="own error"):
        with track_run(blocker / "sub", job="j"):
            raise ValueError("own error")


def test_malformed_lines_are_skipped(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"a": 1}\n{"torn\n[1,2]\n{"b": 2}\n')
    assert list(RunLog(path).records()) == [{"a": 1}, {"b": 2}]
