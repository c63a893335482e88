import json
import os
import signal
import subprocess
import sys
import textwrap

import psycopg2
import pytest
from helpers import query, scratch_database
from helpers.lake import msg, write

from medical_etl.db import conn_params
from medical_etl.load import LoadError, load_raw_to_postgres
from medical_etl.scrape.stage import scrape_telegram_data
from medical_etl.scrape.standin import StandInClient, read_message_list

CHANNELS = ["CheMed123", "lobelia4cosmetics", "tikvahpharma"]


@pytest.fixture
def sample_lake(shared_sample, tmp_path):
    lake_dir = tmp_path / "lake"
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    scrape_telegram_data(StandInClient(posts), CHANNELS, lake_dir, download_photos=False)
    return lake_dir



def table_snapshot(conn):
    return query(conn, """SELECT channel, message_id, message_text, views, forwards, message_date, image_path
                      FROM raw.telegram_messages ORDER BY 1, 2""")


def test_load_real_sample(settings, conn, sample_lake, shared_sample):
    s = load_raw_to_postgres(conn_params(settings), sample_lake)
    assert s["rows_inserted"] == 276 and s["records_loaded"] == 276 and s["rows_rejected"] == 0
    counts = dict(query(conn, "SELECT channel, count(*) FROM raw.telegram_messages GROUP BY 1"))
    assert counts == {"CheMed123": 76, "lobelia4cosmetics": 100, "tikvahpharma": 100}
    stored = dict(((c, m), t) for c, m, t in query(conn, "SELECT channel, message_id, message_text FROM raw.telegram_messages"))
    n_amharic = 0
    for f in (shared_sample / "messages").glob("*.json"):
        for m in json.loads(f.read_text(encoding="utf-8")):
            text = m["message_text"] or ""
            assert stored[(m["channel_name"], m["message_id"])].encode() == text.encode()
            n_amharic += any("\u1200" <= ch <= "\u137f" for ch in text)
    assert n_amharic > 20


def test_reload_changes_nothing_and_changed_views_update_exactly_those(settings, conn, sample_lake):
    load_raw_to_postgres(conn_params(settings), sample_lake)
    before = dict(((c, m), u) for c, m, u in query(conn, "SELECT channel, message_id, updated_at FROM raw.telegram_messages"))
    s = load_raw_to_postgres(conn_params(settings), sample_lake)
    assert s["rows_inserted"] == 0 and s["rows_updated"] == 0 and s["files_skipped"] > 0 and s["files_read"] == 0
    # rewrite one partition: two posts gain views, the rest identical (file changed, so it is read)
    f = next((sample_lake / "telegram_messages").glob("2026-01-16/lobelia4cosmetics.json"))
    records = json.loads(f.read_text(encoding="utf-8"))
    changed = {records[0]["message_id"], records[1]["message_id"]}
    records[0]["views"] += 100
    records[1]["views"] += 5
    for r in records:
        r["scraped_at"] = "2026-02-01T00:00:00+00:00"  # a fresh scrape time alone is no change
    f.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    s = load_raw_to_postgres(conn_params(settings), sample_lake)
    assert s["files_read"] == 1
    assert s["rows_updated"] == 2 and s["rows_inserted"] == 0 and s["rows_unchanged"] == len(records) - 2
    after = dict(((c, m), u) for c, m, u in query(conn, "SELECT channel, message_id, updated_at FROM raw.telegram_messages"))
    moved = {k for k in after if after[k] != before[k]}
    assert moved == {("lobelia4cosmetics", m) for m in changed}


def test_touched_but_identical_file_is_skipped(settings, conn, sample_lake):
    load_raw_to_postgres(conn_params(settings), sample_lake)
    f = next((sample_lake / "telegram_messages").rglob("*.json"))
    os.utime(f, ns=(1, 1))
    s = load_raw_to_postgres(conn_params(settings), sample_lake)
    assert s["files_read"] == 0 and s["files_skipped"] > 0
    (mtime,) = query(conn, "SELECT mtime_ns FROM raw.loaded_files WHERE source_file = %s",
                 (f.relative_to(sample_lake).as_posix(),))[0]
    assert mtime == 1  # bookkeeping follows, so the next run takes the fast path


