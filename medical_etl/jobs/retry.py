"""Which stage failures are transient (worth retrying the stage) and how long to wait before the retry.

Transient, in the sense of Singer taps' retriable errors: the database unreachable or restarting, a
serialization failure or deadlock, a Telegram network error. Everything else is fatal and fails the
job at once: a dbt test failure, a configuration error, a missing weights file, a timeout.
"""
from __future__ import annotations

import re

from medical_etl.errors import ConfigError, JobError, StageFailed, TransientError

DB_UNREACHABLE = "database unreachable"
DB_RESTARTING = "database restarting"
SERIALIZATION = "serialization failure"
TELEGRAM_NETWORK = "telegram network error"

_PGCODES = {
    "40001": SERIALIZATION, "40P01": SERIALIZATION,  # serialization_failure, deadlock_detected
    "57P01": DB_RESTARTING, "57P02": DB_RESTARTING, "57P03": DB_RESTARTING,  # admin/crash shutdown, starting up
    "08000": DB_UNREACHABLE, "08001": DB_UNREACHABLE, "08003": DB_UNREACHABLE, "08004": DB_UNREACHABLE,
    "08006": DB_UNREACHABLE,
}
# Text of the same conditions where only a message survives (dbt node results, wrapped errors).
_MESSAGES = [
    (re.compile(r"the database system is (starting up|shutting down|in recovery mode)|"
                r"terminating connection due to administrator command|"
                r"server closed the connection unexpectedly", re.I), DB_RESTARTING),
    (re.compile(r"could not connect to server|connection to server .* failed|connection refused|"
                r"connection already closed|is not currently accepting connections|"
                r"SSL connection has been closed unexpectedly|could not translate host name|"
                r"timeout expired", re.I), DB_UNREACHABLE),
    (re.compile(r"could not serialize access|deadlock detected", re.I), SERIALIZATION),
]


def _telegram_network(exc: BaseException) -> bool:
    try:
        from telethon import errors
    except ImportError:  # pragma: no cover - telethon is a dependency
        return False
    return isinstance(exc, (errors.ServerError, errors.RpcCallFailError, errors.TimedOutError))


def transient_reason(exc: BaseException | None, stage: str | None = None) -> str | None:
    """The transient reason of ``exc`` (or of an exception it was raised from), else None.

    A :class:`~medical_etl.errors.TransientError` (and a failed stage or job) carries its reason; a
    :class:`~medical_etl.errors.ConfigError` is never transient; any other error is as transient as
    the library error it was raised from (psycopg2's, Telethon's, the network's).

    A dropped connection in the scrape stage is Telegram's network (the stage talks to nothing else)."""
    import psycopg2

    from medical_etl.transform import TransformError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TransformError):  # dbt could not run: say why only if the text does
            return message_reason(str(exc))
        if isinstance(exc, (TransientError, StageFailed, JobError)):  # these say which kind they are
            return exc.reason
        if isinstance(exc, ConfigError):  # a setting to change: waiting does not help, whatever the cause
            return None
        # any other error of ours (a LoadError after a dropped connection, say) is as transient as its cause
        code = getattr(exc, "pgcode", None)
        if code in _PGCODES:
            return _PGCODES[code]
        if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
            return message_reason(str(exc)) or DB_UNREACHABLE
        if _telegram_network(exc):
            return TELEGRAM_NETWORK
        if isinstance(exc, (ConnectionError, TimeoutError)):  # what Telethon raises when the network drops
            return TELEGRAM_NETWORK if stage == "scrape" else "network error"
        exc = exc.__cause__ or exc.__context__
    return None


def message_reason(message: str) -> str | None:
    for pattern, reason in _MESSAGES:
        if pattern.search(message or ""):
            return reason
    return None


def summary_reason(stage: str, summary: dict) -> str | None:
    """The transient reason of a stage that ran but did not succeed, from its summary, else None.

    scrape: every failed channel failed on the network. transform/enrich: every failing dbt node
    errored (not a failed test) with a database connection message.
    """
    if stage == "scrape":
        errs = [c.get("error") or "" for c in summary.get("channels", {}).values() if c.get("error")]
        return TELEGRAM_NETWORK if errs and all(e.startswith("network:") for e in errs) else None
    dbt = summary if stage == "transform" else summary.get("dbt") or {}
    failing = dbt.get("failing_nodes") or []
    if not failing or any(n.get("status") != "error" for n in failing):
        return None
    reasons = {message_reason(n.get("message") or "") for n in failing}
    return reasons.pop() if len(reasons) == 1 and None not in reasons else (
        DB_UNREACHABLE if None not in reasons else None)


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, ...): base, 2*base, 4*base, ... capped."""
    return min(cap_s, base_s * 2 ** (attempt - 1))
