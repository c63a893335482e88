"""The ``medical-etl`` command line (also ``python -m medical_etl``).

This is an edge: it reads the settings once and passes explicit values to the
stages, which never read the environment themselves.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from . import __version__
from .config import ConfigError, Settings, load_settings
from .secrets import mask


def setup_logging(verbose: bool = False, level: str = "INFO") -> None:
    """LOG_LEVEL for this process (and, through the settings, for the stage processes); -v = DEBUG."""
    from .logsetup import configure_logging

    configure_logging("DEBUG" if verbose else level)


# --- doctor ------------------------------------------------------------------

def doctor_checks(settings: Settings) -> list[tuple[str, bool, bool, str]]:
    """Return (name, ok, required, detail) per check."""
    from .db import test_connection

    checks: list[tuple[str, bool, bool, str]] = []
    checks.append(("config", True, True,
                   f"raw={settings.raw_data_path} logs={settings.logs_path} "
                   f"db={'embedded' if settings.embedded else settings.db_host}"))
    db = test_connection(settings)
    detail = (f"PostgreSQL {db['server_version']} at {db['target']} in {db['latency_ms']} ms"
              if db["ok"] else db["error"])
    checks.append(("database", db["ok"], True, detail))
    for name, ok, required, detail in _extra_checks(settings):
        checks.append((name, ok, required, detail))
    return checks


def _extra_checks(settings: Settings):
    """Checks contributed by the stages (dbt, YOLO weights, Telegram)."""
    from . import doctor_extras

    yield from doctor_extras.checks(settings)


def cmd_doctor(args, settings: Settings) -> int:
    failed = False
    for name, ok, required, detail in doctor_checks(settings):
        mark = "ok  " if ok else ("FAIL" if required else "warn")
        print(f"[{mark}] {name:<10} {mask(detail)}")
        failed |= required and not ok
    return 1 if failed else 0


# --- wiring ------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medical-etl", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"medical-etl {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG (same as LOG_LEVEL=DEBUG)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="check configuration, database and tools")
    d.set_defaults(func=cmd_doctor)
    from . import commands

    commands.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        setup_logging(args.verbose)
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.verbose:
        settings = dataclasses.replace(settings, log_level="DEBUG")
    setup_logging(level=settings.log_level)
    from .runlog import configure_rotation

    configure_rotation(settings.runlog_max_mb)
    try:
        rc = args.func(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the edge reports, masked, and exits non-zero
        logging.getLogger("medical_etl").debug("failure", exc_info=True)
        print(f"error: {type(exc).__name__}: {mask(exc)}", file=sys.stderr)
        return 1
    if isinstance(rc, dict):
        print(json.dumps(rc, indent=2, default=str, ensure_ascii=False))
        return 0
    return int(rc or 0)
