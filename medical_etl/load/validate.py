"""Validation of the lake's message records: each field by its kind (:data:`medical_etl.lake.RECORD`), a
record that fails becomes a :class:`Reject` with its reason (quarantined in ``raw.load_rejects``)."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from medical_etl import lake
from medical_etl.load.columns import FIELDS, REQUIRED

# Telegram numbers messages and counts views with 32-bit integers; channel and album ids are 64-bit.
INT32_MAX = 2**31 - 1
INT64 = (-(2**63), 2**63 - 1)
# No post predates Telegram; none may be dated after the load (beyond the clock-skew allowance
# that the dbt test assert_no_future_posts also grants: var future_tolerance_minutes).
TELEGRAM_EPOCH = datetime(2013, 8, 14, tzinfo=timezone.utc)
FUTURE_TOLERANCE = timedelta(minutes=60)
MAX_FILE_BYTES = 256 * 1024 * 1024  # one channel-day of posts is a few MB
SURROGATE = re.compile(r"[\ud800-\udfff]")
ENUMS = {"media_status": set(lake.MEDIA_STATUSES)}


class Reject(ValueError):
    """A record that fails validation; the message is the reason stored in raw.load_rejects.
    ``retry_later``: the record may become valid with time (a post dated in the future): its file is
    read again on the next run."""

    def __init__(self, reason: str, retry_later: bool = False):
        super().__init__(reason)
        self.retry_later = retry_later


def timestamp(value, name: str, latest: datetime | None = None) -> str:
    if not isinstance(value, str):
        raise Reject(f"{name}: expected an ISO 8601 date string, got {type(value).__name__}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise Reject(f"{name}: unparsable date {value[:40]!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    if latest is not None:
        if dt > latest:
            raise Reject(f"{name}: {dt.isoformat()} is in the future (more than "
                         f"{FUTURE_TOLERANCE.total_seconds() / 60:g} min after the load)", retry_later=True)
        if dt < TELEGRAM_EPOCH:
            raise Reject(f"{name}: {dt.isoformat()} predates Telegram channels ({TELEGRAM_EPOCH.date()})")
    return dt.isoformat()


def integer(value, name: str, lo: int = INT64[0], hi: int = INT64[1]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Reject(f"{name}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise Reject(f"{name}: {str(value)[:30]} is out of range ({lo} to {hi})")
    return value


def check_image_path(value: str) -> str:
    """A lake record's photo path: relative, POSIX, under images/, no way out of the lake."""
    parts = value.split("/")
    if (not value.startswith(lake.IMAGES_DIR + "/") or "\\" in value or "\x00" in value
            or any(p in ("", ".", "..") for p in parts) or len(parts) < 3):
        raise Reject(f"image_path: {value[:80]!r} is not a path under the lake's {lake.IMAGES_DIR}/ folder")
    return value


def clean_surrogates(value):
    """Lone UTF-16 surrogates (valid JSON, e.g. half an emoji) cannot be stored: replace each with U+FFFD."""
    return SURROGATE.sub("\ufffd", value) if type(value) is str else value


class NulCounter:
    def __init__(self):
        self.count = 0

    def clean(self, s: str) -> str:
        if "\x00" in s:
            self.count += s.count("\x00")
            s = s.replace("\x00", "")
        return s


def validate(rec, nul: NulCounter, latest: datetime | None = None) -> list:
    """Return the row values in FIELDS order, or raise :class:`Reject` with the reason.

    ``latest`` is the newest acceptable post date (the load's start plus the clock-skew allowance)."""
    if not isinstance(rec, dict):
        raise Reject(f"expected a JSON object, got {type(rec).__name__}")
    missing = [f for f in REQUIRED if f not in rec]
    if missing:
        raise Reject(f"missing key {missing[0]!r}")
    row = []
    for _, name, kind in FIELDS:
        v = rec.get(name)
        if v is None:
            if not kind.endswith("?") and kind != "text":
                raise Reject(f"{name}: must not be null")
            row.append("" if kind == "text" else None)
            continue
        base = kind.rstrip("?")
        if base == "channel":
            if not lake.is_channel_name(v):
                raise Reject(f"{name}: not a valid channel username: {str(v)[:40]!r}")
        elif base == "id":
            v = integer(v, name)
            if v <= 0:
                raise Reject(f"{name}: must be positive, got {v}")
            if v > INT32_MAX:
                raise Reject(f"{name}: {v} is out of range (Telegram message ids are below 2^31)")
        elif base == "int":
            v = integer(v, name)
        elif base == "count":
            v = integer(v, name)
            if v < 0:
                raise Reject(f"{name}: negative count ({v})")
            if v > INT32_MAX:
                raise Reject(f"{name}: {v} is out of range (Telegram counts are below 2^31)")
        elif base == "ts":
            v = timestamp(v, name, latest if name in ("date", "edit_date", "scraped_at") else None)
        elif base in ENUMS:
            if v not in ENUMS[base]:
                raise Reject(f"{name}: {str(v)[:40]!r} is not one of {sorted(ENUMS[base])}")
        elif base in ("str", "text", "path"):
            if not isinstance(v, str):
                raise Reject(f"{name}: expected a string, got {type(v).__name__}")
            v = nul.clean(v)
            if base == "path":
                v = check_image_path(v)
        row.append(v)
    return row


