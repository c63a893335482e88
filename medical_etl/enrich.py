"""Stage 4, enrich: YOLO object detection on photos not yet analysed with the current model.

Pipeline, each step in its own threads with bounded queues between them (memory stays flat however
many photos wait):

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

import hashlib
import logging
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from psycopg2.extras import execute_values

from .db import ConnParams, conn_params, connect
from .images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_bytes, read_confined
from .migrate import migrate

log = logging.getLogger(__name__)
_DONE = object()


class EnrichError(RuntimeError):
    pass


class _Stopped(Exception):
    """The pipeline is being torn down: a thread stops what it was doing."""


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
    refused: bool = False            # unreadable because the path named what must not be read

    def copy_for(self, photo: Photo) -> Outcome:
        return Outcome(photo, self.status, self.width, self.height, self.reason, list(self.objects), self.sha256)


@dataclass
class Ready:
    """A decoded photo, letterboxed to the model's input, waiting for inference."""
    photo: Photo
    width: int                       # original size
    height: int
    scale: int                       # decoded at 1/scale (huge JPEGs)
    shape: tuple[int, int]           # (h, w) of the decoded image the boxes are scaled back to
    pixels: object                   # letterboxed HWC uint8 BGR (numpy)
    sha256: str | None = None


@dataclass
class _Failure:
    where: str
    exc: BaseException


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

    # Also when something imported Ultralytics before us: its "Loading ... for ONNX Runtime" notes
    # are not the project's progress. Its warnings and errors still show.
    logging.getLogger("ultralytics").setLevel(max(logging.WARNING, logging.getLogger("ultralytics").level))
    return YOLO


def load_model(model: str, device: str, offline: bool = True, single_thread: bool = False, *,
               imgsz: int = 640, conf: float = 0.25, iou: float = 0.7):
    """Load weights with Ultralytics and build their predictor; any failure names YOLO_MODEL and the path.

    ``device`` is cpu, auto (the GPU when there is one), cuda, cuda:N or N. On a CUDA device the
    model runs in fp16 where the weights allow it.
    """
    path = Path(model).expanduser()
    if path.suffix and not path.exists() and (path.parent != Path(".") or offline):
        raise EnrichError(f"YOLO_MODEL={model}: no such weights file ({path.resolve()})")
    if path.exists() and not os.access(path, os.R_OK):
        raise EnrichError(f"YOLO_MODEL={model}: weights file is not readable ({path.resolve()})")
    YOLO = _import_yolo(offline)
    dev = _device(device)
    try:
        m = YOLO(str(path), task="detect")
        import numpy as np

        # builds the predictor with the run's options (letterbox size, thresholds, device, fp16)
        fp16 = {"quantize": 16} if _is_cuda(dev) else {}  # fp16 on a CUDA GPU where the weights allow it
        m.predict(np.zeros((64, 64, 3), np.uint8), device=dev, imgsz=imgsz, conf=conf, iou=iou, verbose=False, **fp16)
    except Exception as exc:  # noqa: BLE001 - Ultralytics raises many types for bad weights
        raise EnrichError(f"YOLO_MODEL={model}: cannot load weights from {path.resolve()}: "
                          f"{type(exc).__name__}: {str(exc).strip()[:300]}") from None
    if single_thread:
        _limit_onnx_threads(m)
    return m


def _is_cuda(dev: str) -> bool:
    return dev.isdigit() or dev.startswith("cuda")


def _device(device: str) -> str:
    if device == "auto":
        import torch

        return "0" if torch.cuda.is_available() else "cpu"
    return device


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


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


