"""Stage 4, enrich: YOLO object detection on photos not yet analysed with the current model.

Pipeline: one thread decodes photos (:mod:`medical_etl.images`) ahead of the model; one inference
worker per core, each with its own model instance (Ultralytics models are not thread-safe) limited
to one thread, so the cores work on different photos instead of contending for one; the calling
thread writes results in a transaction per batch. Results stream to the database: memory stays flat.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from psycopg2.extras import execute_values

from .db import ConnParams, conn_params, connect
from .images import DEFAULT_MAX_PIXELS, Decoded, decode_bytes
from .images import read as read_image
from .migrate import migrate

log = logging.getLogger(__name__)
_DONE = object()
_DUPLICATE = "duplicate of a photo already analysed"


class EnrichError(RuntimeError):
    pass


@dataclass
class Photo:
    channel: str
    message_id: int
    image_path: str


@dataclass
class Outcome:
    photo: Photo
    status: str                      # ok, no_objects, unreadable; "duplicate" until resolved
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    objects: list[tuple] = field(default_factory=list)  # (class_id, class_name, conf, x1, y1, x2, y2)
    sha256: str | None = None

    def copy_for(self, photo: Photo) -> Outcome:
        return Outcome(photo, self.status, self.width, self.height, self.reason, list(self.objects), self.sha256)


def weights_id(path: Path) -> str:
    """Model identity: file name plus the start of the weights' sha256 (a new version re-analyses all)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{path.name}@{h.hexdigest()[:12]}"


def _import_yolo(offline: bool):
    if offline:
        os.environ["YOLO_OFFLINE"] = "1"  # must precede the import: no hub or pip access at run time
    os.environ.setdefault("YOLO_VERBOSE", "False")  # Ultralytics' per-image chatter off; errors still shown
    from ultralytics import YOLO

    return YOLO


def load_model(model: str, device: str, offline: bool = True, single_thread: bool = False):
    """Load weights with Ultralytics; any failure names YOLO_MODEL and the path."""
    path = Path(model).expanduser()
    if path.suffix and not path.exists() and (path.parent != Path(".") or offline):
        raise EnrichError(f"YOLO_MODEL={model}: no such weights file ({path.resolve()})")
    if path.exists() and not os.access(path, os.R_OK):
        raise EnrichError(f"YOLO_MODEL={model}: weights file is not readable ({path.resolve()})")
    YOLO = _import_yolo(offline)
    try:
        m = YOLO(str(path), task="detect")
        import numpy as np

        m.predict(np.zeros((64, 64, 3), np.uint8), device=_device(device), verbose=False)  # builds the predictor
    except Exception as exc:  # noqa: BLE001 - Ultralytics raises many types for bad weights
        raise EnrichError(f"YOLO_MODEL={model}: cannot load weights from {path.resolve()}: "
                          f"{type(exc).__name__}: {str(exc).strip()[:300]}") from None
    if single_thread:
        _limit_onnx_threads(m)
    return m


def _device(device: str) -> str:
    if device == "auto":
        import torch

        return "0" if torch.cuda.is_available() else "cpu"
    return device


def _limit_onnx_threads(m) -> None:
    """ONNX Runtime sessions default to one thread per core; with a worker per core, use one each."""
    backend = getattr(getattr(m, "predictor", None), "model", None)
    backend = getattr(backend, "backend", backend)
    session = getattr(backend, "session", None)
    if session is None or "CPUExecutionProvider" != session.get_providers()[0]:
        return
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    backend.session = ort.InferenceSession(session._model_path, opts, providers=["CPUExecutionProvider"])


def _known_hashes(conn, model_id: str) -> set[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT content_sha256 FROM raw.image_analyses WHERE model = %s "
                    "AND content_sha256 IS NOT NULL", (model_id,))
        out = {r[0] for r in cur.fetchall()}
    conn.commit()
    return out


def _stored_outcome(conn, model_id: str, sha: str) -> Outcome | None:
    """The results of an earlier analysis of the same bytes with the same model."""
    with conn.cursor() as cur:
        cur.execute("""SELECT channel, message_id, status, reason, image_width, image_height FROM raw.image_analyses
                       WHERE model = %s AND content_sha256 = %s LIMIT 1""", (model_id, sha))
        row = cur.fetchone()
        if row is None:
            conn.commit()
            return None
        cur.execute("""SELECT class_id, class_name, confidence, x1, y1, x2, y2 FROM raw.image_detections
                       WHERE channel = %s AND message_id = %s AND model = %s ORDER BY object_index""",
                    (row[0], row[1], model_id))
        objects = [tuple(r) for r in cur.fetchall()]
    conn.commit()
    return Outcome(Photo(row[0], row[1], ""), row[2], row[4], row[5], row[3], objects, sha)