def test_bad_records_are_quarantined_rest_loads(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    good = [msg(1), msg(5)]
    bad = [
        {k: v for k, v in msg(2).items() if k != "message_id"},
        msg(3, views="many"),
        msg(4, date="yesterday-ish"),
        msg(6, views=-3),
        msg(7, forwards=True),
        "not an object",
    ]
    write(lake_dir, "2026-01-10", "CheMed123", good[:1] + bad + good[1:], ascii_only=False)
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 2 and s["rows_rejected"] == 6
    assert [r[0] for r in query(conn, "SELECT message_id FROM raw.telegram_messages ORDER BY 1")] == [1, 5]
    rejects = query(conn, "SELECT source_file, position, reason, payload FROM raw.load_rejects ORDER BY position")
    assert [r[1] for r in rejects] == [1, 2, 3, 4, 5, 6]
    reasons = [r[2] for r in rejects]
    assert reasons[0] == "missing key 'message_id'"
    assert reasons[1] == "views: expected an integer, got str"
    assert reasons[2].startswith("date: unparsable date 'yesterday-ish'")
    assert reasons[3] == "views: negative count (-3)"
    assert reasons[4] == "forwards: expected an integer, got bool"
    assert reasons[5] == "expected a JSON object, got str"
    assert all(r[0] == "telegram_messages/2026-01-10/CheMed123.json" for r in rejects)
    assert json.loads(rejects[1][3])["views"] == "many"  # the raw payload is kept
    # a re-run neither duplicates rejects nor rows
    load_raw_to_postgres(conn_params(settings), lake_dir)
    assert query(conn, "SELECT count(*) FROM raw.load_rejects")[0][0] == 6


def test_invalid_json_file_rejected_whole_others_load(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1)], ascii_only=False)
    broken = lake_dir / "telegram_messages" / "2026-01-11" / "CheMed123.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('[{"channel_username": "CheMed123", "message_id": 2,')
    write(lake_dir, "2026-01-12", "CheMed123", [msg(3, date="2026-01-12T00:00:00+00:00")], ascii_only=False)
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["files_rejected"] == 1 and s["rows_inserted"] == 2
    (reject,) = query(conn, "SELECT source_file, position, reason FROM raw.load_rejects")
    assert reject[0].endswith("2026-01-11/CheMed123.json") and reject[1] == -1
    assert reject[2].startswith("invalid JSON file:")
    # once fixed, the file loads and its reject is cleared
    write(lake_dir, "2026-01-11", "CheMed123", [msg(2, date="2026-01-11T00:00:00+00:00")], ascii_only=False)
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 1 and query(conn, "SELECT count(*) FROM raw.load_rejects")[0][0] == 0


def test_nul_characters_stripped_and_counted_text_verbatim(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    evil = "'); DROP TABLE raw.telegram_messages; --"
    tricky = "tab\there\nnewline \\N back\\slash ዋጋ 1,500 ብር 💊"
    write(lake_dir, "2026-01-10", "CheMed123", [
        msg(1, text="a\x00b\x00c"), msg(2, text=evil), msg(3, text=tricky)], ascii_only=False)
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["nul_chars_stripped"] == 2 and s["rows_inserted"] == 3
    texts = dict(query(conn, "SELECT message_id, message_text FROM raw.telegram_messages"))
    assert texts == {1: "abc", 2: evil, 3: tricky}


def inject_faults(conn, *statements: str) -> None:
    """Make the server itself fail the load: the n-th statement that writes raw.telegram_messages runs
    statements[n-1] (none once they are used up). The count is a sequence, so rollbacks keep it."""
    from medical_etl.migrate import migrate

    migrate(conn)
    cases = "\n".join(f"WHEN {n} THEN {stmt};" for n, stmt in enumerate(statements, 1))
    with conn.cursor() as cur:
        cur.execute(f"""
            CREATE SEQUENCE public.fault_calls;
            CREATE FUNCTION public.inject_fault() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              CASE nextval('public.fault_calls') {cases} ELSE NULL; END CASE;
              RETURN NULL;
            END $$;
            CREATE TRIGGER inject_fault BEFORE INSERT OR UPDATE ON raw.telegram_messages
              FOR EACH STATEMENT EXECUTE FUNCTION public.inject_fault();""")
    conn.commit()


def test_transient_errors_are_retried(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1), msg(2)], ascii_only=False)
    inject_faults(conn,
                  "PERFORM pg_terminate_backend(pg_backend_pid())",  # the server drops the connection mid-write
                  "RAISE EXCEPTION 'could not serialize access' USING ERRCODE = 'serialization_failure'")
    s = load_raw_to_postgres(conn_params(settings), lake_dir, backoff_s=0.01)
    assert s["retries"] == 2 and s["rows_inserted"] == 2
    assert query(conn, "SELECT count(*) FROM raw.telegram_messages")[0][0] == 2
    assert query(conn, "SELECT last_value FROM public.fault_calls")[0][0] >= 3  # both faults happened


