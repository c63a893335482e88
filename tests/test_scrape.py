import json
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from telethon import errors

from medical_etl import lake
from medical_etl.scrape.channels import ChannelNameError, parse_channels, read_channels_file
from medical_etl.scrape.source import SAMPLE_EXPORT
from medical_etl.scrape.stage import import_telegram_export, scrape_telegram_data
from medical_etl.scrape.standin import Post, StandInClient, read_message_list

CHANNELS = ["CheMed123", "lobelia4cosmetics", "tikvahpharma"]


@pytest.fixture
def posts(shared_sample):
    return read_message_list(shared_sample / "messages", shared_sample / "images")


def lake_messages(lake_dir: Path) -> dict:
    out = {}
    for f in (lake_dir / lake.MESSAGES_DIR).rglob("*.json"):
        for m in json.loads(f.read_text(encoding="utf-8")):
            key = (m["channel_username"], m["message_id"])
            assert key not in out, f"duplicate {key}"
            assert f.parent.name == m["date"][:10]  # partitioned by message date (UTC)
            out[key] = m
    return out


class FakeClock:
    def __init__(self):
        self.slept = []

    async def __call__(self, seconds):
        self.slept.append(seconds)


def test_full_scrape_reproduces_every_post_and_photo(posts, shared_sample, tmp_path):
    summary = scrape_telegram_data(StandInClient(posts), CHANNELS, tmp_path)
    assert summary["status"] == "success"
    assert summary["new_messages"] == 276 and summary["photos_saved"] == 197
    stored = lake_messages(tmp_path)
    assert len(stored) == 276
    raw = {}
    for f in (shared_sample / "messages").glob("*.json"):
        for m in json.loads(f.read_text(encoding="utf-8")):
            raw[(m["channel_name"], m["message_id"])] = m
    for key, m in raw.items():
        s = stored[key]
        assert s["text"].encode("utf-8") == (m["message_text"] or "").encode("utf-8")
        assert s["views"] == m["views"] and s["forwards"] == m["forwards"]
        assert s["date"] == datetime.fromisoformat(m["message_date"]).astimezone(timezone.utc).isoformat()
        src = shared_sample / "images" / key[0] / f"{key[1]}.jpg"
        if src.exists():
            assert s["image_path"] == f"images/{key[0]}/{key[1]}.jpg"
            assert (tmp_path / s["image_path"]).read_bytes() == src.read_bytes()
            assert s["media_type"] == "photo"
        else:
            assert s["image_path"] is None
    for field in ("channel_title", "channel_id", "replies", "edit_date", "grouped_id",
                  "reply_to_msg_id", "scraped_at"):
        assert field in next(iter(stored.values()))
    assert any("ብር" in m["text"] for m in stored.values())  # Amharic kept
    manifests = list((tmp_path / lake.MANIFESTS_DIR).glob("*.json"))
    assert len(manifests) == 1 and len(json.loads(manifests[0].read_text())["files"]) > 200
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.part"))