def _work_list(conn, model_id: str) -> tuple[list[Photo], int]:
    with conn.cursor() as cur:
        cur.execute("""
            SELECT m.channel, m.message_id, m.image_path FROM raw.telegram_messages m
            WHERE m.image_path IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM raw.image_analyses a
                WHERE a.channel = m.channel AND a.message_id = m.message_id AND a.model = %s)
            ORDER BY m.channel, m.message_id""", (model_id,))
        todo = [Photo(*r) for r in cur.fetchall()]
        cur.execute("SELECT count(*) FROM raw.image_analyses WHERE model = %s", (model_id,))
        done = cur.fetchone()[0]
    conn.commit()
    return todo, done


def _decoder(photos: list[Photo], lake_dir: Path, out: queue.Queue, n_workers: int, max_pixels: int,
             stop: threading.Event, seen: set[str]) -> None:
    """Read, hash and decode ahead of the model; photos whose bytes were seen before are not decoded."""
    for p in photos:
        if stop.is_set():
            break
        data, sha, reason = read_image(lake_dir / p.image_path)
        if sha is not None and sha in seen:
            out.put((p, Decoded(None, sha256=sha, reason=_DUPLICATE)))
            continue
        if sha is not None:
            seen.add(sha)
        dec = decode_bytes(data, max_pixels) if data is not None else Decoded(None, reason=reason)
        dec.sha256 = sha
        out.put((p, dec))
    for _ in range(n_workers):
        out.put(_DONE)


def _infer(m, item: tuple[Photo, Decoded], opts: dict) -> Outcome:
    photo, dec = item
    if dec.reason is _DUPLICATE:
        return Outcome(photo, "duplicate", sha256=dec.sha256)
    if dec.image is None:
        return Outcome(photo, "unreadable", dec.width, dec.height, dec.reason, sha256=dec.sha256)
    try:
        (r,) = m.predict(dec.image, verbose=False, **opts)
    except Exception as exc:  # noqa: BLE001 - one bad photo must not stop the others
        return Outcome(photo, "unreadable", dec.width, dec.height, f"inference failed: {exc}"[:500])
    boxes = r.boxes
    objs = []
    if boxes is not None and len(boxes):
        s = dec.scale
        for cls, conf, (x1, y1, x2, y2) in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True):
            objs.append((int(cls), r.names[int(cls)], float(conf), x1 * s, y1 * s, x2 * s, y2 * s))
    return Outcome(photo, "ok" if objs else "no_objects", dec.width, dec.height, objects=objs, sha256=dec.sha256)


def _worker(m, inq: queue.Queue, outq: queue.Queue, opts: dict) -> None:
    try:
        while (item := inq.get()) is not _DONE:
            outq.put(_infer(m, item, opts))
    except BaseException as exc:  # noqa: BLE001 - handed to the writer
        outq.put(exc)
    finally:
        outq.put(_DONE)


def _write(conn, outcomes: list[Outcome], model_id: str) -> None:
    """One transaction per batch: analyses first (detections reference them)."""
    with conn, conn.cursor() as cur:
        execute_values(cur, """INSERT INTO raw.image_analyses (channel, message_id, model, image_path, status,
                n_objects, reason, image_width, image_height, content_sha256) VALUES %s ON CONFLICT DO NOTHING""",
                       [(o.photo.channel, o.photo.message_id, model_id, o.photo.image_path, o.status,
                         len(o.objects), o.reason, o.width, o.height, o.sha256) for o in outcomes])
        rows = [(o.photo.channel, o.photo.message_id, model_id, i, o.photo.image_path, *obj, o.width, o.height)
                for o in outcomes for i, obj in enumerate(o.objects)]
        if rows:
            execute_values(cur, """INSERT INTO raw.image_detections (channel, message_id, model, object_index,
                    image_path, class_id, class_name, confidence, x1, y1, x2, y2, image_width, image_height)
                    VALUES %s ON CONFLICT DO NOTHING""", rows)


def run_yolo_enrichment(
    db,
    lake_dir: str | Path,
    *,
    model: str = "yolov8n.pt",
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int = 640,
    batch: int = 16,
    device: str = "cpu",
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    offline: bool = True,
    build_models: bool = True,
    on_batch: Callable[[dict], None] | None = None,
) -> dict:
    """Detect objects in every loaded photo not yet analysed with ``model``; return a summary.

    ``db`` is Settings or ConnParams. Results are written ``batch`` photos per transaction, so a
    crash loses at most the batch in flight. With ``build_models`` the detection models are then
    built in dbt (fct_image_detections, fct_image_categories and their tests).
    """
    t0 = time.perf_counter()
    params = db if isinstance(db, ConnParams) else conn_params(db)
    lake_dir = Path(lake_dir)
    dev = _device(device)
    n_workers = workers or (1 if dev != "cpu" else max(1, os.cpu_count() or 1))
    first = None
    if Path(model).expanduser().is_file():
        model_id = weights_id(Path(model).expanduser())
    else:  # a name Ultralytics resolves (and may download): load it to find the file
        first = load_model(model, dev, offline, single_thread=n_workers > 1)
        weights = Path(getattr(first, "ckpt_path", None) or model)
        model_id = weights_id(weights) if weights.is_file() else Path(model).name
    conn = connect(params)
    try:
        migrate(conn)
        photos, already = _work_list(conn, model_id)
        summary = {"model": model_id, "photos_to_analyse": len(photos), "already_analysed": already,
                   "photos_analysed": 0, "objects_found": 0, "per_class": {}, "unreadable_photos": 0,
                   "unreadable_reasons": {}, "duplicates_reused": 0, "workers": n_workers, "batches": 0}
        if photos:
            first = first or load_model(model, dev, offline, single_thread=n_workers > 1)
            _detect(conn, photos, lake_dir, first, model, dev, n_workers, offline, model_id, summary,
                    dict(conf=conf, iou=iou, imgsz=imgsz, device=dev), batch, max_pixels, on_batch)
    finally:
        conn.close()
    infer_s = time.perf_counter() - t0
    summary["photos_per_second"] = round(summary["photos_analysed"] / infer_s, 2) if summary["photos_analysed"] else 0.0
    if build_models:
        from .transform import run_dbt_transformations

        dbt = run_dbt_transformations(params, select=["+fct_image_detections+", "+fct_image_categories+"],
                                      check_freshness=False)
        summary["dbt"] = {k: dbt[k] for k in ("status", "models_built", "tests_passed", "tests_failed",
                                               "failing_nodes", "duration_s")}
    summary["duration_s"] = round(time.perf_counter() - t0, 3)
    return summary