def test_permanent_error_fails_clearly_and_keeps_bookkeeping(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1)], ascii_only=False)
    inject_faults(conn, *["RAISE EXCEPTION 'relation raw.no_such_table does not exist' USING ERRCODE = 'undefined_table'"] * 9)
    with pytest.raises(LoadError, match=r"loading 1 file\(s\) \(telegram_messages/2026-01-10/CheMed123.json\) failed: UndefinedTable"):
        load_raw_to_postgres(conn_params(settings), lake_dir, backoff_s=0.01)
    assert query(conn, "SELECT count(*) FROM raw.loaded_files")[0][0] == 0
    assert query(conn, "SELECT last_value FROM public.fault_calls")[0][0] == 1  # not retried: permanent
    with conn.cursor() as cur:
        cur.execute("DROP TRIGGER inject_fault ON raw.telegram_messages")
    conn.commit()
    assert load_raw_to_postgres(conn_params(settings), lake_dir)["rows_inserted"] == 1


def test_migrations_are_idempotent(conn):
    from medical_etl.migrate import migrate

    first = migrate(conn)
    assert "001_raw_messages" in first
    assert migrate(conn) == []


KILL_CHILD = textwrap.dedent("""
    import os, signal, sys
    from medical_etl.load import stage, writer
    from medical_etl.db import ConnParams
    real = writer.write_rows
    n = {"batches": 0}
    def upsert_then_die(cur, batch, *args):
        n["batches"] += 1
        result = real(cur, batch, *args)
        if n["batches"] == 3:  # inside the 4th transaction's window: rows merged, not committed
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    writer.write_rows = upsert_then_die
    host, port, db, user, lake = sys.argv[1:]
    stage.load_raw_to_postgres(ConnParams(host, int(port), db, user), lake, batch_rows=40)
""")


def test_sigkill_mid_load_then_rerun_equals_clean_load(settings, conn, sample_lake, pg_database, pg_admin):
    r = subprocess.run([sys.executable, "-c", KILL_CHILD, pg_database.host, str(pg_database.port),
                        pg_database.dbname, pg_database.user, str(sample_lake)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    partial = query(conn, "SELECT count(*) FROM raw.telegram_messages")[0][0]
    assert 0 < partial < 276  # some batches committed, the one in flight rolled back
    s = load_raw_to_postgres(conn_params(settings), sample_lake)
    assert s["rows_inserted"] == 276 - partial and s["rows_updated"] == 0
    killed = table_snapshot(conn)
    # a clean load into another database
    with scratch_database(pg_admin) as clean:
        load_raw_to_postgres(clean, sample_lake)
        c2 = psycopg2.connect(**clean.kwargs())
        assert table_snapshot(c2) == killed
        c2.close()


def test_lost_bookkeeping_falls_back_to_merge(settings, conn, sample_lake):
    load_raw_to_postgres(conn_params(settings), sample_lake)
    before = table_snapshot(conn)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM raw.loaded_files")
    conn.commit()
    s = load_raw_to_postgres(conn_params(settings), sample_lake)  # every file looks new; rows already there
    assert s["rows_inserted"] == 0 and s["rows_updated"] == 0 and s["rows_unchanged"] == 276
    assert table_snapshot(conn) == before


def test_the_raw_table_and_the_loader_follow_the_lake_record_contract(settings, conn, tmp_path):
    from medical_etl import lake
    from medical_etl.load import FIELDS
    from medical_etl.migrate import migrate

    migrate(conn)
    columns = [r[0] for r in query(conn, "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                         "'raw' AND table_name = 'telegram_messages' ORDER BY ordinal_position")]
    assert {f.column for f in lake.RECORD} <= set(columns)  # every field has its column (migrations add them)
    assert [(c, n) for c, n, _ in FIELDS] == [(f.column, f.name) for f in lake.RECORD]
    # one channel-name rule for configured channels and lake records
    lake_dir = tmp_path / "lake"
    names = ["CheMed123", "ends_", "two__under", "ab"]
    write(lake_dir, "2026-01-10", "CheMed123", [msg(i, channel_username=n) for i, n in enumerate(names, 1)], ascii_only=False)
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 1 and s["rows_rejected"] == 3
    from medical_etl.scrape.channels import ChannelNameError, normalize

    for bad in names[1:]:
        with pytest.raises(ChannelNameError):
            normalize(bad)
