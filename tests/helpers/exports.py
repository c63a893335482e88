"""Test helper: the real shared sample written as Telegram Desktop exports (one folder per channel)."""
from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path


def write_desktop_exports(shared_sample: Path, out: Path) -> Path:
    for f in sorted((shared_sample / "messages").glob("*.json")):
        msgs = json.loads(f.read_text(encoding="utf-8"))
        channel = f.stem
        d = out / channel
        (d / "photos").mkdir(parents=True, exist_ok=True)
        items = []
        for m in msgs:
            when = datetime.fromisoformat(m["message_date"])
            item = {"id": m["message_id"], "type": "message", "date": when.strftime("%Y-%m-%dT%H:%M:%S"),
                    "date_unixtime": str(int(when.timestamp())), "text": m["message_text"] or "",
                    "views": m["views"], "forwards": m["forwards"]}
            src = shared_sample / "images" / channel / f"{m['message_id']}.jpg"
            if src.exists():
                shutil.copyfile(src, d / "photos" / src.name)
                item["photo"] = f"photos/{src.name}"
            items.append(item)
        (d / "result.json").write_text(json.dumps({"name": channel, "type": "public_channel", "id": 1,
                                                   "messages": items}, ensure_ascii=False), encoding="utf-8")
    return out