def _detect(conn, photos, lake_dir, first_model, model, dev, n_workers, offline, model_id, summary, opts,
            batch, max_pixels, on_batch) -> None:
    models = [first_model] + [load_model(model, dev, offline, single_thread=True) for _ in range(n_workers - 1)]
    if n_workers > 1 and dev == "cpu":
        import torch

        torch.set_num_threads(1)  # torch models: one thread per worker, as for ONNX sessions
    stored = _known_hashes(conn, model_id)
    inq: queue.Queue = queue.Queue(maxsize=2 * n_workers)
    outq: queue.Queue = queue.Queue(maxsize=4 * n_workers)
    stop = threading.Event()
    threads = [threading.Thread(target=_decoder, args=(photos, lake_dir, inq, n_workers, max_pixels, stop,
                                                       set(stored)), name="yolo-decode", daemon=True)]
    threads += [threading.Thread(target=_worker, args=(m, inq, outq, opts), name=f"yolo-infer-{i}", daemon=True)
                for i, m in enumerate(models)]
    for t in threads:
        t.start()
    writer = _Writer(conn, model_id, summary, batch, on_batch, stored)
    finished = 0
    try:
        while finished < n_workers:
            item = outq.get()
            if item is _DONE:
                finished += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                writer.add(item)
        writer.finish()
    finally:
        stop.set()
        while any(t.is_alive() for t in threads):  # unblock producers after an error
            try:
                inq.get_nowait()
            except queue.Empty:
                pass
            try:
                outq.get_nowait()
            except queue.Empty:
                time.sleep(0.01)
    summary["per_class"] = dict(writer.per_class.most_common())
    summary["unreadable_reasons"] = dict(writer.reasons)


class _Writer:
    """Batches outcomes into transactions; fills in duplicates from their original's results."""

    def __init__(self, conn, model_id: str, summary: dict, batch: int, on_batch, stored: set[str]):
        self.conn, self.model_id, self.summary, self.batch, self.on_batch = conn, model_id, summary, batch, on_batch
        self.stored = stored                       # hashes analysed in earlier runs
        self.by_sha: dict[str, Outcome] = {}       # results of this run's originals
        self.waiting: list[Outcome] = []           # duplicates whose original is still in flight
        self.pending: list[Outcome] = []
        self.per_class, self.reasons = Counter(), Counter()

    def add(self, o: Outcome) -> None:
        if o.status == "duplicate":
            self.waiting.append(o)
        else:
            if o.sha256:
                self.by_sha[o.sha256] = o
            self.pending.append(o)
        self._resolve(final=False)
        if len(self.pending) >= self.batch:
            self._flush()

    def _resolve(self, final: bool) -> None:
        still = []
        for d in self.waiting:
            src = self.by_sha.get(d.sha256)
            if src is None and d.sha256 in self.stored:
                src = _stored_outcome(self.conn, self.model_id, d.sha256)
                if src is not None:
                    self.by_sha[d.sha256] = src
            if src is not None:
                self.pending.append(src.copy_for(d.photo))
                self.summary["duplicates_reused"] += 1
            elif final:
                raise EnrichError(f"no analysis found for the duplicate photo {d.photo.image_path}")
            else:
                still.append(d)
        self.waiting = still

    def finish(self) -> None:
        self._resolve(final=True)
        self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        _write(self.conn, self.pending, self.model_id)
        s = self.summary
        s["batches"] += 1
        for o in self.pending:
            s["photos_analysed"] += 1
            s["objects_found"] += len(o.objects)
            self.per_class.update(obj[1] for obj in o.objects)
            if o.status == "unreadable":
                s["unreadable_photos"] += 1
                self.reasons[o.reason.split(":")[0]] += 1
        self.pending = []
        if self.on_batch:
            self.on_batch(dict(s))