class Detector:
    """One model instance used the way Ultralytics' predictor uses it, minus its per-call overhead:
    the same letterbox, normalisation, NMS and box scaling, on photos letterboxed one at a time (so
    a photo's result does not depend on its batch), several photos per forward call."""

    def __init__(self, yolo):
        from ultralytics.data.augment import LetterBox

        pred = yolo.predictor
        self.backend, self.args, self.device = pred.model, pred.args, pred.device
        self.names = self.backend.names
        self.fp16 = bool(getattr(self.backend, "fp16", False))
        self.letterbox = LetterBox(tuple(pred.imgsz), auto=False, stride=self.backend.stride)

    def prepare(self, photo: Photo, dec) -> Ready:
        return Ready(photo, dec.width, dec.height, dec.scale, dec.image.shape[:2], self.letterbox(image=dec.image),
                     dec.sha256)

    def detect(self, items: list[Ready]) -> list[Outcome]:
        import numpy as np
        import torch
        from ultralytics.utils import nms, ops

        a = self.args
        with torch.inference_mode():
            x = torch.from_numpy(np.stack([it.pixels for it in items])).to(self.device)
            x = x.permute(0, 3, 1, 2).contiguous().flip(1)            # BHWC BGR -> BCHW RGB
            x = (x.half() if self.fp16 else x.float()).div_(255)
            preds = nms.non_max_suppression(self.backend(x), a.conf, a.iou, a.classes, a.agnostic_nms,
                                            max_det=a.max_det, nc=0,
                                            end2end=getattr(self.backend, "end2end", False))
            out = []
            for it, p in zip(items, preds, strict=True):
                boxes = ops.scale_boxes(x.shape[2:], p[:, :4].float(), it.shape).tolist()
                s = it.scale
                objs = [(int(c), self.names[int(c)], float(cf), x1 * s, y1 * s, x2 * s, y2 * s)
                        for (x1, y1, x2, y2), cf, c in zip(boxes, p[:, 4].tolist(), p[:, 5].tolist(), strict=True)]
                out.append(Outcome(it.photo, "ok" if objs else "no_objects", it.width, it.height, objects=objs,
                                   sha256=it.sha256))
        return out

    def run(self, items: list[Ready]) -> list[Outcome]:
        """Detect; a failing batch is retried photo by photo, so one bad photo does not take others with it."""
        try:
            return self.detect(items)
        except Exception as exc:  # noqa: BLE001 - recorded per photo
            if len(items) > 1:
                return [o for it in items for o in self.run([it])]
            it = items[0]
            return [Outcome(it.photo, "unreadable", it.width, it.height, f"inference failed: {exc}"[:500],
                            sha256=it.sha256)]


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


