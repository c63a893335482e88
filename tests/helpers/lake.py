"""Lake records and files for the tests: a message record as the scrape stage writes it, and a channel-day
file of them (or of any text, to test what the loader does with a bad file)."""
from __future__ import annotations

import json
from pathlib import Path


def msg(mid, text="hello", channel="CheMed123", **kw) -> dict:
    """A valid lake message record (``lake.RECORD``) of ``channel``; ``kw`` replaces fields."""
    base = {"channel_username": channel, "channel_title": "CheMed", "channel_id": 1, "message_id": mid,
            "date": "2026-01-10T08:00:00+00:00", "text": text, "views": 10, "forwards": 1, "replies": 0,
            "edit_date": None, "grouped_id": None, "reply_to_msg_id": None, "media_type": None,
            "image_path": None, "scraped_at": "2026-01-11T00:00:00+00:00"}
    base.update(kw)
    return base


def write_raw(lake_dir: Path, day: str, channel: str, text: str) -> Path:
    """``text`` as the lake file of ``channel`` on ``day``."""
    d = Path(lake_dir) / "telegram_messages" / day
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{channel}.json").write_text(text, encoding="utf-8")
    return d / f"{channel}.json"


def write(lake_dir: Path, day: str, channel: str, records, ascii_only: bool = True) -> Path:
    """``records`` as the lake file of ``channel`` on ``day``."""
    return write_raw(lake_dir, day, channel, json.dumps(records, ensure_ascii=ascii_only))
