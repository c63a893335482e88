"""The child side of a job's stage: ``python -m medical_etl.jobs.child FD``.

The job starts each stage as a fresh interpreter running this module (never the caller's
script, so a notebook or a script without an ``if __name__ == "__main__":`` guard is never
re-imported). The stage's inputs arrive pickled on stdin; its outcome leaves pickled on the
file descriptor ``FD``. The process dies with the job (PR_SET_PDEATHSIG) and leads its own
process group, so a time limit ends the stage and whatever it started. Under a job that handles
SIGTERM (:mod:`medical_etl.jobs.cancel`) it ignores SIGTERM (``systemctl stop`` signals every process
of the unit): the job ends it and records it as cancelled.
"""
from __future__ import annotations

import ctypes
import gc
import os
import pickle
import signal
import sys
import traceback


def die_with_parent(parent_pid: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the job died before the line above took effect
        os._exit(1)


def _register_secrets(settings) -> None:
    # Unpickling skips Settings.__post_init__, which registers the secrets for masking.
    import dataclasses

    from medical_etl import secrets

    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, secrets.Secret):
            secrets.register(value.reveal())


def main(argv: list[str]) -> int:
    out_fd, parent_pid = int(argv[0]), int(argv[1])
    die_with_parent(parent_pid)
    # First the caller's import path (so objects of its modules unpickle, as with spawn), then the request.
    sys.path[:] = [*sys.path, *(p for p in pickle.load(sys.stdin.buffer) if p not in sys.path)]
    request = pickle.load(sys.stdin.buffer)
    if request.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from medical_etl.jobs.retry import transient_reason
    from medical_etl.logsetup import configure_logging
    from medical_etl.runlog import configure_rotation
    from medical_etl.secrets import mask

    settings = request["settings"]
    import multiprocessing

    multiprocessing.current_process().name = f"stage-{request['stage']}"  # names the log lines' process
    configure_logging("DEBUG" if request.get("verbose") else settings.log_level)  # LOG_LEVEL travels in the settings
    configure_rotation(settings.runlog_max_mb)
    _register_secrets(settings)
    from medical_etl.errors import StageFailed
    from medical_etl.jobs.stages import run_stage

    try:
        summary = run_stage(request["stage"], settings, job=request["job"], run_id=request["run_id"],
                            **request["opts"])
        result = ("ok", summary)
    except StageFailed as exc:
        result = ("failed", {"error": mask(exc), "summary": exc.summary, "transient": exc.reason})
    except BaseException as exc:  # noqa: BLE001 - reported to the job, already in the run log
        result = ("error", {"error": f"{type(exc).__name__}: {mask(exc)}",
                            "traceback": mask("".join(traceback.format_exception(exc)[-3:])),
                            "transient": transient_reason(exc, request["stage"])})
    data = pickle.dumps(result)
    with os.fdopen(out_fd, "wb") as fh:
        fh.write(data)
    gc.freeze()  # the process ends next: skip a last collection of dbt's or torch's objects (~1 s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