class _Pipeline:
    """Decoder pool -> inference workers -> (the caller) writer, joined by bounded queues."""

    def __init__(self, photos: list[Photo], lake_dir: Path, detectors: list[Detector], *, decoders: int,
                 infer_batch: int, max_pixels: int, max_bytes: int, seen: set[str]):
        self.todo, self.todo_lock = iter(photos), threading.Lock()
        self.seen, self.seen_lock = seen, threading.Lock()
        self.lake_dir, self.detectors, self.infer_batch = lake_dir, detectors, infer_batch
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        # bounded: decoded photos wait as letterboxed pixels (1.2 MB at 640), never as whole files
        self.ready: queue.Queue = queue.Queue(maxsize=max(4, 2 * infer_batch * len(detectors)))
        self.out: queue.Queue = queue.Queue(maxsize=max(16, 4 * infer_batch * len(detectors)))
        self.stop = threading.Event()
        self.decoders_left, self.count_lock = decoders, threading.Lock()
        self.threads = [threading.Thread(target=self._decode_loop, name=f"enrich-decode-{i}", daemon=True)
                        for i in range(decoders)]
        self.threads += [threading.Thread(target=self._infer_loop, args=(d,), name=f"enrich-infer-{i}", daemon=True)
                         for i, d in enumerate(detectors)]

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def _get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                pass

    def _fail(self, where: str, exc: BaseException) -> None:
        self.stop.set()
        try:
            self.out.put_nowait(_Failure(where, exc))
        except queue.Full:
            self.failure = _Failure(where, exc)  # found by the writer's liveness check

    def _decode_loop(self) -> None:
        photo = None
        try:
            while not self.stop.is_set():
                with self.todo_lock:
                    photo = next(self.todo, None)
                if photo is None:
                    break
                self._put(*self._prepare(photo))
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - ends the stage with an error, never a hang
            self._fail(f"photo decoder failed on {photo.image_path if photo else '?'}", exc)
        finally:
            with self.count_lock:
                self.decoders_left -= 1
                last = self.decoders_left == 0
            if last:
                try:
                    for _ in self.detectors:
                        self._put(self.ready, _DONE)
                except _Stopped:
                    pass

    def _prepare(self, photo: Photo) -> tuple[queue.Queue, object]:
        r = read_confined(self.lake_dir, photo.image_path, self.max_bytes)
        if r.data is None:
            return self.out, Outcome(photo, "unreadable", reason=r.reason, refused=r.refused)
        with self.seen_lock:
            duplicate = r.sha256 in self.seen
            self.seen.add(r.sha256)
        if duplicate:
            return self.out, Outcome(photo, "duplicate", sha256=r.sha256)
        dec = decode_bytes(r.data, self.max_pixels)
        dec.sha256 = r.sha256
        if dec.image is None:
            return self.out, Outcome(photo, "unreadable", dec.width, dec.height, dec.reason, sha256=r.sha256)
        return self.ready, self.detectors[0].prepare(photo, dec)

    def _infer_loop(self, det: Detector) -> None:
        try:
            done = False
            while not done:
                item = self._get(self.ready)
                if item is _DONE:
                    break
                items = [item]
                while len(items) < self.infer_batch:  # take what is ready, up to a batch; never wait for more
                    try:
                        nxt = self.ready.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _DONE:
                        done = True
                        break
                    items.append(nxt)
                for o in det.run(items):
                    self._put(self.out, o)
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - ends the stage with an error, never a hang
            self._fail("inference worker failed", exc)
            return
        try:
            self._put(self.out, _DONE)
        except _Stopped:
            pass

    def results(self):
        """Yield outcomes as they come; raise EnrichError as soon as any thread fails."""
        for t in self.threads:
            t.start()
        finished = 0
        while finished < len(self.detectors):
            try:
                item = self.out.get(timeout=0.5)
            except queue.Empty:
                failure = getattr(self, "failure", None)
                if failure is None and not any(t.is_alive() for t in self.threads):
                    failure = _Failure("enrich threads", RuntimeError("ended without finishing their work"))
                if failure is not None:
                    self._raise(failure)
                continue
            if isinstance(item, _Failure):
                self._raise(item)
            if item is _DONE:
                finished += 1
            else:
                yield item

    @staticmethod
    def _raise(f: _Failure):
        raise EnrichError(f"{f.where}: {type(f.exc).__name__}: {str(f.exc)[:300]}") from f.exc

    def close(self) -> None:
        """Stop every thread (they check ``stop`` at each queue step) and wait for them briefly."""
        self.stop.set()
        deadline = time.monotonic() + 10
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))


