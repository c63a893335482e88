"""The jobs and their stages, read from the Makefile: the one place they are defined.

The Makefile holds one line per job, ``JOB_STAGES.<job> := <stage> <stage> ...``, in run order;
each job target passes its line to ``medical-etl job`` (so ``make -n pipeline`` shows the stages),
and ``run_job()`` reads the same lines (:func:`jobs`, when a job first runs) from the Makefile of the checkout, or from the copy an
installed medical-etl carries (:mod:`medical_etl.resources`).
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from medical_etl import resources
from medical_etl.errors import PermanentError

STAGES = ("scrape", "load", "transform", "enrich")
_LINE = re.compile(r"JOB_STAGES\.([a-z][a-z0-9-]*)[ \t]*:=[ \t]*([a-z \t]*?)[ \t]*(?:#.*)?")


def read_jobs(makefile: Path) -> dict[str, tuple[str, ...]]:
    """``{job: stages}`` from ``makefile``'s ``JOB_STAGES.<job> := ...`` lines; refuses lines it
    cannot read exactly as Make does (other assignment kinds, continuations, unknown stages)."""
    jobs: dict[str, tuple[str, ...]] = {}
    try:
        text = makefile.read_text(encoding="utf-8")
    except OSError as exc:
        raise PermanentError(f"cannot read the job definitions in {makefile}: {exc.strerror or exc}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.startswith("JOB_STAGES."):
            continue
        m = _LINE.fullmatch(line)
        if not m or line.rstrip().endswith("\\"):
            raise PermanentError(f"{makefile}:{n}: write jobs as `JOB_STAGES.<job> := <stages>` on one line")
        stages = tuple(m.group(2).split())
        unknown = [s for s in stages if s not in STAGES]
        if not stages or unknown or len(set(stages)) != len(stages):
            raise PermanentError(f"{makefile}:{n}: job {m.group(1)}: stages must be distinct, from {', '.join(STAGES)}"
                                 + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        if m.group(1) in jobs:
            raise PermanentError(f"{makefile}:{n}: job {m.group(1)} is defined twice")
        jobs[m.group(1)] = stages
    if not jobs:
        raise PermanentError(f"{makefile}: no JOB_STAGES.<job> lines: the jobs are defined there")
    return jobs


@lru_cache(maxsize=1)
def jobs() -> dict[str, tuple[str, ...]]:
    """``{job: stages}`` of this checkout's (or this installed package's) Makefile, read on first use."""
    return read_jobs(resources.makefile())
