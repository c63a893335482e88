"""The real Telethon client, built from the settings; and the one interactive login.

Cron never blocks on a login prompt: :func:`open_client` refuses an
unauthorised session with a message saying what to do.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from medical_etl.config import Settings
from medical_etl.errors import PermanentError


class TelegramConfigError(PermanentError):
    """Credentials or session missing or not authorised (``setting`` names which)."""


def string_session_problem(value: str) -> str | None:
    from telethon.sessions import StringSession

    try:
        StringSession(value)
    except Exception:  # noqa: BLE001 - Telethon raises struct/binascii errors on bad strings
        return ("not a valid Telethon string session (truncated or not from StringSession.save()): "
                "create one with `medical-etl telegram-login` or unset it to use TELEGRAM_SESSION")
    return None


def session_path(settings: Settings) -> Path:
    s = str(settings.telegram_session)
    return Path(s if s.endswith(".session") else s + ".session")


def build_client(settings: Settings):
    """The Telethon client the settings describe, not connected (the session file created 0600)."""
    from telethon import TelegramClient
    from telethon.sessions import StringSession

    if not settings.telegram_api_id or not settings.telegram_api_hash:
        raise TelegramConfigError(
            "Telegram credentials missing: set TELEGRAM_API_ID and TELEGRAM_API_HASH "
            "(from https://my.telegram.org), or TELEGRAM_SOURCE=sample for the shipped sample")
    if settings.telegram_string_session:
        if problem := string_session_problem(settings.telegram_string_session.reveal()):
            raise TelegramConfigError(f"TELEGRAM_STRING_SESSION: {problem}")
        session = StringSession(settings.telegram_string_session.reveal())
    else:
        session = str(settings.telegram_session)
        _private_session_file(settings)
    # flood_sleep_threshold=0: every FloodWait reaches the stage, which applies FLOOD_WAIT_CAP.
    return TelegramClient(session, settings.telegram_api_id, settings.telegram_api_hash.reveal(),
                          flood_sleep_threshold=0, connection_retries=3, request_retries=3)


def _private_session_file(settings: Settings) -> Path:
    """The session file holds the account's login key: create it 0600 before Telethon opens it,
    and tighten one that an older version (or another tool) left readable."""
    path = session_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    return path


def open_client(settings: Settings, timeout_s: float = 60):
    """Connected, authorised client; raises :class:`TelegramConfigError` instead of prompting.

    Telegram hangs up on a wrong API id/hash, and Telethon then reconnects in the background
    without end: connecting and the authorisation check are bounded by ``timeout_s``."""
    client = build_client(settings)
    hint = "check the network, and TELEGRAM_API_ID / TELEGRAM_API_HASH (Telegram closes the connection on wrong ones)"

    async def connect_and_check() -> bool:
        await asyncio.wait_for(client.connect(), timeout_s)
        return await asyncio.wait_for(client.is_user_authorized(), timeout_s)

    try:
        authorised = client.loop.run_until_complete(connect_and_check())
    except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
        _close(client)
        raise TelegramConfigError(f"cannot open a Telegram connection ({type(exc).__name__}: {exc}): {hint}") from None
    except asyncio.TimeoutError:
        _close(client)
        raise TelegramConfigError(f"no answer from Telegram within {timeout_s:g} s: {hint}") from None
    if not authorised:
        _close(client)
        raise TelegramConfigError(
            "Telegram session is not authorised: run `make telegram-login` once "
            "(interactive), or set TELEGRAM_STRING_SESSION")
    return client


def _close(client) -> None:
    try:
        client.loop.run_until_complete(asyncio.wait_for(client.disconnect(), 10))
    except Exception:  # noqa: BLE001 - already failing; the original error is what matters
        pass


def interactive_login(settings: Settings) -> Path | None:
    """Run Telethon's interactive login and leave the session file readable by its owner only."""
    client = build_client(settings)
    client.start()
    client.disconnect()
    path = Path(f"{settings.telegram_session}.session") if not str(settings.telegram_session).endswith(
        ".session") else settings.telegram_session
    if path.exists():
        os.chmod(path, 0o600)
        return path
    return None
