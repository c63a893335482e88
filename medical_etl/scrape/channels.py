"""Channel lists: a file (one per line, comments allowed) or a comma-separated variable.

Names are validated before any request is made; this also closes path
traversal, since a channel name becomes a file name in the data lake.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from medical_etl import lake
from medical_etl.errors import PermanentError

_LINK = re.compile(r"(?:https?://)?(?:www\.)?(?:t|telegram)\.me/(?:s/)?([^/?#\s]+)/?(?:[?#].*)?", re.I)


class ChannelNameError(PermanentError, ValueError):
    """A channel entry is not a valid public Telegram username."""


def normalize(entry: str, where: str = "") -> str:
    """``@name``, ``t.me/name``, ``https://t.me/s/name`` or ``name`` -> ``name``; raises on anything else."""
    raw = entry.strip()
    m = _LINK.fullmatch(raw)
    name = m.group(1) if m else raw.removeprefix("@")
    if not lake.is_channel_name(name):
        prefix = f"{where}: " if where else ""
        raise ChannelNameError(f"{prefix}{entry.strip()!r} is not a valid Telegram channel username")
    return name


def parse_channels(entries: Iterable[str], source: str = "channels") -> list[str]:
    """Validate a list of entries (``source`` names where they came from, for messages)."""
    out: list[str] = []
    for lineno, line in enumerate(entries, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        name = normalize(text, f"{source} line {lineno}")
        if name.lower() not in (n.lower() for n in out):
            out.append(name)
    return out


def read_channels_file(path: str | Path) -> list[str]:
    path = Path(path)
    return parse_channels(path.read_text(encoding="utf-8").splitlines(), source=str(path))
