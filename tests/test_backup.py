"""Backup and restore round trips on a real PostgreSQL (and the embedded one), through the CLI."""
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psycopg2
import pytest
from helpers import REPO, query, scratch_database, settings_env, stop_embedded_server
from test_jobs import LOAD_WAITS_ON_LOCK, _start_job, _wait_for, warehouse_fingerprint

from medical_etl.db import conn_params
from medical_etl.jobs import run_job
from medical_etl.ops.backup import BackupError, _pgserver_bin, backup, list_backups
from medical_etl.ops.restore import resolve_backup, restore


def table_fingerprint(params) -> dict:
    """Row count and checksum of every table of the raw and marts schemas."""
    c = psycopg2.connect(**params.kwargs())
    try:
        tables = query(c, """SELECT table_schema || '.' || table_name FROM information_schema.tables
                             WHERE table_schema IN ('raw', 'marts') AND table_type = 'BASE TABLE' ORDER BY 1""")
        return {t: query(c, f"SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) "
                            f"FROM {t} AS x")[0] for (t,) in tables}
    finally:
        c.close()


def _cli(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "medical_etl", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _env(s):
    env = settings_env(s)
    env.update(TELEGRAM_SOURCE=s.telegram_source, BACKUP_PATH=str(s.backup_path), BACKUP_KEEP=str(s.backup_keep))
    return env


def test_backup_restore_round_trip_then_pipeline_adds_nothing(settings, pg_database, pg_admin, tmp_path):
    s = replace(settings, telegram_source="sample", stage_timeout_s=900, backup_path=tmp_path / "backups")
    assert run_job("pipeline", s)["status"] == "success"
    before = table_fingerprint(pg_database)
    assert before["raw.telegram_messages"][0] > 0 and before["marts.fct_messages"][0] > 0
    assert len(before) >= 8

    r = _cli(_env(s), "backup")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    (b,) = list_backups(s.backup_path)
    assert out["backup"] == str(b) and out["tables"] >= len(before)
    manifest = json.loads((b / "manifest.json").read_text())
    assert {t: n for t, (n, _) in before.items()} == {t: n for t, n in manifest["tables"].items()
                                                      if t.split(".")[0] in ("raw", "marts")}
    assert manifest["database"]["pg_dump_major"] == int(manifest["database"]["server_version"].split(".")[0])
    assert (b / "lake" / "state").is_dir() and (b / "logs" / "runs.jsonl").is_file()
    assert manifest["lake"]["files"] == sum(1 for p in s.raw_data_path.rglob("*") if p.is_file()
                                            and not p.name.startswith("."))

    with scratch_database(pg_admin) as db:
        t = replace(s, db_name=db.dbname, raw_data_path=tmp_path / "restored_raw",
                    logs_path=tmp_path / "restored_logs")
        r = _cli(_env(t), "restore", "latest")
        assert r.returncode == 0, r.stderr[-3000:]
        assert table_fingerprint(db) == before
        restored_files = sorted(p.relative_to(t.raw_data_path) for p in t.raw_data_path.rglob("*") if p.is_file())
        assert restored_files == sorted(p.relative_to(s.raw_data_path) for p in s.raw_data_path.rglob("*")
                                        if p.is_file() and not p.name.startswith("."))
        history = [json.loads(line)["run_id"] for line in (t.logs_path / "runs.jsonl").read_text().splitlines()]
        assert len(history) == 5  # the pipeline's four stages and the job

        # the next pipeline run adds nothing
        again = run_job("pipeline", t)
        st = again["stages"]
        assert st["scrape"]["new_messages"] == 0 and st["load"]["rows_inserted"] == 0
        assert st["load"]["rows_updated"] == 0 and st["load"]["files_read"] == 0
        assert st["enrich"]["photos_analysed"] == 0
        after = table_fingerprint(db)
        assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
        c = psycopg2.connect(**db.kwargs())
        c_src = psycopg2.connect(**pg_database.kwargs())
        assert warehouse_fingerprint(c) == warehouse_fingerprint(c_src)
        c.close()
        c_src.close()

        # a second restore over the now non-empty database and folders is refused, then forced
        r = _cli(_env(t), "restore", b.name)
        assert r.returncode == 3 and "refusing to overwrite" in r.stderr and "--force" in r.stderr
        assert table_fingerprint(db) == after  # nothing touched
        r = _cli(_env(t), "restore", b.name, "--force")
        assert r.returncode == 0, r.stderr[-3000:]
        assert table_fingerprint(db) == before
        moved = json.loads(r.stdout)["moved_aside"]
        assert os.path.isdir(moved["lake"]) and os.path.isdir(moved["logs"])


def test_backups_link_unchanged_files_and_prune(settings, tmp_path):
    s = replace(settings, telegram_source="sample", backup_path=tmp_path / "backups", backup_keep=2)
    run_job("scrape-load", s)
    first = backup(s)
    assert first["lake"]["copied"] == first["lake"]["files"] > 0 and first["pruned"] == []
    second = backup(s)
    assert second["lake"]["linked"] == first["lake"]["files"] and second["lake"]["copied"] == 0
    a, b = (list_backups(s.backup_path)[i] / "lake" / "state" for i in (0, 1))
    for f in a.iterdir():
        assert os.stat(f).st_ino == os.stat(b / f.name).st_ino  # unchanged: a hard link, no new space
    third = backup(s)
    names = [p.name for p in list_backups(s.backup_path)]
    assert len(names) == 2 and third["pruned"] == [first["backup"].rsplit("/", 1)[1]]
    assert third["lake"]["linked"] == first["lake"]["files"]  # still whole after the oldest is gone

    # only backups of BACKUP_PATH are restored; nothing else is read because an argument named it
    with pytest.raises(BackupError, match="not a backup in BACKUP_PATH"):
        resolve_backup("/etc", s)
    with pytest.raises(BackupError, match="not a backup in BACKUP_PATH"):
        resolve_backup("../../etc", s)


def test_backup_during_a_running_load_is_consistent_and_does_not_block_it(settings, pg_admin, tmp_path):
    s = replace(settings, telegram_source="sample", stage_timeout_s=900, backup_path=tmp_path / "backups")
    env = _env(s)
    env["LOAD_BATCH_ROWS"] = "1"
    from medical_etl.db import connect
    from medical_etl.migrate import migrate

    c = connect(conn_params(s))
    migrate(c)
    with c.cursor() as cur:
        cur.execute("LOCK TABLE raw.loaded_files IN EXCLUSIVE MODE")  # the load's first batch waits here
    proc = _start_job(env, "scrape-load")
    watch = connect(conn_params(s))
    try:
        _wait_for(watch, LOAD_WAITS_ON_LOCK, lambda n: n > 0, proc)
        t0 = time.time()
        summary = backup(s)  # while a batch has copied its rows and not committed
        took = time.time() - t0
    finally:
        c.rollback()
        c.close()
        watch.close()
    assert took < 60
    assert proc.wait(600) == 0, proc.stderr.read()[-3000:]
    (b,) = list_backups(s.backup_path)
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["tables"]["raw.telegram_messages"] == 0  # the half-written batch is not in it
    assert summary["lake"]["files"] > 0  # the lake was scraped before the load began

    # the backup restores to a state from which the pipeline reaches the clean run's warehouse
    with scratch_database(pg_admin) as db, scratch_database(pg_admin) as clean_db:
        t = replace(s, db_name=db.dbname, raw_data_path=tmp_path / "r_raw", logs_path=tmp_path / "r_logs")
        restore(t, b)
        assert run_job("pipeline", t)["stages"]["load"]["rows_inserted"] > 0
        clean = replace(s, db_name=clean_db.dbname, raw_data_path=tmp_path / "c_raw", logs_path=tmp_path / "c_logs")
        run_job("pipeline", clean)
        assert table_fingerprint(db)["raw.telegram_messages"][0] == table_fingerprint(clean_db)[
            "raw.telegram_messages"][0]
        c1, c2 = psycopg2.connect(**db.kwargs()), psycopg2.connect(**clean_db.kwargs())
        assert warehouse_fingerprint(c1) == warehouse_fingerprint(c2)
        c1.close()
        c2.close()


def test_embedded_server_backup_uses_its_own_client_tools(tmp_path):
    from medical_etl.config import Settings
    from medical_etl.db import connect
    from medical_etl.ops.backup import find_tool

    s = Settings(db_host="", embedded_pg_path=tmp_path / "pg", raw_data_path=tmp_path / "raw",
                 logs_path=tmp_path / "logs", telegram_source="sample", backup_path=tmp_path / "backups")
    try:
        _embedded_round_trip(s, tmp_path, _pgserver_bin(), find_tool, connect)
    finally:
        stop_embedded_server(s.embedded_pg_path)


def _embedded_round_trip(s, tmp_path, bin_path, find_tool, connect):
    run_job("scrape-load", s)
    summary = backup(s)
    (b,) = list_backups(s.backup_path)
    manifest = json.loads((b / "manifest.json").read_text())
    major = int(manifest["database"]["server_version"].split(".")[0])
    assert manifest["database"]["embedded"] and manifest["database"]["pg_dump_major"] == major
    assert find_tool("pg_dump", major, s)[0].parent == bin_path  # the embedded server's own
    assert summary["rows"] > 0
    t = replace(s, db_name="restored", raw_data_path=tmp_path / "raw2", logs_path=tmp_path / "logs2")
    result = restore(t, b)
    assert result["rows"] == summary["rows"]
    c = connect(conn_params(t))
    try:
        assert query(c, "SELECT count(*) FROM raw.telegram_messages")[0][0] == manifest["tables"][
            "raw.telegram_messages"] > 0
    finally:
        c.close()


def test_a_failed_backup_is_recorded_and_alerted_without_touching_the_job_rules(settings, tmp_path):
    from medical_etl.monitor.alerts import METRICS, evaluate
    from medical_etl.monitor.evaluate import DEFAULT_RULES
    from medical_etl.monitor.rules import load_rules
    from medical_etl.monitor.stats import read_log

    s = replace(settings, telegram_source="sample", backup_path=tmp_path / "backups")
    run_job("scrape-load", s)
    env = _env(s)
    env.update(DB_PORT="1", DB_PASSWORD="pw-backup-secret-31", DB_CONNECT_TIMEOUT="1")
    r = _cli(env, "backup")
    assert r.returncode == 75 and "pw-backup-secret-31" not in r.stdout + r.stderr  # unreachable: transient
    assert "transient: database unreachable" in r.stderr
    assert list_backups(s.backup_path) == [] and not list((tmp_path / "backups").glob(".*partial"))
    r = _cli(_env(s), "backup")
    assert r.returncode == 0, r.stderr[-2000:]
    env["DB_PORT"] = str(s.db_port)
    env["BACKUP_PATH"] = str(tmp_path / "not-a-folder")
    (tmp_path / "not-a-folder").write_text("a file where the backups should go")
    r = _cli(env, "backup")
    assert r.returncode == 1  # a file where the folder should be: permanent

    stats = read_log(s.logs_path / "runs.jsonl")
    assert [x.status for x in stats.stage_runs("backup")] == ["failed", "success", "failed"]
    assert [x.status for x in stats.job_runs()] == ["success"]  # the scrape-load job only
    rules, _ = load_rules(DEFAULT_RULES, set(METRICS))
    alerts, _ = evaluate(rules, stats, None, {})
    fired = {a.alert_type: a for a in alerts if a.state == "firing"}
    assert fired["backup_failure"].severity == "error" and "backup failed" in fired["backup_failure"].message
    assert "pipeline_failure" not in fired


def test_client_tools_match_the_server_major_or_are_newer(settings):
    from medical_etl.ops.backup import find_tool

    def version(exe):
        return subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout

    c = psycopg2.connect(host=settings.db_host, port=settings.db_port, user=settings.db_user,
                         dbname=settings.db_name)
    server_major = int(query(c, "SHOW server_version_num")[0][0]) // 10000
    c.close()
    exe, major = find_tool("pg_dump", server_major, settings)
    assert major == server_major and f"(PostgreSQL) {server_major}." in version(exe)
    newer, newer_major = find_tool("pg_restore", server_major, settings, at_least=server_major + 1)
    assert newer_major > server_major and "pg_restore" in newer.name  # e.g. the embedded server's 16
    with pytest.raises(BackupError, match="no pg_dump for PostgreSQL 99 or newer"):
        find_tool("pg_dump", 99, settings)
    own = replace(settings, pg_bin_dir=exe.parent)
    assert find_tool("pg_dump", server_major, own)[0] == exe  # PG_BIN_DIR is looked at first


def _live_state(s) -> dict:
    """Row counts and checksums of the live tables, and every lake and log file with its checksum."""
    import hashlib

    files = {}
    for root in (s.raw_data_path, s.logs_path):
        for p in sorted(root.rglob("*")):
            if p.is_file():
                files[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return {"tables": table_fingerprint(conn_params(s)), "files": files}


@pytest.mark.parametrize("damage", ["truncated_dump", "corrupt_dump_same_size", "bad_manifest", "lake_file_missing"])
def test_a_restore_from_a_damaged_backup_leaves_everything_as_it_was(settings, tmp_path, damage):
    s = replace(settings, telegram_source="sample", backup_path=tmp_path / "backups")
    assert run_job("scrape-load", s)["status"] == "success"
    backup(s)
    (b,) = list_backups(s.backup_path)
    dump = b / "database.dump"
    if damage == "truncated_dump":
        data = dump.read_bytes()
        dump.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt_dump_same_size":
        data = bytearray(dump.read_bytes())
        data[len(data) // 2:] = b"\0" * (len(data) - len(data) // 2)
        dump.write_bytes(bytes(data))
    elif damage == "bad_manifest":
        (b / "manifest.json").write_text('{"created_at": "2026-01-01T00:00:00+00:00", "tables": 7}')
    else:
        next(p for p in (b / "lake").rglob("*.json") if p.is_file()).unlink()
    before = _live_state(s)
    assert before["tables"]["raw.telegram_messages"][0] > 0
    r = _cli(_env(s), "restore", "latest", "--force")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"backup {b.name}" in r.stderr
    assert _live_state(s) == before  # the database, the lake and the run log exactly as they were
    assert not list(s.raw_data_path.parent.glob("*before-restore*"))


def test_a_restore_that_fails_after_the_swap_puts_everything_back(settings, tmp_path, monkeypatch):
    from medical_etl.ops import restore as restore_mod

    s = replace(settings, telegram_source="sample", backup_path=tmp_path / "backups")
    assert run_job("scrape-load", s)["status"] == "success"
    backup(s)
    before = _live_state(s)

    def fail(*args, **kwargs):
        raise BackupError("restored row counts differ (simulated)")

    monkeypatch.setattr(restore_mod, "table_counts", fail)
    with pytest.raises(BackupError, match="simulated"):
        restore(s, resolve_backup("latest", s), force=True)
    assert _live_state(s) == before
    with psycopg2.connect(**conn_params(s).kwargs()) as c:
        assert not query(c, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'before_restore%'")


def test_backups_are_private_whatever_the_umask(settings, tmp_path):
    s = replace(settings, telegram_source="sample", backup_path=tmp_path / "backups")
    run_job("scrape-load", s)
    old = os.umask(0o022)
    try:
        backup(s)
        backup(s)
    finally:
        os.umask(old)
    paths = [s.backup_path, *s.backup_path.rglob("*")]
    assert len(paths) > 10
    for p in paths:
        mode = p.stat().st_mode & 0o777
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))


def test_links_and_misnamed_folders_are_never_backups(settings, tmp_path, caplog):
    s = replace(settings, telegram_source="sample", backup_path=tmp_path / "backups", backup_keep=1)
    run_job("scrape-load", s)
    outside = tmp_path / "outside"
    backup(replace(s, backup_path=outside))
    (elsewhere,) = list_backups(outside)
    real = backup(s)["backup"]
    s.backup_path.joinpath("medical_etl-29990101T000000Z").symlink_to(elsewhere)  # a link, future-dated
    # a folder whose name says the future but whose manifest says the past is older than the real one
    fake = s.backup_path / "medical_etl-29980101T000000Z"
    shutil.copytree(elsewhere, fake)
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest["created_at"] = "2001-01-01T00:00:00+00:00"
    (fake / "manifest.json").write_text(json.dumps(manifest))
    (s.backup_path / "medical_etl-20990101T000000Z").mkdir()  # no manifest: incomplete

    assert list_backups(s.backup_path) == [fake, Path(real)]
    assert resolve_backup("latest", s) == Path(real)
    with pytest.raises(BackupError, match="not a backup"):
        resolve_backup("medical_etl-29990101T000000Z", s)
    assert "links are never followed" in caplog.text and "no readable manifest" in caplog.text
    newest = backup(s)  # prunes to one: the fake and the first real one go, the link and its target stay
    assert sorted(newest["pruned"]) == sorted([fake.name, Path(real).name])
    assert s.backup_path.joinpath("medical_etl-29990101T000000Z").is_symlink() and elsewhere.is_dir()
    assert list_backups(s.backup_path) == [Path(newest["backup"])]
