import errno
import json
import multiprocessing as mp
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from helpers import REPO, settings_env

from medical_etl import secrets
from medical_etl.monitor.stats import read_log
from medical_etl.runlog import RunLog, RunLogWriteError, track_run

PAGE = os.sysconf("SC_PAGE_SIZE")


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


def test_unwritable_log_fails_a_success_and_never_hides_an_error(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(RunLogWriteError, match=r"could not write the run-log record to .*/f/sub/runs\.jsonl"):
        with track_run(blocker / "sub", job="j") as rec:  # folder cannot be created
            rec.metrics["x"] = 1
    with pytest.raises(ValueError, match="own error"):
        with track_run(blocker / "sub", job="j"):
            raise ValueError("own error")


def test_torn_malformed_and_mistyped_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"job": "a"}\n{"torn\n[1,2]\n\n{"stage": "load"}\n{"job": "b", "stage": {"a": 1}}\n'
                    '{"job": "c", "finished_at": 12345}\n{"job": "d", "error": 7}\n{"job": "e", "duration_s": "9"}\n'
                    '{"job": "f", "started_at": "yesterday"}\n{"job": "g", "error": {"message": 3}}\n'
                    '{"job": "h", "pid": true}\n{"job": "ok", "error": {"message": "boom"}, "finished_at": "2026-01-01T00:00:00Z"}\n')
    scan = RunLog(path).scan()
    assert [r["job"] for r in scan] == ["a", "ok"]
    assert (scan.records, scan.malformed, scan.invalid, scan.skipped) == (2, 1, 9, 10)
    stats = read_log(path)
    assert (stats.records, stats.malformed) == (2, 10)


