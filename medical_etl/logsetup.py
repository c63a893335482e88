"""Logging for every entry point (CLI, job, stage process, cron), governed by ``LOG_LEVEL``.

The level travels in the settings, so a stage process (started with ``spawn``, a fresh interpreter)
configures itself the same way as the job that started it. Secrets are masked by the filter in
:mod:`medical_etl.secrets` on every handler.
"""
from __future__ import annotations

import logging
import sys

from medical_etl.secrets import install_logging_filter

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
# Third-party loggers that are too chatty at DEBUG to help an operator (every packet, every query).
QUIET = {"pgserver": logging.WARNING, "telethon": logging.INFO, "urllib3": logging.INFO,
         "matplotlib": logging.WARNING, "PIL": logging.INFO, "asyncio": logging.INFO}


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr at ``level`` (DEBUG, INFO, WARNING, ERROR), secrets masked."""
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(lvl)
    logging.getLogger("medical_etl").setLevel(lvl)
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, lvl))
    install_logging_filter()


def current_level() -> int:
    return logging.getLogger("medical_etl").getEffectiveLevel()


def dbt_log_levels(level: int | None = None) -> tuple[str, str]:
    """dbt's ``--log-level`` (console) and ``--log-level-file`` for our level.

    At INFO the console gets dbt's warnings and errors only (each node still goes to dbt.log and the
    stage summary); at DEBUG it shows every node as it starts and ends, and dbt.log gets dbt's debug.
    """
    level = current_level() if level is None else level
    if level <= logging.DEBUG:
        return "info", "debug"
    if level <= logging.INFO:
        return "warn", "info"
    if level <= logging.WARNING:
        return "warn", "warn"
    return "error", "error"
