"""SIGTERM stops a job as cleanly as Ctrl-C does, and is recorded as ``cancelled``, not as a death.

``systemctl stop``, ``docker stop`` and a plain ``kill`` send SIGTERM. While :func:`run_job` runs its
stages, the first SIGTERM raises :class:`JobCancelled` in the job: the stage that was running is
ended and recorded ``cancelled``, the job is recorded ``cancelled`` (reason ``stopped by SIGTERM``),
its running marker is removed and the lock freed. The exception then leaves ``run_job``; it is a
``SystemExit`` of :data:`EXIT_CODE` (143 = 128 + 15, what a shell reports for a process SIGTERM
ended), so ``medical-etl job`` exits 143, without a traceback. A SIGTERM that arrives while the job
records its start cancels it as soon as that is done; one while it records its end lets it end with
its own status; later ones are ignored. The stage processes ignore SIGTERM meanwhile
(:mod:`medical_etl.jobs.child`): the job ends them.

The handler is installed only in the main thread and only over SIGTERM's default action: a program
that handles SIGTERM itself keeps its own handler (and its stages keep SIGTERM's default action).
"""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_CODE = 128 + signal.SIGTERM
REASON = "stopped by SIGTERM"
log = logging.getLogger(__name__)


class JobCancelled(SystemExit):
    """The job was stopped by SIGTERM; ``stage`` is the stage it ended (None: none was running),
    ``summary`` the job summary once the job has recorded its end."""

    def __init__(self, reason: str = REASON):
        super().__init__(EXIT_CODE)
        self.reason, self.stage, self.summary = reason, None, None

    def __str__(self) -> str:
        return self.reason


def handled() -> bool:
    """Whether a job's :class:`SigtermStop` handles SIGTERM in this process now."""
    return isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), SigtermStop)


class SigtermStop:
    """SIGTERM's handler for one job: raises :class:`JobCancelled` inside :meth:`armed`, else notes it."""

    def __init__(self):
        self.received = self._armed = False
        self._previous = None

    def install(self) -> SigtermStop:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.received:
            log.warning("SIGTERM again: the job is already stopping")
            return
        self.received = True
        if self._armed:
            self._armed = False
            raise JobCancelled()
        log.warning("SIGTERM while the job records its start or end: it stops once that is done")

    @contextmanager
    def armed(self) -> Iterator[None]:
        """SIGTERM raises JobCancelled in this block (at its start if one came before)."""
        if self.received:
            raise JobCancelled()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False
