"""Photo detection for the enrich stage: models, and the threads that feed them.

- :func:`load_model` loads weights with Ultralytics (cpu, auto, cuda; fp16 on a CUDA GPU where the
  weights allow it);
- :class:`Detector` uses a model the way Ultralytics' predictor does (same letterbox, normalisation,
  NMS and box scaling) minus its per-call overhead, several letterboxed photos per forward call;
- :class:`Pipeline`: a pool of decoders (OpenCV and hashlib release the GIL) reads each photo
  (confined to the lake's images folder, with a byte cap), hashes it, decodes and letterboxes it;
  inference workers run the detectors; bounded queues join them, so memory stays flat however many
  photos wait; the caller takes the outcomes. A failing thread ends the run with an error, never a hang.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from medical_etl.enrich.images import decode_bytes, read_confined
from medical_etl.errors import PermanentError

_DONE = object()


class EnrichError(PermanentError):
    """A photo pipeline failure that ends the stage (a decoder or the model failed)."""


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


def _cpu_onnx_session(auto_backend):
    """The ONNX Runtime CPU session behind an Ultralytics AutoBackend, or None for other formats/devices."""
    inner = getattr(auto_backend, "backend", auto_backend)
    session = getattr(inner, "session", None)
    if session is None or getattr(inner, "use_io_binding", False) or \
            session.get_providers()[0] != "CPUExecutionProvider":
        return None
    return session


def _one_thread_session(session):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(session._model_path, opts, providers=["CPUExecutionProvider"])


def _limit_onnx_threads(m) -> None:
    """ONNX Runtime sessions default to one thread per core; with a worker per core, use one each."""
    auto = getattr(getattr(m, "predictor", None), "model", None)
    session = _cpu_onnx_session(auto)
    if session is not None:
        inner = getattr(auto, "backend", auto)
        inner.session = _one_thread_session(session)


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

    def clone_one_thread(self) -> Detector | None:
        """Another detector on the same ONNX weights with its own one-thread CPU session (what a
        worker per core needs, for a fraction of a model load); None where that does not apply."""
        import copy

        session = _cpu_onnx_session(self.backend)
        if session is None or not hasattr(self.backend, "backend"):
            return None
        inner = copy.copy(self.backend.backend)
        inner.session = _one_thread_session(session)
        clone = copy.copy(self)
        clone.backend = copy.copy(self.backend)   # a plain attribute of the module copy, not shared
        clone.backend.backend = inner
        return clone

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


class Pipeline:
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
