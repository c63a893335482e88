"""Process-wide registry of secret values, and masking of them in any text.

Settings register the secrets they hold; the run log, the logging filter and
error messages pass text through :func:`mask` before it leaves the process.
"""
from __future__ import annotations

import logging
import threading

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()


class Secret(str):
    """A string whose repr and str-formatting in containers never shows the value."""

    def __repr__(self) -> str:
        return f"Secret({MASK})" if self else "Secret('')"

    def reveal(self) -> str:
        return str.__str__(self)


def register(value: str | None) -> None:
    # Very short values would mask ordinary words and digits everywhere.
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(str(value))


def mask(text: object) -> str:
    out = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in out:
            out = out.replace(s, MASK)
    return out


class MaskingFilter(logging.Filter):
    """Logging filter that masks registered secrets in the formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = mask(record.getMessage())
            record.args = None
        return True


def install_logging_filter() -> None:
    """Attach the masking filter to every handler of the root logger."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
