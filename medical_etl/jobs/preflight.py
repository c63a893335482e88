"""What each stage needs before a job starts: found in seconds, not after the stages before it.

``preflight(stages, settings)`` returns one :class:`Problem` per missing input (database
unreachable, YOLO weights missing or unloadable, Telegram credentials or session absent),
each naming the setting and what to do. Jobs refuse to start while any is left; ``doctor``
shows the same checks.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from medical_etl.config import Settings
from medical_etl.scrape.telegram import session_path, string_session_problem

DB_STAGES = ("load", "transform", "enrich")


@dataclass(frozen=True)
class Problem:
    stage: str
    setting: str
    message: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.setting}: {self.message}"


def check_weights(model: str, offline: bool) -> str | None:
    """None when ``model`` names weights that load here; else what is wrong and what to do."""
    path = Path(model)
    if not path.exists():
        if not offline and path.parent == Path(".") and path.suffix == ".pt":
            return None  # a known name Ultralytics downloads where the internet is reachable
        return (f"no such file {model!r}"
                + (" (YOLO_OFFLINE=1: nothing is downloaded)" if offline else "")
                + ": point YOLO_MODEL at local weights, e.g. the int8 ONNX yolov8n_int8.onnx")
    if not path.is_file():
        return f"{model!r} is not a regular file"
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return f"cannot read {model!r}: {exc.strerror}"
    if not head:
        return f"{model!r} is empty"
    if path.suffix == ".onnx":
        try:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any load failure is the answer
            return f"{model!r} does not load as ONNX: {type(exc).__name__}: {str(exc)[:200]}"
    elif path.suffix == ".pt" and not zipfile.is_zipfile(path):
        return f"{model!r} is not a PyTorch checkpoint (not a zip archive)"
    return None


def check_database(settings: Settings) -> str | None:
    from medical_etl.db import test_connection

    result = test_connection(settings)
    return None if result["ok"] else f"{result['error']} (check DB_HOST, DB_PORT, DB_NAME, DB_USER)"


def check_telegram(settings: Settings) -> list[Problem]:
    """The API source needs credentials and a session; an export source needs its folder."""
    source = settings.telegram_source
    if source == "sample":
        return []
    if source != "api":
        ok = Path(source).is_dir()
        return [] if ok else [Problem("scrape", "TELEGRAM_SOURCE", f"no such export folder {source!r}")]
    out = []
    if not settings.telegram_api_id or not settings.telegram_api_hash:
        out.append(Problem("scrape", "TELEGRAM_API_ID/TELEGRAM_API_HASH",
                           "not set: get them at my.telegram.org, or set TELEGRAM_SOURCE=sample"))
    if settings.telegram_string_session:
        if problem := string_session_problem(settings.telegram_string_session.reveal()):
            out.append(Problem("scrape", "TELEGRAM_STRING_SESSION", problem))
    else:
        session = session_path(settings)
        if not session.is_file():
            out.append(Problem("scrape", "TELEGRAM_SESSION",
                               f"no session file {session}: run `make telegram-login` once, "
                               "or set TELEGRAM_STRING_SESSION"))
    return out


def preflight(stages: tuple[str, ...] | list[str], settings: Settings, *, client=None) -> list[Problem]:
    """Check the inputs of ``stages``; an injected scrape ``client`` needs no credentials."""
    problems: list[Problem] = []
    if "scrape" in stages and client is None:
        problems += check_telegram(settings)
    db_stage = next((s for s in stages if s in DB_STAGES), None)
    if db_stage and (problem := check_database(settings)):
        problems.append(Problem(db_stage, "DB_*", problem))
    if "enrich" in stages and (problem := check_weights(settings.yolo_model, settings.yolo_offline)):
        problems.append(Problem("enrich", "YOLO_MODEL", problem))
    return problems