def test_second_run_adds_nothing_and_asks_only_for_newer(posts, tmp_path):
    scrape_telegram_data(StandInClient(posts), CHANNELS, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    client = StandInClient(posts)
    summary = scrape_telegram_data(client, CHANNELS, tmp_path)
    assert summary["new_messages"] == 0 and summary["updated_messages"] == 0
    assert summary["photos_saved"] == 0 and client.downloads == []
    # per channel: one first-page request after the last stored id, then one for the newest message
    # (nothing came: is the resume point still within the channel?)
    assert len(client.history_requests) == 6
    last = {"CheMed123": 97, "lobelia4cosmetics": 22905, "tikvahpharma": 188969}
    after_last = [r for r in client.history_requests if r["min_id"]]
    assert len(after_last) == 3 and {r["channel"]: r["min_id"] for r in after_last} == last
    assert all(r["returned"] == 1 for r in client.history_requests if not r["min_id"])
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written


def test_new_posts_are_appended(posts, tmp_path):
    old = [p for p in posts if p.id < 188960 or p.channel != "tikvahpharma"]
    scrape_telegram_data(StandInClient(old), CHANNELS, tmp_path)
    client = StandInClient(posts)
    summary = scrape_telegram_data(client, CHANNELS, tmp_path)
    assert summary["new_messages"] == len(posts) - len(old) > 0
    assert len(lake_messages(tmp_path)) == 276


def test_photo_on_disk_is_not_downloaded_again(posts, tmp_path):
    scrape_telegram_data(StandInClient(posts), CHANNELS, tmp_path)
    (tmp_path / "state" / "CheMed123.json").unlink()  # forget the resume point
    client = StandInClient(posts)
    summary = scrape_telegram_data(client, ["CheMed123"], tmp_path)
    assert summary["channels"]["CheMed123"]["new_messages"] == 0
    assert client.downloads == []
    # a truncated photo is fetched again
    photo = tmp_path / "images" / "CheMed123" / "10.jpg"
    photo.write_bytes(photo.read_bytes()[:100])
    (tmp_path / "state" / "CheMed123.json").unlink()
    client = StandInClient(posts)
    scrape_telegram_data(client, ["CheMed123"], tmp_path)
    assert len(client.downloads) == 1


class FloodOnce(StandInClient):
    def __init__(self, posts, seconds, at_request=2, **kw):
        super().__init__(posts, page_size=20, **kw)
        self.seconds, self.at, self.fired = seconds, at_request, False

    async def on_page(self, entity, request_no):
        if not self.fired and request_no == self.at:
            self.fired = True
            raise errors.FloodWaitError(request=None, capture=self.seconds)


def test_flood_wait_under_cap_waits_then_continues(posts, tmp_path):
    clock = FakeClock()
    summary = scrape_telegram_data(FloodOnce(posts, 42), CHANNELS, tmp_path, flood_wait_cap_s=60, sleep=clock)
    assert clock.slept == [42]
    assert summary["status"] == "success" and summary["new_messages"] == 276
    assert summary["channels"]["CheMed123"]["flood_waits"] == 1
    assert len(lake_messages(tmp_path)) == 276


def test_flood_wait_above_cap_stops_channel_with_progress_saved(posts, tmp_path):
    clock = FakeClock()
    client = FloodOnce(posts, 3600, at_request=3)  # after 40 CheMed123 messages
    summary = scrape_telegram_data(client, CHANNELS, tmp_path, flood_wait_cap_s=60, sleep=clock)
    assert clock.slept == []  # never waits an hour, never busy-loops
    ch = summary["channels"]["CheMed123"]
    assert "flood_wait" in ch["error"] and summary["status"] == "partial"
    state = lake.read_state(tmp_path, "CheMed123")
    assert state["last_message_id"] == ch["last_message_id"] > 0  # progress saved
    assert ch["new_messages"] == 40
    assert summary["channels"]["lobelia4cosmetics"]["error"] is None
    # the next run resumes where it stopped and completes the channel
    summary = scrape_telegram_data(StandInClient(posts), CHANNELS, tmp_path)
    assert summary["channels"]["CheMed123"]["new_messages"] == 76 - 40
    assert len(lake_messages(tmp_path)) == 276


class Flaky(StandInClient):
    def __init__(self, posts, failures, always=False):
        super().__init__(posts, page_size=30)
        self.failures, self.always = failures, always

    async def on_page(self, entity, request_no):
        if self.failures > 0 and (self.always or request_no % 2 == 0):
            self.failures -= 1
            raise ConnectionResetError("connection reset by peer")


def test_network_errors_are_retried_with_backoff(posts, tmp_path):
    clock = FakeClock()
    summary = scrape_telegram_data(Flaky(posts, 2), CHANNELS, tmp_path, sleep=clock, backoff_s=1)
    assert summary["status"] == "success" and len(lake_messages(tmp_path)) == 276
    assert len(clock.slept) == 2 and clock.slept[1] > clock.slept[0]  # exponential


def test_network_errors_exhausted_report_channel(posts, tmp_path):
    clock = FakeClock()
    summary = scrape_telegram_data(Flaky(posts, 10**6, always=True), ["CheMed123"], tmp_path, sleep=clock,
                                   network_attempts=3)
    assert summary["status"] == "failed"
    assert "network" in summary["channels"]["CheMed123"]["error"]
    assert len(clock.slept) == 2


def test_private_and_missing_channels_do_not_stop_the_others(posts, tmp_path):
    client = StandInClient(posts, private={"lobelia4cosmetics"})
    summary = scrape_telegram_data(client, CHANNELS + ["DoesNotExist42"], tmp_path)
    assert summary["status"] == "partial"
    assert "ChannelPrivateError" in summary["channels"]["lobelia4cosmetics"]["error"]
    assert "Cannot find any entity" in summary["channels"]["DoesNotExist42"]["error"]
    assert summary["channels"]["tikvahpharma"]["new_messages"] == 100
    assert sorted(summary["failed_channels"]) == ["DoesNotExist42", "lobelia4cosmetics"]


@pytest.mark.parametrize("content", [b'{"last_message_id": "abc"}', b"[]", b"\x89PNG\r\n\x1a\n\x00\xff", b"",
                                     b'{"last_message_id": 99999999999}', b'{"last_message_id": -3}'],
                         ids=["string", "list", "binary", "empty", "beyond-32-bit", "negative"])
def test_corrupt_resume_point_fails_only_its_channel_naming_the_file(posts, tmp_path, content):
    scrape_telegram_data(StandInClient(posts), ["CheMed123"], tmp_path)
    state = tmp_path / "state" / "CheMed123.json"
    state.write_bytes(content)
    summary = scrape_telegram_data(StandInClient(posts), CHANNELS, tmp_path)
    assert summary["status"] == "partial" and summary["failed_channels"] == ["CheMed123"]
    error = summary["channels"]["CheMed123"]["error"]
    assert error.startswith(f"ResumePointError: resume point {state} ")
    assert 'write {"last_message_id": 97}' in error and "or delete it" in error  # what to do
    assert state.read_bytes() == content  # left for someone to look at
    for other in CHANNELS[1:]:
        assert summary["channels"][other]["error"] is None and summary["channels"][other]["new_messages"] == 100
    state.write_text('{"last_message_id": 97}')  # as the error says
    summary = scrape_telegram_data(StandInClient(posts), CHANNELS, tmp_path)
    assert summary["status"] == "success" and summary["new_messages"] == 0


def test_resume_point_beyond_the_newest_message_is_rewound_and_reported(posts, tmp_path):
    old = [p for p in posts if p.channel != "CheMed123" or p.id <= 50]
    scrape_telegram_data(StandInClient(old), CHANNELS, tmp_path)
    state = tmp_path / "state" / "CheMed123.json"
    state.write_text('{"last_message_id": 5000}')  # a message id, but beyond the channel's newest (97)
    summary = scrape_telegram_data(StandInClient(posts), CHANNELS, tmp_path)
    ch = summary["channels"]["CheMed123"]
    assert summary["status"] == "success" and ch["error"] is None
    assert ch["warning"] == (f"resume point {state}: last_message_id 5000 is beyond the channel's newest message "
                             "(97) and the lake's (50); rewound to 50")
    assert summary["warnings"] == [f"CheMed123: {ch['warning']}"]
    assert ch["new_messages"] == len([p for p in posts if p.channel == "CheMed123" and p.id > 50]) > 0
    assert lake.read_state(tmp_path, "CheMed123")["last_message_id"] == 97 and len(lake_messages(tmp_path)) == 276
    # the channel's newest post deleted after it was scraped: the resume point is right, nothing to say
    summary = scrape_telegram_data(StandInClient([p for p in posts if p.id != 97]), CHANNELS, tmp_path)
    assert summary["warnings"] == [] and summary["channels"]["CheMed123"]["warning"] is None
    assert lake.read_state(tmp_path, "CheMed123")["last_message_id"] == 97


def test_crash_between_messages_and_state_then_rerun_equals_clean(posts, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    scrape_telegram_data(StandInClient(posts), CHANNELS, clean)
    crashed = tmp_path / "crashed"

    def boom(*a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(lake, "write_state", boom)
    with pytest.raises(KeyboardInterrupt):
        scrape_telegram_data(StandInClient(posts), CHANNELS, crashed)
    monkeypatch.undo()
    assert lake.read_state(crashed, "CheMed123")["last_message_id"] == 0  # never advanced
    scrape_telegram_data(StandInClient(posts), CHANNELS, crashed)

    def strip(msgs):
        return {k: {f: v for f, v in m.items() if f != "scraped_at"} for k, m in msgs.items()}
    assert strip(lake_messages(crashed)) == strip(lake_messages(clean))
    images = sorted(p.relative_to(clean).as_posix() for p in (clean / "images").rglob("*.jpg"))
    assert images == sorted(p.relative_to(crashed).as_posix() for p in (crashed / "images").rglob("*.jpg"))


def test_invalid_channel_name_refused_before_any_request(posts, tmp_path):
    client = StandInClient(posts)
    with pytest.raises(ChannelNameError, match="line 2"):
        scrape_telegram_data(client, ["CheMed123", "../../etc/passwd"], tmp_path)
    assert client.history_requests == [] and not tmp_path.joinpath("telegram_messages").exists()


def test_channel_file_parsing(tmp_path):
    f = tmp_path / "channels.txt"
    f.write_text("# comment\n@CheMed123\nhttps://t.me/lobelia4cosmetics\n\nt.me/s/tikvahpharma  # x\n"
                 "chemed123\n")
    assert read_channels_file(f) == CHANNELS
    f.write_text("CheMed123\nbad name!\n")
    with pytest.raises(ChannelNameError, match=r"line 2: 'bad name!'"):
        read_channels_file(f)
    assert parse_channels(["abc_def1"]) == ["abc_def1"]
    for bad in ["ab", "1abcde", "a" * 40, "abc..def", "name/../x"]:
        with pytest.raises(ChannelNameError):
            parse_channels([bad])


def test_refresh_days_updates_counts(tmp_path):
    now = datetime.now(timezone.utc)
    old = [Post("CheMed123", i, now - timedelta(days=10 - i, hours=-1), f"post {i}", views=10) for i in range(1, 6)]
    scrape_telegram_data(StandInClient(old), ["CheMed123"], tmp_path)
    newer = [Post(p.channel, p.id, p.date, p.text, views=99) for p in old]
    s = scrape_telegram_data(StandInClient(newer), ["CheMed123"], tmp_path, refresh_days=7)
    assert s["updated_messages"] == 3  # posts 3, 4, 5 are within the last 7 days
    views = {m["message_id"]: m["views"] for m in lake_messages(tmp_path).values()}
    assert views == {1: 10, 2: 10, 3: 99, 4: 99, 5: 99}


def test_desktop_export_import_is_idempotent(tmp_path):
    export = SAMPLE_EXPORT / "CheMed123"
    s1 = import_telegram_export(export, tmp_path)
    assert s1["new_messages"] == 11 and s1["photos_saved"] == 11  # the service message is skipped
    assert s1["files_refused"] == 0
    s2 = import_telegram_export(export, tmp_path)
    assert s2["new_messages"] == 0 and s2["updated_messages"] == 0 and s2["photos_saved"] == 0
    msgs = lake_messages(tmp_path)
    assert len(msgs) == 11
    assert any("መድሀኒት" in m["text"] for m in msgs.values())
    assert all(m["channel_title"] == "CheMed Pharmacy" for m in msgs.values())
    assert {m["media_status"] for m in msgs.values()} == {"saved"}


def test_shipped_sample_is_real_small_and_complete():
    """The demo's sample: real posts with their (downscaled) photos, every photo a JPEG it names."""
    files = [p for p in SAMPLE_EXPORT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_500_000
    photos = [p for p in files if p.suffix == ".jpg"]
    assert len(photos) >= 30 and all(p.read_bytes()[:2] == b"\xff\xd8" for p in photos)
    named = set()
    for d in SAMPLE_EXPORT.iterdir():
        data = json.loads((d / "result.json").read_text(encoding="utf-8"))
        named |= {(d / m["photo"]).resolve() for m in data["messages"] if m.get("photo")}
    assert named == {p.resolve() for p in photos}


def test_missing_credentials_say_what_to_set(tmp_path):
    from medical_etl.config import Settings
    from medical_etl.scrape.telegram import TelegramConfigError, open_client

    with pytest.raises(TelegramConfigError, match="TELEGRAM_API_ID and TELEGRAM_API_HASH"):
        open_client(Settings(raw_data_path=tmp_path, logs_path=tmp_path))


def test_script_exit_code_nonzero_on_failed_channels(settings, tmp_path):
    import subprocess
    import sys

    from helpers import REPO, settings_env

    env = settings_env(settings)
    env.update(TELEGRAM_SOURCE="sample", TELEGRAM_CHANNELS="CheMed123")
    ok = subprocess.run([sys.executable, str(REPO / "scripts/scrape_telegram_data.py")], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    env.update(TELEGRAM_SOURCE="api", TELEGRAM_API_ID="12345", TELEGRAM_API_HASH="abcdef0123456789secret")
    r = subprocess.run([sys.executable, str(REPO / "scripts/scrape_telegram_data.py")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "abcdef0123456789secret" not in r.stdout + r.stderr
    log = (settings.logs_path / "runs.jsonl").read_text()
    assert "abcdef0123456789secret" not in log and '"status": "failed"' in log


def test_telegram_session_is_not_used_by_two_processes(tmp_path):
    from medical_etl.config import Settings
    from medical_etl.errors import TransientError
    from medical_etl.filelock import acquire_lock
    from medical_etl.jobs.retry import transient_reason
    from medical_etl.scrape.source import open_source

    s = Settings(raw_data_path=tmp_path, logs_path=tmp_path, telegram_api_id=1, telegram_api_hash="x" * 32,
                 telegram_session=tmp_path / "tg.session", telegram_channels=("CheMed123",))
    lock = acquire_lock(tmp_path / "tg.session.lock")
    try:
        with pytest.raises(TransientError, match="is in use by another process") as info:
            with open_source(s):
                pass
        assert info.value.setting == "TELEGRAM_SESSION"  # the job retries it: the other user ends
        assert transient_reason(info.value) == "telegram session in use"
    finally:
        lock.release()


# --- Telegram Desktop exports: confinement and metadata -----------------------------------------

def _export(tmp_path: Path, messages: list[dict], name: str = "chan_export") -> Path:
    d = tmp_path / name
    (d / "photos").mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"name": "Export Channel", "type": "public_channel", "id": 7,
                                               "messages": messages}), encoding="utf-8")
    return d


def _msg(i: int, **extra) -> dict:
    return {"id": i, "type": "message", "date": f"2026-01-1{i % 10}T08:00:00",
            "date_unixtime": str(1768204800 + i * 60), "text": f"post {i}", **extra}


def test_import_refuses_files_outside_the_export(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside-secret-bytes")
    export = _export(tmp_path, [
        _msg(1, photo="../../../../etc/shadow"),
        _msg(2, photo="/etc/hostname"),
        _msg(3, photo="photos/link.jpg"),
        _msg(4, photo="photos/fifo.jpg"),
        _msg(5, photo="photos/dev.jpg"),
        _msg(6, photo="photos/ok.jpg"),
        _msg(7, photo="photos/inner_link.jpg"),
        _msg(8, photo="photos/deleted.jpg"),
    ])
    (export / "photos" / "link.jpg").symlink_to(secret)
    os.mkfifo(export / "photos" / "fifo.jpg")
    (export / "photos" / "dev.jpg").symlink_to("/dev/zero")
    (export / "photos" / "ok.jpg").write_bytes(b"\xff\xd8 a real photo inside")
    (export / "photos" / "inner_link.jpg").symlink_to(export / "photos" / "ok.jpg")
    lake_dir = tmp_path / "lake"
    s = import_telegram_export(export, lake_dir, "chanexport")
    assert s["status"] == "success" and s["new_messages"] == 8
    reasons = {r["message_id"]: r["reason"] for r in s["refused_files"]}
    assert s["files_refused"] == 5
    assert reasons == {1: "outside the export folder", 2: "outside the export folder",
                       3: "outside the export folder (symlink)", 4: "not a regular file",
                       5: "outside the export folder (symlink)"}
    assert s["photos_saved"] == 2  # ok.jpg, and the link that stays inside the export
    msgs = {m["message_id"]: m for m in lake_messages(lake_dir).values()}
    assert [msgs[i]["media_status"] for i in range(1, 9)] == ["refused"] * 5 + ["saved", "saved", "missing"]
    assert all(msgs[i]["image_path"] is None and msgs[i]["media_type"] == "photo" for i in range(1, 6))
    images = [p.read_bytes() for p in (lake_dir / lake.IMAGES_DIR).rglob("*") if p.is_file()]
    assert sorted(images) == [b"\xff\xd8 a real photo inside"] * 2
    assert not any(b"outside-secret" in b or b"root:" in b for b in images)


def test_import_refusals_reach_the_cli_summary_and_run_log(settings, tmp_path):
    import subprocess
    import sys

    from helpers import settings_env

    export = _export(tmp_path, [_msg(1, photo="../../../../etc/shadow"), _msg(2)], name="crafted")
    r = subprocess.run([sys.executable, "-m", "medical_etl", "import-export", str(export), "--channel", "crafted"],
                       env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["files_refused"] == 1 and summary["refused_files"][0]["reason"] == "outside the export folder"
    assert "refused file" in r.stderr
    rec = json.loads((settings.logs_path / "runs.jsonl").read_text().splitlines()[-1])
    assert rec["metrics"]["files_refused"] == 1


def test_import_keeps_edit_date_media_type_forward_origin_and_missing_files(tmp_path):
    not_included = "(File not included. Change data exporting settings to download.)"
    export = _export(tmp_path, [
        _msg(1, edited="2026-01-12T09:00:00", edited_unixtime="1768208400"),
        _msg(2, photo=not_included, width=1280, height=960),
        _msg(3, file=not_included, media_type="video_file", mime_type="video/mp4", duration_seconds=12),
        _msg(4, file=not_included, media_type="voice_message", mime_type="audio/ogg"),
        _msg(5, file="stickers/s.webp", media_type="sticker", sticker_emoji="👍"),
        _msg(6, file=not_included, media_type="audio_file", mime_type="audio/mpeg"),
        _msg(7, file=not_included, file_name="price_list.pdf", mime_type="application/pdf"),
        _msg(8, forwarded_from="Tikvah | Pharma"),
        _msg(9, file=not_included, media_type="animation", mime_type="video/mp4"),
        _msg(10, file=not_included, media_type="video_message", mime_type="video/mp4"),
    ])
    lake_dir = tmp_path / "lake"
    import_telegram_export(export, lake_dir, "chanexport")
    m = {r["message_id"]: r for r in lake_messages(lake_dir).values()}
    assert m[1]["edit_date"] == "2026-01-12T09:00:00+00:00" and m[2]["edit_date"] is None
    assert {i: m[i]["media_type"] for i in m} == {
        1: None, 2: "photo", 3: "video", 4: "voice", 5: "sticker", 6: "audio", 7: "document", 8: None,
        9: "animation", 10: "video_message"}
    assert {i: m[i]["media_status"] for i in m} == {
        1: None, 2: "not_included", 3: "not_included", 4: "not_included", 5: "not_saved", 6: "not_included",
        7: "not_included", 8: None, 9: "not_included", 10: "not_included"}
    assert m[8]["forward_from_name"] == "Tikvah | Pharma" and m[1]["forward_from_name"] is None


def test_scraped_and_imported_records_have_the_same_fields(tmp_path):
    from telethon.tl import types

    from medical_etl.scrape.stage import forward_origin, media_type, message_record

    export = _export(tmp_path, [_msg(1)])
    import_telegram_export(export, tmp_path / "lake", "chanexport")
    imported = next(iter(lake_messages(tmp_path / "lake").values()))
    # A message as the API gives it: forwarded from a channel, edited, with a round video.
    api_msg = types.Message(
        id=5, peer_id=types.PeerChannel(1), date=datetime(2026, 1, 1, tzinfo=timezone.utc), message="x",
        edit_date=datetime(2026, 1, 2, tzinfo=timezone.utc),
        fwd_from=types.MessageFwdHeader(date=datetime(2025, 12, 1, tzinfo=timezone.utc),
                                        from_id=types.PeerChannel(777), post_author="Sales desk"),
        media=types.MessageMediaDocument(document=types.Document(
            id=1, access_hash=1, file_reference=b"", date=None, mime_type="video/mp4", size=1, dc_id=1,
            attributes=[types.DocumentAttributeVideo(duration=3, w=240, h=240, round_message=True)])))
    entity = types.Channel(id=1, title="T", photo=types.ChatPhotoEmpty(), date=None, username="chanapi")
    scraped = message_record(api_msg, entity, None, "2026-01-03T00:00:00+00:00")
    assert scraped.keys() == imported.keys() == lake.RECORD_FIELDS.keys()
    assert forward_origin(api_msg) == (777, "Sales desk") and media_type(api_msg) == "video_message"
    assert scraped["media_status"] == "not_saved" and scraped["edit_date"] == "2026-01-02T00:00:00+00:00"


def test_import_refuses_a_device_node_inside_the_export(tmp_path):
    import stat

    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    export = _export(tmp_path, [_msg(1, photo="photos/zero.jpg")])
    os.mknod(export / "photos" / "zero.jpg", 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers
    s = import_telegram_export(export, tmp_path / "lake", "chanexport")
    assert s["files_refused"] == 1 and s["refused_files"][0]["reason"] == "not a regular file"
    assert not list((tmp_path / "lake" / lake.IMAGES_DIR).rglob("*.jpg"))


def test_scrape_creates_the_telegram_session_file_private(settings, tmp_path):
    from medical_etl.scrape.telegram import build_client

    s = replace(settings, telegram_api_id=12345, telegram_api_hash="0123456789abcdef0123456789abcdef",
                telegram_session=tmp_path / "sessions" / "scraper")
    old = os.umask(0o022)
    try:
        client = build_client(s)
        client.session.close()
    finally:
        os.umask(old)
    path = tmp_path / "sessions" / "scraper.session"
    assert path.is_file() and path.stat().st_mode & 0o777 == 0o600



class _ServerErrors(StandInClient):
    def __init__(self, posts, raise_):
        super().__init__(posts, page_size=30)
        self.raise_ = list(raise_)

    async def on_page(self, entity, request_no):
        if self.raise_:
            raise self.raise_.pop(0)


def test_telegram_server_errors_are_retried_not_reported_as_channel_failures(tmp_path):
    posts = [Post("CheMed123", i, datetime(2026, 1, 10, tzinfo=timezone.utc), f"post {i}") for i in range(1, 70)]
    slept = []

    async def sleep(s):
        slept.append(s)

    client = _ServerErrors(posts, [errors.RpcCallFailError(request=None),
                                   errors.ServerError(request=None, message="INTERNAL_SERVER_ERROR", code=500),
                                   errors.TimedOutError(request=None, message="Timeout", code=-503)])
    summary = scrape_telegram_data(client, ["CheMed123"], tmp_path, sleep=sleep, network_attempts=5)
    assert summary["status"] == "success" and summary["channels"]["CheMed123"]["new_messages"] == 69
    assert len(slept) == 3
