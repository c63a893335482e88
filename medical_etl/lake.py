"""The JSON data lake: layout, atomic writes, per-channel state and run manifests.

Layout under ``RAW_DATA_PATH``::

    telegram_messages/YYYY-MM-DD/<channel>.json   messages, partitioned by message date (UTC)
    images/<channel>/<message_id>.jpg             photos
    state/<channel>.json                          resume point per channel
    manifests/<run_id>.json                       what each scrape run wrote

A message record (one object of a partition's array) has the same fields whether it was scraped
through the API or imported from a Telegram Desktop export (``RECORD_FIELDS``); the load stage
validates them into ``raw.telegram_messages``.
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

MESSAGES_DIR = "telegram_messages"
IMAGES_DIR = "images"
STATE_DIR = "state"
MANIFESTS_DIR = "manifests"

RECORD_FIELDS = {
    "channel_username": "the channel's username (the lake's and the warehouse's channel key)",
    "channel_title": "its display name",
    "channel_id": "Telegram's numeric channel id",
    "message_id": "the post's id, unique per channel",
    "date": "when it was posted, ISO 8601 UTC",
    "text": "its text or caption ('' when none)",
    "views": "view count when scraped", "forwards": "forward count", "replies": "comment count",
    "edit_date": "when it was last edited (ISO 8601 UTC), null if never",
    "grouped_id": "album id: posts of one album share it",
    "reply_to_msg_id": "the post it replies to",
    "media_type": "photo, video, video_message, animation, voice, audio, sticker, document, geo, contact, "
                  "webpage, poll, ...; null: no media",
    "media_status": "saved (the file is in the lake), not_included (the export left it out), missing (the export "
                    "names a file its folder lacks), refused (the export named a file outside its folder, or not a "
                    "regular file), not_saved (a kind the lake does not keep); null: no media",
    "forward_from_id": "for a forwarded post, the origin's channel or user id when Telegram gives it",
    "forward_from_name": "the origin's name (a Desktop export gives only the name)",
    "image_path": "images/<channel>/<message_id>.jpg relative to the lake, when the photo is saved",
    "scraped_at": "when this record was written",
}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8"))


def partition_path(lake: Path, channel: str, date_iso: str) -> Path:
    return lake / MESSAGES_DIR / date_iso[:10] / f"{channel}.json"


def image_relpath(channel: str, message_id: int) -> str:
    return f"{IMAGES_DIR}/{channel}/{message_id}.jpg"


def read_partition(path: Path) -> dict[int, dict]:
    if not path.exists():
        return {}
    return {int(m["message_id"]): m for m in json.loads(path.read_text(encoding="utf-8"))}


def write_partition(path: Path, messages: dict[int, dict]) -> None:
    atomic_write_json(path, [messages[k] for k in sorted(messages)])


def read_state(lake: Path, channel: str) -> dict:
    path = lake / STATE_DIR / f"{channel}.json"
    if not path.exists():
        return {"last_message_id": 0}
    return json.loads(path.read_text(encoding="utf-8"))


def write_state(lake: Path, channel: str, state: dict) -> None:
    state = {**state, "updated_at": datetime.now(timezone.utc).isoformat()}
    atomic_write_json(lake / STATE_DIR / f"{channel}.json", state)


def iso_utc(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat()
