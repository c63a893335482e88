"""The jobs, read from the Makefile: the one place each job is defined, its stages and its options.

The Makefile holds one line per job, in Make's syntax so that Make can use it too::

    JOB.weekly := scrape load transform enrich --full-refresh --refresh-days 30 --lock-wait 10800  # what it is

the stages in run order, then the job's options: ``--full-refresh`` (dbt rebuilds every model),
``--refresh-days N`` (the scrape re-reads the last N days' posts, for their views), ``--lock-wait S`` (how
long the job waits for another job holding the lock; without it, it records ``skipped`` at once), and
after ``#`` what the job is for. ``run_job()``, ``medical-etl job`` (and its help), ``medical-etl jobs`` /
``make jobs``, Dagster's jobs and the crontab's comments all come from these lines, read from the
checkout's Makefile or from the copy an installed medical-etl carries (:mod:`medical_etl.resources`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from medical_etl import resources
from medical_etl.errors import PermanentError

STAGES = ("scrape", "load", "transform", "enrich")
_LINE = re.compile(r"JOB\.([a-z][a-z0-9-]*)[ \t]*:=[ \t]*([^#]*?)[ \t]*(?:#[ \t]*(.*))?")


@dataclass(frozen=True)
class Job:
    """One job: its stages in run order and its options."""

    name: str
    stages: tuple[str, ...]
    full_refresh: bool = False
    refresh_days: int | None = None
    lock_wait_s: float = 0.0
    about: str = ""

    def describe(self) -> str:
        """``scrape, load, transform, enrich; full dbt refresh; ...`` (the stages, then the options)."""
        opts = []
        if self.full_refresh:
            opts.append("full dbt refresh")
        if self.refresh_days:
            opts.append(f"views re-read for {self.refresh_days} days")
        if self.lock_wait_s:
            opts.append(f"waits up to {self.lock_wait_s / 3600:g} h for a running job")
        return "; ".join([", ".join(self.stages), *opts])


def _parse(makefile: Path, n: int, name: str, words: list[str], about: str) -> Job:
    def fail(why: str) -> PermanentError:
        return PermanentError(f"{makefile}:{n}: job {name}: {why}")

    first_option = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
    stages = words[:first_option]
    unknown = [s for s in stages if s not in STAGES]
    if not stages or unknown or len(set(stages)) != len(stages):
        raise fail(f"stages must be distinct, from {', '.join(STAGES)}" + (f" (unknown: {', '.join(unknown)})"
                                                                             if unknown else ""))
    opts: dict = {}
    rest = words[first_option:]
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag == "--full-refresh":
            opts["full_refresh"] = True
            i += 1
            continue
        if flag not in ("--refresh-days", "--lock-wait") or i + 1 >= len(rest):
            raise fail(f"unknown option {flag!r} (options: --full-refresh, --refresh-days N, --lock-wait S)")
        try:
            value = int(rest[i + 1])
        except ValueError:
            raise fail(f"{flag} takes a whole number, not {rest[i + 1]!r}") from None
        if value < 0:
            raise fail(f"{flag} takes a number of 0 or more")
        opts["refresh_days" if flag == "--refresh-days" else "lock_wait_s"] = value
        i += 2
    if "lock_wait_s" in opts:
        opts["lock_wait_s"] = float(opts["lock_wait_s"])
    return Job(name, tuple(stages), about=about.strip(), **opts)


def read_job_definitions(makefile: Path) -> dict[str, Job]:
    """``{job: Job}`` from ``makefile``'s ``JOB.<job> := ...`` lines; refuses lines it cannot read
    exactly as Make does (other assignment kinds, continuations, unknown stages or options)."""
    out: dict[str, Job] = {}
    try:
        text = makefile.read_text(encoding="utf-8")
    except OSError as exc:
        raise PermanentError(f"cannot read the job definitions in {makefile}: {exc.strerror or exc}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.startswith("JOB."):
            continue
        m = _LINE.fullmatch(line)
        if not m or line.rstrip().endswith("\\"):
            raise PermanentError(f"{makefile}:{n}: write jobs as `JOB.<job> := <stages> [options]` on one line")
        if m.group(1) in out:
            raise PermanentError(f"{makefile}:{n}: job {m.group(1)} is defined twice")
        out[m.group(1)] = _parse(makefile, n, m.group(1), m.group(2).split(), m.group(3) or "")
    if not out:
        raise PermanentError(f"{makefile}: no JOB.<job> lines: the jobs are defined there")
    return out


def read_jobs(makefile: Path) -> dict[str, tuple[str, ...]]:
    """``{job: stages}`` of ``makefile`` (see :func:`read_job_definitions`)."""
    return {name: job.stages for name, job in read_job_definitions(makefile).items()}


@lru_cache(maxsize=1)
def job_definitions() -> dict[str, Job]:
    """``{job: Job}`` of this checkout's (or this installed package's) Makefile, read on first use."""
    return read_job_definitions(resources.makefile())


def jobs() -> dict[str, tuple[str, ...]]:
    """``{job: stages}``, in the Makefile's order."""
    return {name: job.stages for name, job in job_definitions().items()}