def test_an_append_after_a_torn_line_keeps_both_apart(tmp_path):
    log = RunLog(tmp_path)
    log.append({"job": "a"})
    with open(log.path, "ab") as fh:  # a writer killed mid-line, or an older version on a full disk
        fh.write(b'{"job": "b", "sta')
    log.append({"job": "c"})
    assert log.path.read_bytes().split(b"\n") == [b'{"job": "a"}', b'{"job": "b", "sta', b'{"job": "c"}', b""]
    scan = log.scan()
    assert [r["job"] for r in scan] == ["a", "c"] and (scan.malformed, scan.invalid) == (1, 0)
    log.append({"job": "d"})  # a whole last line: nothing added before the record
    assert log.path.read_bytes().endswith(b'{"job": "c"}\n{"job": "d"}\n')


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs to fill: the kernel's own ENOSPC, short writes included (needs mount rights)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(folder):
    """Fill the file system of ``folder`` to its last page; returns the filler (page-aligned)."""
    filler = folder / "filler"
    with pytest.raises(OSError) as full, open(filler, "wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * PAGE)
    assert full.value.errno == errno.ENOSPC and filler.stat().st_size % PAGE == 0
    return filler


def test_a_write_that_fails_on_a_full_disk_is_undone(small_fs):
    log = RunLog(small_fs)
    log.append({"job": "a"})  # its page has room for part of the next record
    fill(small_fs)
    before = log.path.read_bytes()
    with pytest.raises(OSError) as exc:
        log.append({"job": "b", "pad": "x" * 2 * PAGE})
    assert exc.value.errno == errno.ENOSPC
    assert log.path.read_bytes() == before  # the part that fitted was truncated away


def test_a_full_logs_path_fails_the_job_and_the_next_record_stays_apart(settings, small_fs):
    s = replace(settings, logs_path=small_fs)
    env = {**settings_env(s), "TELEGRAM_SOURCE": "sample"}

    def job():
        return subprocess.run([sys.executable, "-m", "medical_etl", "job", "scrape-load"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    first = job()
    assert first.returncode == 0, first.stderr[-2000:]
    log = RunLog(small_fs)
    filler = fill(small_fs)
    os.truncate(filler, filler.stat().st_size - PAGE)
    fd = os.open(log.path, os.O_WRONLY | os.O_APPEND)  # a writer without the repair: a torn line
    torn = os.write(fd, json.dumps({"job": "old", "pad": "x" * 3 * PAGE}).encode())
    os.close(fd)
    assert PAGE <= torn < 3 * PAGE
    os.truncate(filler, filler.stat().st_size - PAGE)  # room for the job's marker, not for its records
    before = log.path.read_bytes()

    full = job()
    assert full.returncode == 1, full.stderr[-2000:]
    assert "could not write the run-log record" in full.stderr and "No space left on device" in full.stderr
    result = json.loads(full.stdout)
    assert result["status"] == "failed" and result["failed_stage"] == "scrape"
    assert "No space left on device" in result["error"] and "No space left on device" in result["run_log_error"]
    assert log.path.read_bytes() == before  # nothing half-written

    filler.unlink()
    again = job()
    assert again.returncode == 0, again.stderr[-2000:]
    scan = log.scan()
    assert [(r["stage"], r["status"]) for r in scan] == [("scrape", "success"), ("load", "success"),
                                                         (None, "success")] * 2
    assert (scan.malformed, scan.invalid) == (1, 0)
    assert read_log(log.path).malformed == 1


def _rotating_writer(path, n, tag, max_bytes):
    log = RunLog(path, max_bytes=max_bytes)
    for i in range(n):
        log.append({"job": "w", "writer": tag, "i": i, "pad": "y" * 300})


def test_rotation_with_two_concurrent_writers_loses_no_record(tmp_path):
    path = tmp_path / "runs.jsonl"
    procs = [mp.get_context("fork").Process(target=_rotating_writer, args=(path, 1500, t, 20_000))
             for t in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    log = RunLog(path)
    segments = log.segments()
    assert len(segments) > 20 and segments[-1] == path  # rotated many times while both wrote
    assert all(s.stat().st_size <= 20_000 for s in segments)
    for s in segments:  # every line of every segment is a whole record
        assert all(json.loads(line)["job"] == "w" for line in s.read_text().splitlines())
    recs = list(log.records())
    assert sorted((r["writer"], r["i"]) for r in recs) == sorted(
        [("a", i) for i in range(1500)] + [("b", i) for i in range(1500)])
    assert [r["i"] for r in recs if r["writer"] == "a"] == list(range(1500))  # segments read oldest first

    # compressed segments are still one history, for the reader and the monitor
    assert log.compress_segments() == len(segments) - 1
    assert all(s.name.endswith(".jsonl.gz") for s in log.segments()[:-1])
    assert len(list(log.records())) == 3000
    stats = read_log(path)
    assert stats.records == 3000 and stats.malformed == 0
    assert log.compress_segments() == 0


def test_reader_during_rotation_sees_every_record_once(tmp_path):
    path = tmp_path / "runs.jsonl"
    writer = mp.get_context("fork").Process(target=_rotating_writer, args=(path, 3000, "a", 10_000))
    writer.start()
    seen_max = 0
    while writer.is_alive():
        ids = [r["i"] for r in RunLog(path).records()]
        assert ids == list(range(len(ids)))  # a prefix of the history: nothing missing, nothing twice
        seen_max = max(seen_max, len(ids))
    writer.join()
    assert len(list(RunLog(path).records())) == 3000 and seen_max > 0


def test_track_run_records_the_attempt(tmp_path):
    with track_run(tmp_path, job="pipeline", stage="load", run_id="r1", attempt=2):
        pass
    (r,) = list(RunLog(tmp_path).records())
    assert r["attempt"] == 2


def test_housekeeping_compresses_then_expires_logs(tmp_path):
    import gzip
    import os
    import time

    from medical_etl.housekeeping import tidy_logs

    logs, dbt = tmp_path / "logs", tmp_path / "dbt"
    logs.mkdir()
    dbt.mkdir()
    now = time.time()
    day = 86400

    def make(p, age_days, text="x\n"):
        p.write_text(text)
        os.utime(p, (now - age_days * day, now - age_days * day))
        return p

    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    old_day = time.strftime("%Y-%m-%d", time.gmtime(now - 2 * day))
    ancient_day = time.strftime("%Y-%m-%d", time.gmtime(now - 40 * day))
    make(logs / f"cron-{today}-pipeline.log", 0)  # today's: being written, kept as is
    make(logs / f"cron-{old_day}-pipeline.log", 2, "yesterday's run\n")
    make(logs / f"cron-{ancient_day}-weekly.log", 40)
    make(logs / f"cron-{ancient_day}-pipeline.log.gz", 40)
    make(logs / "other.log", 90)  # not ours: untouched
    make(dbt / "dbt.log", 0)
    make(dbt / "dbt.log.1", 3, "dbt backup\n")
    make(dbt / "dbt.log.2", 45)
    RunLog(logs, max_bytes=200).append({"job": "a", "pad": "z" * 150})
    RunLog(logs, max_bytes=200).append({"job": "b", "pad": "z" * 150})  # rotates the first out

    done = tidy_logs(logs, retention_days=30, dbt_log_dir=dbt, now=now)
    names = sorted(p.name for p in logs.iterdir())
    assert f"cron-{today}-pipeline.log" in names
    assert f"cron-{old_day}-pipeline.log.gz" in names and f"cron-{old_day}-pipeline.log" not in names
    with gzip.open(logs / f"cron-{old_day}-pipeline.log.gz", "rt") as fh:
        assert fh.read() == "yesterday's run\n"
    assert not [n for n in names if ancient_day in n]
    assert "other.log" in names
    assert "runs.000001.jsonl.gz" in names and "runs.jsonl" in names
    dbt_names = sorted(p.name for p in dbt.iterdir())
    assert "dbt.log" in dbt_names and "dbt.log.1" not in dbt_names and "dbt.log.2" not in dbt_names
    (gz,) = [n for n in dbt_names if n.endswith(".gz")]
    assert gz.startswith("dbt-") and gzip.open(dbt / gz, "rt").read() == "dbt backup\n"
    assert done == {"compressed": 2, "deleted": 3, "runlog_segments_compressed": 1}
    assert [r["job"] for r in RunLog(logs).records()] == ["a", "b"]
    assert tidy_logs(logs, retention_days=30, dbt_log_dir=dbt, now=now) == {
        "compressed": 0, "deleted": 0, "runlog_segments_compressed": 0}


def test_a_job_rotates_its_run_log_and_tidies_old_logs(settings):
    import time

    from medical_etl.jobs import run_job

    s = replace(settings, telegram_source="sample", runlog_max_mb=0.001, log_retention_days=30)
    s.logs_path.mkdir(parents=True, exist_ok=True)
    old = s.logs_path / "cron-2020-01-01-pipeline.log"
    recent = s.logs_path / f"cron-{time.strftime('%Y-%m-%d', time.gmtime(time.time() - 3 * 86400))}-pipeline.log"
    for p, age in ((old, 400), (recent, 3)):
        p.write_text("a cron run\n")
        os.utime(p, (time.time() - age * 86400,) * 2)
    from medical_etl.runlog import DEFAULT_MAX_MB, configure_rotation

    try:
        run_job("scrape-load", s)
        run_job("scrape-load", s)
    finally:
        configure_rotation(DEFAULT_MAX_MB)  # run_job set this process's limit to the test's 1 KB
    log = RunLog(s.logs_path)
    assert len(log.segments()) >= 3  # 1 KB: the stage processes and the job rotated it
    recs = list(log.records())
    assert [(r["stage"], r["status"]) for r in recs] == [("scrape", "success"), ("load", "success"),
                                                         (None, "success")] * 2
    assert read_log(s.logs_path / "runs.jsonl").records == 6
    assert not old.exists() and not recent.exists()
    assert recent.with_name(recent.name + ".gz").is_file()
