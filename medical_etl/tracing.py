"""DEBUG-level progress of the stages, hooked in from outside them: load and enrich batches, Telegram
request windows. Nothing here runs unless the ``medical_etl`` logger is at DEBUG."""
from __future__ import annotations

import logging

log = logging.getLogger("medical_etl.trace")
TELEGRAM_PAGE = 100  # Telethon's GetHistoryRequest returns at most 100 messages: one request per page


def enabled() -> bool:
    return log.isEnabledFor(logging.DEBUG)


def batch_logger(stage: str, keys: tuple[str, ...]):
    """An ``on_batch`` callback that logs the running totals after each batch."""
    count = 0

    def on_batch(totals: dict) -> None:
        nonlocal count
        count += 1
        log.debug("%s batch %d: %s", stage, count, ", ".join(f"{k}={totals.get(k)}" for k in keys if k in totals))
    return on_batch


def hooks(stage: str, opts: dict) -> dict:
    """``opts`` plus the DEBUG progress callbacks the stage accepts (when DEBUG is on and none was given)."""
    if not enabled():
        return opts
    if stage == "load":
        opts.setdefault("on_batch", batch_logger("load", ("files_read", "files_skipped", "rows_inserted",
                                                          "rows_updated", "rows_rejected", "records_loaded")))
    elif stage == "enrich":
        opts.setdefault("on_batch", batch_logger("enrich", ("photos_analysed", "objects_found",
                                                            "unreadable_photos", "duplicates_reused")))
    return opts


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