def run_yolo_enrichment(
    db,
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
    build_models: bool | Literal["if_new"] = True,
    on_batch: Callable[[dict], None] | None = None,
    progress: bool | None = None,
) -> dict:
    """Detect objects in every loaded photo not yet analysed with ``model``; return a summary.

    ``db`` is Settings or ConnParams. Results are written ``batch`` photos per transaction, so a
    crash loses at most the batch in flight. ``device`` auto picks the GPU when there is one.
    ``workers`` (inference), ``decoders`` and ``infer_batch`` (photos per model call) default to
    one worker per core and one photo per call on CPU, one worker and ``batch`` photos per call on a
    GPU, and a decoder per core. Only regular files inside ``lake_dir/images`` of at most
    ``max_bytes`` are read; others are recorded unreadable and counted as refused, with the reason.
    With ``build_models`` the detection models are then built in dbt (fct_image_detections,
    fct_image_categories and their tests); ``"if_new"`` builds them only when photos were analysed
    (for a job whose transform stage has just built them). ``progress`` (default: when stderr is
    a terminal) prints a line per written batch.
    """
    t0 = time.perf_counter()
    params = db if isinstance(db, ConnParams) else conn_params(db)
    lake_dir = Path(lake_dir)
    first = None
    if Path(model).expanduser().is_file():
        model_id = weights_id(Path(model).expanduser())
    else:  # a name Ultralytics resolves (and may download): load it to find the file
        first = load_model(model, device, offline, imgsz=imgsz, conf=conf, iou=iou)
        weights = Path(getattr(first, "ckpt_path", None) or model)
        model_id = weights_id(weights) if weights.is_file() else Path(model).name
    conn = connect(params)
    try:
        migrate(conn)
        photos, already = _work_list(conn, model_id)
        summary = {"model": model_id, "photos_to_analyse": len(photos), "already_analysed": already,
                   "photos_analysed": 0, "objects_found": 0, "per_class": {}, "unreadable_photos": 0,
                   "unreadable_reasons": {}, "refused_photos": 0, "refused_reasons": {}, "duplicates_reused": 0,
                   "device": None, "workers": 0, "decoders": 0, "infer_batch": 0, "fp16": False, "batches": 0}
        if photos:  # the model is loaded only when there is something to analyse
            dev = _device(device)
            gpu = dev != "cpu"
            n_workers = workers or (1 if gpu else _cores())
            summary.update(device=dev, workers=n_workers, decoders=decoders or _cores(),
                           infer_batch=infer_batch or (batch if gpu else 1))
            show = _Progress(len(photos), on_batch, t0) if (sys.stderr.isatty() if progress is None else progress) \
                else on_batch
            _detect(conn, photos, lake_dir, first, model, dev, offline, model_id, summary, batch, show,
                    dict(imgsz=imgsz, conf=conf, iou=iou), max_pixels, max_bytes)
    finally:
        conn.close()
    infer_s = time.perf_counter() - t0
    summary["photos_per_second"] = round(summary["photos_analysed"] / infer_s, 2) if summary["photos_analysed"] else 0.0
    if build_models is True or (build_models == "if_new" and summary["photos_analysed"]):
        from .transform import note_image_models_built, run_dbt_transformations

        dbt = run_dbt_transformations(params, select=["+fct_image_detections+", "+fct_image_categories+"],
                                      check_freshness=False)
        if dbt["status"] == "success":
            note_image_models_built(params)  # the next run with nothing new need not rebuild them
        summary["dbt"] = {k: dbt[k] for k in ("status", "models_built", "tests_passed", "tests_failed",
                                               "failing_nodes", "duration_s")}
    summary["duration_s"] = round(time.perf_counter() - t0, 3)
    return summary


class _Progress:
    """A line per written batch on a terminal (stderr; stdout stays for the result)."""

    def __init__(self, total: int, then: Callable[[dict], None] | None, t0: float):
        self.total, self.then, self.t0 = total, then, t0

    def __call__(self, s: dict) -> None:
        done, secs = s["photos_analysed"], time.perf_counter() - self.t0
        end = "\n" if done >= self.total else ""
        sys.stderr.write(f"\renrich: {done:,}/{self.total:,} photos, {done / secs:.1f}/s, "
                         f"{s['objects_found']:,} objects, {s['unreadable_photos']} unreadable{end}")
        sys.stderr.flush()
        if self.then:
            self.then(s)


def _detect(conn, photos, lake_dir, first_model, model, dev, offline, model_id, summary, batch, on_batch,
            opts, max_pixels, max_bytes) -> None:
    n_workers = summary["workers"]
    single = n_workers > 1 and dev == "cpu"
    if first_model is not None and single:
        _limit_onnx_threads(first_model)
    models = [first_model or load_model(model, dev, offline, single_thread=single, **opts)]
    models += [load_model(model, dev, offline, single_thread=True, **opts) for _ in range(n_workers - 1)]
    if single:
        import torch

        torch.set_num_threads(1)  # torch models and NMS: one thread per worker, as for ONNX sessions
    detectors = [Detector(m) for m in models]
    summary["fp16"] = detectors[0].fp16
    stored = _known_hashes(conn, model_id)
    pipe = _Pipeline(photos, lake_dir, detectors, decoders=summary["decoders"], infer_batch=summary["infer_batch"],
                     max_pixels=max_pixels, max_bytes=max_bytes, seen=set(stored))
    writer = _Writer(conn, model_id, summary, batch, on_batch, stored)
    try:
        for outcome in pipe.results():
            writer.add(outcome)
        writer.finish()
    finally:
        pipe.close()
    summary["per_class"] = dict(writer.per_class.most_common())
    summary["unreadable_reasons"] = dict(writer.reasons)
    summary["refused_reasons"] = dict(writer.refused)


class _Writer:
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
