"""The load stage against hostile lakes: poison records quarantined with their reason while the rest loads,
duplicates decided as a clean load decides them, and nothing outside the lake read."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest
from helpers import query, scratch_database
from helpers.lake import msg, write, write_raw

from medical_etl.db import conn_params
from medical_etl.load import load_raw_to_postgres


def raw_rows(conn):
    return query(conn, """SELECT channel, message_id, message_text, views, source_file, source_position
                          FROM raw.telegram_messages ORDER BY 1, 2""")


def rejects(conn):
    return query(conn, "SELECT source_file, position, reason FROM raw.load_rejects ORDER BY 1, 2")


def assert_rerun_changes_nothing(settings, lake_dir, conn):
    before, before_rejects = raw_rows(conn), rejects(conn)
    again = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert again["rows_inserted"] == 0 and again["rows_updated"] == 0
    assert raw_rows(conn) == before and rejects(conn) == before_rejects


def clean_load(pg_admin, lake_dir):
    with scratch_database(pg_admin) as db:
        load_raw_to_postgres(db, lake_dir)
        c = psycopg2.connect(**db.kwargs())
        try:
            return raw_rows(c), rejects(c)
        finally:
            c.close()


# --- poison records in the lake (load) ---------------------------------------------

def test_lone_surrogate_is_stored_as_replacement_character(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    # valid JSON, not valid UTF-8 text: half an emoji in the text and in a rejected record
    write_raw(lake_dir, "2026-01-10", "CheMed123",
              '[' + json.dumps(msg(1, "price 100 birr ")).replace('birr ', 'birr \\ud83d') + ','
              + json.dumps(msg(2, views=-1)).replace('"hello"', '"bad \\udc00"') + ']')
    write(lake_dir, "2026-01-10", "tikvahpharma", [msg(5, channel="tikvahpharma")])
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 2 and s["surrogates_replaced"] == 1 and s["rows_rejected"] == 1
    texts = dict(query(conn, "SELECT message_id, message_text FROM raw.telegram_messages"))
    assert texts == {1: "price 100 birr \ufffd", 5: "hello"}
    (reject,) = query(conn, "SELECT position, reason, payload FROM raw.load_rejects")
    assert reject[0] == 1 and "negative count" in reject[1] and "bad \ufffd" in reject[2]
    assert_rerun_changes_nothing(settings, lake_dir, conn)


@pytest.mark.parametrize("bad, reason", [
    ({"views": 2**63}, "views: 9223372036854775808 is out of range"),
    ({"views": 2**40}, "views: 1099511627776 is out of range"),
    ({"message_id": 2**64}, "message_id: 18446744073709551616 is out of range"),
    ({"message_id": -3}, "message_id: must be positive"),
    ({"channel_id": -(2**70)}, "channel_id: "),
    ({"reply_to_msg_id": 2**33}, "reply_to_msg_id: 8589934592 is out of range"),
])
def test_out_of_range_integers_are_quarantined_and_the_batch_loads(settings, conn, tmp_path, bad, reason):
    lake_dir = tmp_path / "lake"
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1), msg(2, **bad), msg(3)])
    write(lake_dir, "2026-01-11", "CheMed123", [msg(4, date="2026-01-11T08:00:00+00:00")])
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 3 and s["rows_rejected"] == 1
    assert [r[1] for r in raw_rows(conn)] == [1, 3, 4]
    ((file, pos, why),) = rejects(conn)
    assert file.endswith("2026-01-10/CheMed123.json") and pos == 1 and reason in why
    assert_rerun_changes_nothing(settings, lake_dir, conn)


def test_dates_outside_telegram_and_the_clock_are_rejected(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    soon = (datetime.now(timezone.utc) + timedelta(minutes=20)).isoformat()
    write(lake_dir, "2026-01-10", "CheMed123", [
        msg(1, date="2099-01-01T00:00:00+00:00"), msg(2, date="1999-05-01T00:00:00+00:00"),
        msg(3, date=soon), msg(4, edit_date="2099-01-01T00:00:00+00:00"), msg(5),
        msg(6, scraped_at="2099-01-01T00:00:00+00:00"), msg(7, media_status="bogus", media_type="photo"),
        msg(8, media_status="not_included", media_type="a-kind-telegram-adds-next-year")])
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 3  # 20 minutes ahead is clock skew; an unknown media kind only warns in dbt
    reasons = {pos: why for _, pos, why in rejects(conn)}
    assert set(reasons) == {0, 1, 3, 5, 6}
    assert "in the future" in reasons[0] and "predates Telegram" in reasons[1] and "edit_date" in reasons[3]
    assert "scraped_at" in reasons[5] and "media_status: 'bogus' is not one of" in reasons[6]
    # a post from the future becomes valid with time: its file is read again on every run until then
    again = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert again["files_read"] == 1 and again["rows_inserted"] == 0 and len(rejects(conn)) == 5


def test_values_the_loader_accepts_pass_the_dbt_tests(settings, conn, tmp_path):
    """The extremes the loader lets through build and test cleanly in dbt (no stop for everyone)."""
    from medical_etl.transform import run_dbt_transformations

    lake_dir = tmp_path / "lake"
    edge = (datetime.now(timezone.utc) + timedelta(minutes=50)).replace(microsecond=0).isoformat()
    write(lake_dir, "2026-01-10", "CheMed123", [
        msg(2**31 - 1, "Paracetamol 500mg 💵280", views=2**31 - 1, forwards=2**31 - 1, replies=2**31 - 1,
            channel_id=-(2**63), grouped_id=2**63 - 1),
        msg(2, "early", date="2013-08-14T00:00:00+00:00"),
        msg(3, "skewed clock", date=edge)])
    write(lake_dir, "2026-01-10", "tikvahpharma", [
        msg(9, "x\ud83d", channel="tikvahpharma", views=0, media_type="a-new-kind", media_status="not_saved"),
        msg(10, "y", channel="tikvahpharma", media_type="photo", media_status="not_included",
            forward_from_name="\u12a0\u1295\u12f5" * 100, forward_from_id=-(2**63))])
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 5 and s["rows_rejected"] == 0
    summary = run_dbt_transformations(conn_params(settings), check_freshness=False)
    assert summary["status"] == "success", summary["failing_nodes"]
    assert summary["tests_failed"] == 0 and summary["tests_passed"] > 10


def test_same_message_in_two_files_is_resolved_the_same_whatever_the_order(settings, conn, tmp_path, pg_admin):
    lake_dir = tmp_path / "lake"
    older = [msg(1, "old copy", scraped_at="2026-01-11T00:00:00+00:00"), msg(2)]
    newer = [msg(1, "new copy", views=99, scraped_at="2026-01-12T00:00:00+00:00"),
             msg(3, date="2026-01-11T09:00:00+00:00")]
    # the newer copy lives in the lexically smaller path: path order alone would pick the old one
    f_new = write(lake_dir, "2026-01-09", "CheMed123", newer)
    f_old = write(lake_dir, "2026-01-10", "CheMed123", older)
    expected_rows, expected_rejects = clean_load(pg_admin, lake_dir)
    assert [r[2] for r in expected_rows] == ["new copy", "hello", "hello"]
    ((file, pos, why),) = expected_rejects
    assert file.endswith("2026-01-10/CheMed123.json") and pos == 0 and "2026-01-09/CheMed123.json" in why

    # incrementally, older file first, then the newer one appears
    hidden = f_new.read_text()
    f_new.unlink()
    load_raw_to_postgres(conn_params(settings), lake_dir)
    f_new.write_text(hidden)
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_duplicate"] == 1
    assert raw_rows(conn) == expected_rows and rejects(conn) == expected_rejects
    assert_rerun_changes_nothing(settings, lake_dir, conn)

    # editing the losing file does not flip the winner
    edited = [dict(older[0], text="old copy, edited"), older[1]]
    f_old.write_text(json.dumps(edited))
    load_raw_to_postgres(conn_params(settings), lake_dir)
    assert raw_rows(conn)[0][2] == "new copy" and len(rejects(conn)) == 1
    assert raw_rows(conn) == clean_load(pg_admin, lake_dir)[0]


def test_edits_to_a_winning_file_give_the_rows_of_a_clean_load(settings, conn, tmp_path, pg_admin):
    lake_dir = tmp_path / "lake"
    winner = [msg(1, "new copy", scraped_at="2026-01-12T00:00:00+00:00"), msg(2, "kept")]
    f_win = write(lake_dir, "2026-01-09", "CheMed123", winner)
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1, "old copy", scraped_at="2026-01-11T00:00:00+00:00")])
    load_raw_to_postgres(conn_params(settings), lake_dir)
    assert raw_rows(conn)[0][2] == "new copy"

    def same_as_clean():
        rows, rej = clean_load(pg_admin, lake_dir)
        assert raw_rows(conn) == rows and rejects(conn) == rej
        return rows, rej

    # the winner's scrape time drops below the loser's: the other copy wins
    f_win.write_text(json.dumps([dict(winner[0], scraped_at="2026-01-10T00:00:00+00:00"), winner[1]]))
    load_raw_to_postgres(conn_params(settings), lake_dir)
    rows, _ = same_as_clean()
    assert rows[0][2] == "old copy"
    # back up, then the winning file loses the message altogether: the other copy is all there is
    f_win.write_text(json.dumps(winner))
    load_raw_to_postgres(conn_params(settings), lake_dir)
    assert same_as_clean()[0][0][2] == "new copy"
    f_win.write_text(json.dumps([winner[1]]))
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    rows, rej = same_as_clean()
    assert rows[0][2] == "old copy" and rej == [] and s["rows_deleted"] == 1
    # a stored record becomes invalid: it leaves the table and is quarantined
    f_win.write_text(json.dumps([dict(winner[1], date="2099-01-01T00:00:00+00:00")]))
    load_raw_to_postgres(conn_params(settings), lake_dir)
    rows, rej = same_as_clean()
    assert [r[1] for r in rows] == [1] and "in the future" in rej[0][2]
    assert_rerun_changes_nothing(settings, lake_dir, conn)


def test_rows_stored_before_positions_existed_are_read_again_not_a_failure(settings, conn, tmp_path, pg_admin):
    lake_dir = tmp_path / "lake"
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1, "old copy"), msg(2, date="2099-01-01T00:00:00+00:00")])
    load_raw_to_postgres(conn_params(settings), lake_dir)
    with conn.cursor() as cur:  # as a database loaded by the previous version looks after migration 009
        cur.execute("""INSERT INTO raw.telegram_messages (channel, message_id, message_date, message_text,
                           source_file) VALUES ('CheMed123', 2, '2099-01-01', 'from the future',
                           'telegram_messages/2026-01-10/CheMed123.json')""")
        cur.execute("UPDATE raw.telegram_messages SET source_position = NULL")
        cur.execute("UPDATE raw.loaded_files SET size_bytes = -1, sha256 = ''")
    conn.commit()
    write(lake_dir, "2026-01-09", "CheMed123", [msg(1, "new copy", scraped_at="2026-01-12T00:00:00+00:00")])
    load_raw_to_postgres(conn_params(settings), lake_dir)
    rows, rej = clean_load(pg_admin, lake_dir)
    assert raw_rows(conn) == rows and rejects(conn) == rej
    assert [r[2] for r in rows] == ["new copy"] and len(rej) == 2  # the loser and the future post


def test_a_record_the_database_refuses_is_isolated_and_the_other_files_load(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    load_raw_to_postgres(conn_params(settings), lake_dir)  # creates the tables
    with conn.cursor() as cur:  # a server-side rule the loader cannot know about
        cur.execute("ALTER TABLE raw.telegram_messages ADD CONSTRAINT no_poison "
                    "CHECK (message_text <> 'poison for the server')")
    conn.commit()
    write(lake_dir, "2026-01-10", "CheMed123", [msg(1), msg(2, "poison for the server"), msg(3)])
    write(lake_dir, "2026-01-10", "tikvahpharma", [msg(7, channel="tikvahpharma")])
    write(lake_dir, "2026-01-11", "CheMed123", [msg(8, date="2026-01-11T08:00:00+00:00")])
    s = load_raw_to_postgres(conn_params(settings), lake_dir, batch_rows=1000)  # all three files in one batch
    assert s["rows_inserted"] == 4 and s["rows_refused_by_db"] == 1
    assert [r[1] for r in raw_rows(conn)] == [1, 3, 8, 7]  # CheMed123 first, then tikvahpharma
    ((file, pos, why),) = rejects(conn)
    assert pos == 1 and "CheckViolation" in why and "no_poison" in why
    assert_rerun_changes_nothing(settings, lake_dir, conn)


# --- confinement ---------------------------------------------------------------------

def test_image_paths_outside_the_lake_are_rejected_at_load(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    bad = ["../../etc/passwd", "/dev/zero", "images/../../../etc/shadow", "images/CheMed123/../../x.jpg",
           "telegram_messages/2026-01-10/CheMed123.json", "images\\CheMed123\\1.jpg"]
    records = [msg(i + 1, image_path=p) for i, p in enumerate(bad)]
    records.append(msg(50, image_path="images/CheMed123/50.jpg"))
    write(lake_dir, "2026-01-10", "CheMed123", records)
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 1 and s["rows_rejected"] == len(bad)
    assert all("is not a path under the lake's images/ folder" in why for _, _, why in rejects(conn))


def test_lake_file_that_is_a_symlink_or_fifo_is_refused_not_read(settings, conn, tmp_path):
    lake_dir = tmp_path / "lake"
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps([msg(1, "secret from outside the lake")]))
    d = lake_dir / "telegram_messages" / "2026-01-10"
    d.mkdir(parents=True)
    (d / "CheMed123.json").symlink_to(outside)
    os.mkfifo(d / "tikvahpharma.json")  # a reader would block forever
    write(lake_dir, "2026-01-11", "CheMed123", [msg(2, date="2026-01-11T08:00:00+00:00")])
    s = load_raw_to_postgres(conn_params(settings), lake_dir)
    assert s["rows_inserted"] == 1 and s["files_rejected"] == 2
    assert query(conn, "SELECT count(*) FROM raw.telegram_messages WHERE message_text LIKE 'secret%'")[0][0] == 0
    reasons = {f.rsplit("/", 1)[1]: why for f, _, why in rejects(conn)}
    assert "symbolic link" in reasons["CheMed123.json"] and "not a regular file" in reasons["tikvahpharma.json"]
