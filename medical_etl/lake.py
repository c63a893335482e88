"""The JSON data lake: layout, atomic writes, per-channel state and run manifests.

Layout under ``RAW_DATA_PATH``::

    telegram_messages/YYYY-MM-DD/<channel>.json   messages, partitioned by message date (UTC)
    images/<channel>/<message_id>.jpg             photos
    state/<channel>.json                          resume point per channel
    manifests/<run_id>.json                       what each scrape run wrote

A message record (one object of a partition's array) has the same fields whether it was scraped
through the API or imported from a Telegram Desktop export. ``RECORD`` is their one description:
name, column in ``raw.telegram_messages``, validation kind; the scrape stage writes it, the load
stage validates it with those kinds, and a test holds the table's columns to it.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MESSAGES_DIR = "telegram_messages"
IMAGES_DIR = "images"
STATE_DIR = "state"
MANIFESTS_DIR = "manifests"

@dataclass(frozen=True)
class Field:
    """One field of a message record: its name in the lake, its column in ``raw.telegram_messages``
    (migrations/001 and later), how the load stage validates it (``kind``, optional when it ends in
    ``?``) and what it holds."""

    name: str
    column: str
    kind: str
    about: str


# The message record, in column order. Kinds: channel (a channel name, CHANNEL_NAME), id (a 32-bit
# Telegram id), int (64-bit), count (32-bit, >= 0), ts (ISO 8601), text, str, media_status
# (MEDIA_STATUSES), path (a photo path under images/).
RECORD = (
    Field("channel_username", "channel", "channel", "the channel's username (the lake's and the warehouse's channel key)"),
    Field("message_id", "message_id", "id", "the post's id, unique per channel"),
    Field("channel_title", "channel_title", "str?", "its display name"),
    Field("channel_id", "channel_id", "int?", "Telegram's numeric channel id"),
    Field("date", "message_date", "ts", "when it was posted, ISO 8601 UTC"),
    Field("text", "message_text", "text", "its text or caption ('' when none)"),
    Field("views", "views", "count?", "view count when scraped"),
    Field("forwards", "forwards", "count?", "forward count"),
    Field("replies", "replies", "count?", "comment count"),
    Field("edit_date", "edit_date", "ts?", "when it was last edited (ISO 8601 UTC), null if never"),
    Field("grouped_id", "grouped_id", "int?", "album id: posts of one album share it"),
    Field("reply_to_msg_id", "reply_to_msg_id", "id?", "the post it replies to"),
    # open-ended: a new Telegram kind only warns in dbt
    Field("media_type", "media_type", "str?", "photo, video, video_message, animation, voice, audio, sticker, "
          "document, geo, contact, webpage, poll, ...; null: no media"),
    Field("media_status", "media_status", "media_status?", "saved (the file is in the lake), not_included (the "
          "export left it out), missing (the export names a file its folder lacks), refused (the export named a "
          "file outside its folder, or not a regular file), not_saved (a kind the lake does not keep); null: no media"),
    Field("forward_from_id", "forward_from_id", "int?", "for a forwarded post, the origin's channel or user id "
          "when Telegram gives it"),
    Field("forward_from_name", "forward_from_name", "str?", "the origin's name (a Desktop export gives only the name)"),
    Field("image_path", "image_path", "path?", "images/<channel>/<message_id>.jpg relative to the lake, when the "
          "photo is saved"),
    Field("scraped_at", "scraped_at", "ts?", "when this record was written"),
)
RECORD_FIELDS = {f.name: f.about for f in RECORD}
# The values the staging model's accepted_values test requires (error severity, stg_telegram_messages.yml).
MEDIA_STATUSES = ("saved", "not_included", "missing", "refused", "not_saved")
# Telegram usernames: 5-32 characters, letters, digits and underscores, starting with a letter. A channel
# name becomes a file name in the lake, so the rule is also what keeps lake paths inside the lake.
CHANNEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{3,31}")


def is_channel_name(value) -> bool:
    """A Telegram channel username: CHANNEL_NAME, not ending in ``_``, no ``__``."""
    return isinstance(value, str) and bool(CHANNEL_NAME.fullmatch(value)) and not value.endswith("_") \
        and "__" not in value


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
