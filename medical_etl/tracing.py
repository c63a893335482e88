"""DEBUG tracing of the Telegram requests a scrape makes (each request window and page), hooked in from
outside the stage; nothing here runs unless the ``medical_etl`` logger is at DEBUG. (The stages'
batch progress, at DEBUG and on a terminal, is :mod:`medical_etl.progress`.)"""
from __future__ import annotations

import logging

log = logging.getLogger("medical_etl.trace")
TELEGRAM_PAGE = 100  # Telethon's GetHistoryRequest returns at most 100 messages: one request per page


def enabled() -> bool:
    return log.isEnabledFor(logging.DEBUG)


class TracedClient:
    """Wraps a Telegram client: logs each request window (the ``iter_messages`` bounds, then each page
    of up to 100 messages it returns) at DEBUG; everything else is the wrapped client's."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def iter_messages(self, entity, limit=None, **kwargs):
        name = getattr(entity, "username", None) or getattr(entity, "id", entity)
        window = {k: kwargs[k] for k in ("min_id", "max_id", "offset_date") if kwargs.get(k) is not None}
        log.debug("scrape %s: request window limit=%s %s", name, limit,
                  " ".join(f"{k}={v}" for k, v in window.items()))
        return self._pages(name, self._client.iter_messages(entity, limit=limit, **kwargs))

    async def _pages(self, name, messages):
        n, first, last = 0, None, None
        async for msg in messages:
            n += 1
            first = msg.id if first is None else first
            last = msg.id
            if n % TELEGRAM_PAGE == 0:
                log.debug("scrape %s: page %d: messages %s..%s", name, n // TELEGRAM_PAGE, first, last)
                first = None
            yield msg
        log.debug("scrape %s: window done, %d messages%s", name, n,
                  f" (last page {first}..{last})" if first is not None else "")


def traced_client(client):
    return TracedClient(client) if enabled() and client is not None else client
