"""Stage 4, enrich: YOLO object detection on photos not yet analysed with the current model.

Pipeline (:mod:`medical_etl.enrich.detection`), each step in its own threads with bounded queues between
them (memory stays flat however many photos wait):

- a pool of decoders (one per core; OpenCV and hashlib release the GIL) reads each photo (only
  regular files inside the lake's images folder, with a byte cap), hashes it (identical bytes are
  analysed once), decodes it and letterboxes it to the model's input size, one photo at a time so
  the results never depend on which photos share a batch;
- inference workers run the model: on CPU one per core, each with its own one-thread model instance
  (Ultralytics models are not thread-safe), one photo per call; on a GPU one worker that stacks up
  to ``batch`` photos per call, in fp16 where the weights allow it;
- the calling thread writes the results, ``batch`` photos per transaction.
Any failure of a decoder or worker thread ends the stage with an error naming it (never a hang).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path

from psycopg2.extras import execute_values

from medical_etl.db import ConnParams, connect_warehouse, expect_params
from medical_etl.enrich.detection import (  # noqa: F401 - EnrichError, Detector and load_model are this stage's API too
    Detector,
    EnrichError,
    Outcome,
    Photo,
    Pipeline,
    _cores,
    _device,
    _limit_onnx_threads,
    load_model,
    weights_id,
)
from medical_etl.enrich.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from medical_etl.progress import Progress, combine

log = logging.getLogger(__name__)


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


def _work_list(conn, model_id: str, day: date | None = None) -> tuple[list[Photo], int]:
    with conn.cursor() as cur:
        cur.execute("""
            SELECT m.channel, m.message_id, m.image_path FROM raw.telegram_messages m
            WHERE m.image_path IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM raw.image_analyses a
                WHERE a.channel = m.channel AND a.message_id = m.message_id AND a.model = %(model)s)
              AND (%(day)s::date IS NULL OR (m.message_date AT TIME ZONE 'UTC')::date = %(day)s::date)
            ORDER BY m.channel, m.message_id""", {"model": model_id, "day": day})
        todo = [Photo(*r) for r in cur.fetchall()]
        cur.execute("SELECT count(*) FROM raw.image_analyses WHERE model = %s", (model_id,))
        done = cur.fetchone()[0]
    conn.commit()
    return todo, done


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
    db: ConnParams,
    lake_dir: str | Path,
    *,
    model: str = "yolov8n.pt",
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int = 640,
    batch: int = 16,
    device: str = "auto",
    workers: int | None = None,
    decoders: int | None = None,
    infer_batch: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    offline: bool = True,
    on_batch: Callable[[dict], None] | None = None,
    progress: bool | None = None,
    day: date | None = None,
) -> dict:
    """Detect objects in every loaded photo not yet analysed with ``model``; return a summary.

    ``day`` limits the work to the photos of posts dated that UTC day: a partition, so that several
    workers (or GPUs) can each take days; a partition run is idempotent like the whole stage.

    ``db`` is ConnParams (settings are refused: read them at the edge). Results are written ``batch`` photos per transaction, so a
    crash loses at most the batch in flight. ``device`` auto picks the GPU when there is one.
    ``workers`` (inference), ``decoders`` and ``infer_batch`` (photos per model call) default to
    one worker per core and one photo per call on CPU, one worker and ``batch`` photos per call on a
    GPU, and a decoder per core. Only regular files inside ``lake_dir/images`` of at most
    ``max_bytes`` are read; others are recorded unreadable and counted as refused, with the reason.
    The detection models (dbt) are not built here: the job does that next, with stage 3's
    :func:`medical_etl.transform.build_image_models`. ``progress`` (default: when stderr is
    a terminal) prints a line per written batch.
    """
    expect_params(db, "run_yolo_enrichment")
    t0 = time.perf_counter()
    lake_dir = Path(lake_dir)
    first = None
    if Path(model).expanduser().is_file():
        model_id = weights_id(Path(model).expanduser())
    else:  # a name Ultralytics resolves (and may download): load it to find the file
        first = load_model(model, device, offline, imgsz=imgsz, conf=conf, iou=iou)
        weights = Path(getattr(first, "ckpt_path", None) or model)
        model_id = weights_id(weights) if weights.is_file() else Path(model).name
    conn = connect_warehouse(db)
    try:
        photos, already = _work_list(conn, model_id, day)
        summary = {"model": model_id, "day": day.isoformat() if day else None, "photos_to_analyse": len(photos), "already_analysed": already,
                   "photos_analysed": 0, "objects_found": 0, "per_class": {}, "unreadable_photos": 0,
                   "unreadable_reasons": {}, "refused_photos": 0, "refused_reasons": {}, "duplicates_reused": 0,
                   "device": None, "workers": 0, "decoders": 0, "infer_batch": 0, "fp16": False, "batches": 0}
        if photos:  # the model is loaded only when there is something to analyse
            dev = _device(device)
            summary.update(plan(dev, batch, _cores(), workers=workers, decoders=decoders, infer_batch=infer_batch))
            show = combine(Progress("enrich", enabled=progress, t0=t0).photos(len(photos)), on_batch)
            _detect(conn, photos, lake_dir, first, model, dev, offline, model_id, summary, batch, show,
                    dict(imgsz=imgsz, conf=conf, iou=iou), max_pixels, max_bytes)
    finally:
        conn.close()
    infer_s = time.perf_counter() - t0
    summary["photos_per_second"] = round(summary["photos_analysed"] / infer_s, 2) if summary["photos_analysed"] else 0.0
    summary["duration_s"] = round(time.perf_counter() - t0, 3)
    return summary


def plan(device: str, batch: int, cores: int, *, workers: int | None = None, decoders: int | None = None,
         infer_batch: int | None = None) -> dict:
    """Threads and batch size for a device: on CPU a one-thread worker per core, one photo per call
    (a core is busiest on one photo at a time); on a GPU one worker, ``batch`` photos per call, and
    a decoder per core to keep it fed."""
    gpu = device != "cpu"
    return {"device": device, "workers": workers or (1 if gpu else cores), "decoders": decoders or cores,
            "infer_batch": infer_batch or (batch if gpu else 1)}


def _detect(conn, photos, lake_dir, first_model, model, dev, offline, model_id, summary, batch, on_batch,
            opts, max_pixels, max_bytes) -> None:
    n_workers = summary["workers"]
    single = n_workers > 1 and dev == "cpu"
    if first_model is not None and single:
        _limit_onnx_threads(first_model)
    detectors = [Detector(first_model or load_model(model, dev, offline, single_thread=single, **opts))]
    for _ in range(n_workers - 1):  # ONNX on CPU: a new one-thread session each; else a model each
        clone = detectors[0].clone_one_thread() if single else None
        detectors.append(clone or Detector(load_model(model, dev, offline, single_thread=single, **opts)))
    if single:
        import torch

        torch.set_num_threads(1)  # torch models and NMS: one thread per worker, as for ONNX sessions
    summary["fp16"] = detectors[0].fp16
    stored = _known_hashes(conn, model_id)
    pipe = Pipeline(photos, lake_dir, detectors, decoders=summary["decoders"], infer_batch=summary["infer_batch"],
                     max_pixels=max_pixels, max_bytes=max_bytes, seen=set(stored))
    writer = _ResultWriter(conn, model_id, summary, batch, on_batch, stored)
    try:
        for outcome in pipe.results():
            writer.add(outcome)
        writer.finish()
    finally:
        pipe.close()
    summary["per_class"] = dict(writer.per_class.most_common())
    summary["unreadable_reasons"] = dict(writer.reasons)
    summary["refused_reasons"] = dict(writer.refused)


class _ResultWriter:
    """Batches outcomes into transactions; fills in duplicates from their original's results."""

    def __init__(self, conn, model_id: str, summary: dict, batch: int, on_batch, stored: set[str]):
        self.conn, self.model_id, self.summary, self.batch, self.on_batch = conn, model_id, summary, batch, on_batch
        self.stored = stored                       # hashes analysed in earlier runs
        self.by_sha: dict[str, Outcome] = {}       # results of this run's originals
        self.waiting: list[Outcome] = []           # duplicates whose original is still in flight
        self.pending: list[Outcome] = []
        self.per_class, self.reasons, self.refused = Counter(), Counter(), Counter()

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
                if o.refused:
                    s["refused_photos"] += 1
                    self.refused[o.reason] += 1
        self.pending = []
        if self.on_batch:
            self.on_batch(dict(s))
