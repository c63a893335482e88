"""Where a scrape reads from, chosen by ``TELEGRAM_SOURCE``: Telegram's API (the session file locked
for the run), the shipped sample, or Telegram Desktop exports served through the stand-in client."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from medical_etl.config import Settings
from medical_etl.errors import ConfigError, TransientError
from medical_etl.filelock import LockHeld, acquire_lock
from medical_etl.scrape.channels import parse_channels, read_channels_file
from medical_etl.scrape.standin import StandInClient, read_desktop_export

SAMPLE_EXPORT = Path(__file__).resolve().parents[1] / "sample_export"


@dataclass
class Source:
    """A client to scrape with, the channels to ask it for, and what to add to the stage summary."""

    client: object
    channels: list[str]
    about: dict = field(default_factory=dict)


def configured_channels(settings: Settings) -> list[str]:
    """TELEGRAM_CHANNELS when set, else the channels file (validated names)."""
    if settings.telegram_channels:
        return parse_channels(settings.telegram_channels, source="TELEGRAM_CHANNELS")
    return read_channels_file(settings.telegram_channels_file)


def export_dirs(source: str) -> list[Path]:
    """The export folders a TELEGRAM_SOURCE names: ``sample``, one export, or a folder of exports."""
    root = SAMPLE_EXPORT if source == "sample" else Path(source)
    if (root / "result.json").is_file():
        return [root]
    dirs = sorted(p for p in root.iterdir() if (p / "result.json").is_file()) if root.is_dir() else []
    if not dirs:
        raise ConfigError("TELEGRAM_SOURCE", f"{source}: no Telegram Desktop export (result.json) found",
                          stage="scrape")
    return dirs


@contextmanager
def open_source(settings: Settings, client=None, channels: list[str] | None = None) -> Iterator[Source]:
    """The source a run scrapes: ``client`` when given (tests, notebooks), else TELEGRAM_SOURCE."""
    if client is not None:
        yield Source(client, channels or configured_channels(settings))
        return
    if settings.telegram_source != "api":
        dirs = export_dirs(settings.telegram_source)
        refused: list[dict] = []
        posts = [p for d in dirs for p in read_desktop_export(d, refused=refused)]
        kind = "sample" if settings.telegram_source == "sample" else "export"
        yield Source(StandInClient(posts), [d.name for d in dirs],
                     {"source": kind, "files_refused": len(refused), "refused_files": refused})
        return
    from medical_etl.scrape.telegram import open_client

    channels = channels or configured_channels(settings)
    # A Telethon session file must not be used by two processes at once (jobs already hold the
    # job lock; this also covers a single stage started by hand).
    try:
        lock = acquire_lock(Path(f"{settings.telegram_session}.lock"))
    except LockHeld as held:
        raise TransientError(f"Telegram session {settings.telegram_session} is in use by another process "
                             f"({held.holder})", reason="telegram session in use", stage="scrape",
                             setting="TELEGRAM_SESSION") from None
    try:
        real = open_client(settings)
        try:
            yield Source(real, channels, {"source": "api"})
        finally:
            real.disconnect()
    finally:
        lock.release()
