"""Progress of the stages, for the two who watch it: a person at a terminal (lines on stderr, only when
stderr is a terminal: under cron they stay silent, and stdout stays for the result) and a developer at
DEBUG (the running totals after each batch, on the ``medical_etl.trace`` logger).

A stage takes one callback per kind of progress (``on_channel``, ``on_batch``); :func:`combine` makes one
of several, so the terminal lines, the DEBUG lines and a caller's own callback all get every update.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

trace = logging.getLogger("medical_etl.trace")

# what the DEBUG lines show of each stage's running totals
DEBUG_KEYS = {
    "load": ("files_read", "files_skipped", "rows_inserted", "rows_updated", "rows_rejected", "records_loaded"),
    "enrich": ("photos_analysed", "objects_found", "unreadable_photos", "duplicates_reused"),
}


class Progress:
    """Terminal lines for one stage, timed from its start."""

    def __init__(self, stage: str, stream: TextIO | None = None, enabled: bool | None = None,
                 t0: float | None = None):
        self.stage, self.stream = stage, stream or sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self.t0 = time.perf_counter() if t0 is None else t0

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"{self.stage}: {text} ({time.perf_counter() - self.t0:.1f} s)", file=self.stream, flush=True)

    def channel(self, info: dict) -> None:
        """Scrape: after each channel."""
        what = (f"FAILED: {info['error']}" if info.get("error") else
                f"{info['new_messages']} new, {info['updated_messages']} updated messages, "
                f"{info['photos_saved']} photos")
        self.say(f"channel {info['done']}/{info['total']} {info['channel']}: {what}")

    def batch(self, summary: dict) -> None:
        """Load: after each batch is committed."""
        self.say(f"batch {summary['batches']} committed: {summary['files_read']} files read, "
                 f"{summary['rows_inserted']} rows inserted, {summary['rows_updated']} updated, "
                 f"{summary['rows_rejected']} rejected")

    def photos(self, total: int) -> Callable[[dict], None]:
        """Enrich: after each written batch of ``total`` photos."""
        def on_batch(s: dict) -> None:
            done, secs = s["photos_analysed"], max(time.perf_counter() - self.t0, 1e-9)
            self.say(f"{done:,}/{total:,} photos, {done / secs:.1f} photos/s, {s['objects_found']:,} objects, "
                     f"{s['unreadable_photos']} unreadable")
        return on_batch


def debug_batches(stage: str) -> Callable[[dict], None] | None:
    """A callback logging the stage's running totals after each batch at DEBUG; None unless DEBUG is on."""
    if not trace.isEnabledFor(logging.DEBUG) or stage not in DEBUG_KEYS:
        return None
    count = 0

    def on_batch(totals: dict) -> None:
        nonlocal count
        count += 1
        trace.debug("%s batch %d: %s", stage, count,
                    ", ".join(f"{k}={totals.get(k)}" for k in DEBUG_KEYS[stage] if k in totals))
    return on_batch


def combine(*callbacks: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
    """One callback calling each given one in order (None where none is given)."""
    given = [c for c in callbacks if c is not None]
    if len(given) <= 1:
        return given[0] if given else None

    def each(update: dict) -> None:
        for c in given:
            c(update)
    return each


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
