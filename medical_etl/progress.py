"""Progress lines for a person at a terminal: on stderr, only when stderr is a terminal.

Under cron (or any redirected stderr) these stay silent; stdout stays for the result only.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stage: str, stream: TextIO | None = None, enabled: bool | None = None):
        self.stage, self.stream = stage, stream or sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self.t0 = time.perf_counter()

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


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
