"""A synthetic data lake built from the real shared sample: same texts, new ids and dates.

Used by the load and transform benchmarks. The shared sample is read in place,
never copied into the repository.
"""
from __future__ import annotations

import json
import os
import random
import uuid
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDICAL_ETL_SHARED") or next(
    (p for p in (REPO.parent / "shared", Path("/work/shared")) if p.is_dir()), REPO.parent / "shared"))
SAMPLE = SHARED / "datasets" / "telegram-medical-sample"


@contextmanager
def scratch_database():
    """A fresh database on the configured server (embedded unless DB_HOST is set), dropped on exit."""
    import psycopg2

    from medical_etl.config import load_settings
    from medical_etl.db import ConnParams, conn_params

    admin = conn_params(load_settings())
    name = f"bench_{uuid.uuid4().hex[:8]}"
    c = psycopg2.connect(**{**admin.kwargs(), "dbname": "postgres"})
    c.autocommit = True
    c.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield ConnParams(admin.host, admin.port, name, admin.user, admin.password)
    finally:
        c.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.close()


def real_posts() -> list[dict]:
    if not SAMPLE.is_dir():
        raise SystemExit(f"shared sample not found at {SAMPLE}; set MEDICAL_ETL_SHARED")
    posts = []
    for f in sorted((SAMPLE / "messages").glob("*.json")):
        posts.extend(json.loads(f.read_text(encoding="utf-8")))
    return posts


def build_lake(lake_dir: Path, n_messages: int, n_channels: int = 12, days: int = 365, seed: int = 7,
               start_id: int = 1, start: datetime | None = None, distinct_texts: bool = False) -> int:
    """Write ``n_messages`` messages, spread over channels and days, in the scrape stage's layout; with
    ``distinct_texts`` each text gets a last line of its own (no two texts alike, as if never reposted)."""
    rng = random.Random(seed)
    posts = real_posts()
    start = start or datetime(2025, 1, 1, tzinfo=timezone.utc)
    channels = [f"pharma_channel_{i:02d}" for i in range(n_channels)]
    files: dict[tuple[str, str], list[dict]] = defaultdict(list)
    next_id = {c: start_id for c in channels}
    span = days * 86400
    for i in range(n_messages):
        src = posts[i % len(posts)]
        ch = channels[i % n_channels]
        when = start + timedelta(seconds=int(span * i / n_messages) + rng.randint(0, 59))
        mid = next_id[ch]
        next_id[ch] += 1
        has_photo = bool(src.get("has_media"))
        files[(when.date().isoformat(), ch)].append({
            "channel_username": ch, "channel_title": ch.replace("_", " ").title(), "channel_id": 1000 + int(ch[-2:]),
            "message_id": mid, "date": when.isoformat(),
            "text": (src.get("message_text") or "") + (f"\n#{ch}_{mid}" if distinct_texts else ""),
            "views": int(src.get("views") or 0) + rng.randint(0, 50), "forwards": int(src.get("forwards") or 0),
            "replies": 0, "edit_date": None, "grouped_id": None, "reply_to_msg_id": src.get("reply_to_msg_id"),
            "media_type": "photo" if has_photo else None,
            "image_path": f"images/{ch}/{mid}.jpg" if has_photo else None,
            "scraped_at": (when + timedelta(hours=1)).isoformat(),
        })
    for (day, ch), msgs in files.items():
        d = lake_dir / "telegram_messages" / day
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{ch}.json").write_text(json.dumps(msgs, ensure_ascii=False, indent=1), encoding="utf-8")
    return len(files)


def change_views(lake_dir: Path, fraction: float, seed: int = 11) -> int:
    """Bump the views of ``fraction`` of all messages (rewriting only the files that hold them)."""
    rng = random.Random(seed)
    changed = 0
    for f in sorted((lake_dir / "telegram_messages").glob("*/*.json")):
        msgs = json.loads(f.read_text(encoding="utf-8"))
        hit = False
        for m in msgs:
            if rng.random() < fraction:
                m["views"] += 1
                changed += 1
                hit = True
        if hit:
            f.write_text(json.dumps(msgs, ensure_ascii=False, indent=1), encoding="utf-8")
    return changed
