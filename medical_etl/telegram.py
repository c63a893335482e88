"""The real Telethon client, built from the settings; and the one interactive login.

Cron never blocks on a login prompt: :func:`open_client` refuses an
unauthorised session with a message saying what to do.
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import Settings


class TelegramConfigError(RuntimeError):
    """Credentials or session missing or not authorised."""


def _build(settings: Settings):
    from telethon import TelegramClient
    from telethon.sessions import StringSession

    if not settings.telegram_api_id or not settings.telegram_api_hash:
        raise TelegramConfigError(
            "Telegram credentials missing: set TELEGRAM_API_ID and TELEGRAM_API_HASH "
            "(from https://my.telegram.org), or TELEGRAM_SOURCE=sample for the shipped sample")
    if settings.telegram_string_session:
        session = StringSession(settings.telegram_string_session.reveal())
    else:
        settings.telegram_session.parent.mkdir(parents=True, exist_ok=True)
        session = str(settings.telegram_session)
    # flood_sleep_threshold=0: every FloodWait reaches the stage, which applies FLOOD_WAIT_CAP.
    return TelegramClient(session, settings.telegram_api_id, settings.telegram_api_hash.reveal(),
                          flood_sleep_threshold=0, connection_retries=3, request_retries=3)


def open_client(settings: Settings):
    """Connected, authorised client; raises :class:`TelegramConfigError` instead of prompting."""
    client = _build(settings)
    client.loop.run_until_complete(client.connect())
    if not client.loop.run_until_complete(client.is_user_authorized()):
        client.loop.run_until_complete(client.disconnect())
        raise TelegramConfigError(
            "Telegram session is not authorised: run `make telegram-login` once "
            "(interactive), or set TELEGRAM_STRING_SESSION")
    return client


def interactive_login(settings: Settings) -> Path | None:
    """Run Telethon's interactive login and leave the session file readable by its owner only."""
    client = _build(settings)
    client.start()
    client.disconnect()
    path = Path(f"{settings.telegram_session}.session") if not str(settings.telegram_session).endswith(
        ".session") else settings.telegram_session
    if path.exists():
        os.chmod(path, 0o600)
        return path
    return None
