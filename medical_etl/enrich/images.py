"""Decoding photos for detection, defensively: every failure becomes a reason, never an exception.

Handles what real channels contain: videos saved as .jpg, truncated JPEGs, missing files and
images too large to decode into memory (decoded at a reduced scale when JPEG, refused otherwise).
And what a hostile or broken lake may name: only regular files inside the lake's images folder are
opened (no symbolic link is followed, no device or FIFO is read), with a byte cap checked before and
while reading (:func:`read_confined`).
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 7300 x 5500; decoded BGR that is 120 MB
DEFAULT_MAX_BYTES = 50 * 1024 * 1024  # Telegram's own photos are at most 10 MB
IMAGES_DIR = "images"  # the lake's photo folder; image_path values are relative to the lake
_PIL_LIMIT = threading.Lock()
_REDUCED = ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))


@dataclass
class Read:
    data: bytes | None = None
    sha256: str | None = None
    reason: str | None = None     # why there are no bytes
    refused: bool = False         # the path was not even opened / read: it names what must not be read


@dataclass
class Decoded:
    image: np.ndarray | None      # BGR, as Ultralytics expects from OpenCV
    width: int | None = None      # original size, before any reduction
    height: int | None = None
    scale: int = 1                # the image is the original reduced by this factor
    reason: str | None = None     # why it is unreadable
    sha256: str | None = None     # of the file's bytes (identical photos are analysed once)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header only, without decoding pixels."""

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _PIL_LIMIT:  # decoder threads share PIL's global limit
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # size only; we enforce our own limit
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        return im.size
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except Exception:  # noqa: BLE001 - an unidentifiable header is reported by the caller
        return None


class Refused(Exception):
    """The path names something enrich must not read (outside the images folder, a link, a device...)."""


def _open_under(root_fd: int, parts: tuple[str, ...]) -> int:
    """Open ``parts`` below the directory ``root_fd`` without following any symbolic link."""
    dfd = root_fd
    try:
        for name in parts[:-1]:
            try:
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused(f"refused: {name!r} in the path is a symbolic link or not a folder") from None
                raise
            if dfd != root_fd:
                os.close(dfd)
            dfd = nfd
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused by fstat)
            return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused("refused: a symbolic link (links are not followed)") from None
            raise
    finally:
        if dfd != root_fd:
            os.close(dfd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_confined(lake_dir: Path, image_path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Read:
    """Read a lake record's ``image_path`` only if it is a regular file inside ``lake_dir/images``.

    The path must be relative and start with ``images/``; no ``..``, no symbolic link anywhere below
    the images folder, no device, FIFO or socket, and at most ``max_bytes`` (checked before reading,
    and again while reading, so a file that grows cannot exhaust memory). Anything else is refused
    with a reason; a missing or unreadable file gets a reason too.
    """
    if not image_path or "\x00" in image_path:
        return Read(reason="refused: empty path or NUL byte in the path", refused=True)
    rel = PurePosixPath(image_path)
    parts = rel.parts
    if rel.is_absolute() or ".." in parts or len(parts) < 2 or parts[0] != IMAGES_DIR:
        return Read(reason="refused: path outside the lake's images folder", refused=True)
    try:
        root_fd = os.open(Path(lake_dir) / IMAGES_DIR, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return Read(reason="file not found")
    except OSError as exc:
        return Read(reason=f"cannot read file: {exc.strerror}")
    try:
        fd = _open_under(root_fd, parts[1:])
    except Refused as exc:
        return Read(reason=str(exc), refused=True)
    except FileNotFoundError:
        return Read(reason="file not found")
    except OSError as exc:
        return Read(reason=f"cannot read file: {exc.strerror}")
    finally:
        os.close(root_fd)
    try:
        return _read_fd(fd, max_bytes)
    finally:
        os.close(fd)


def _read_fd(fd: int, max_bytes: int) -> Read:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return Read(reason=f"refused: {_kind(st.st_mode)}, not a regular file", refused=True)
    if st.st_size > max_bytes:
        return Read(reason=f"refused: file too large ({st.st_size:,} bytes, limit {max_bytes:,})", refused=True)
    chunks, total = [], 0
    try:
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                return Read(reason=f"refused: file too large (more than {max_bytes:,} bytes)", refused=True)
    except OSError as exc:
        return Read(reason=f"cannot read file: {exc.strerror}")
    data = b"".join(chunks)
    if not data:
        return Read(reason="empty file")
    return Read(data, hashlib.sha256(data).hexdigest())


def decode(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> Decoded:
    """Decode one file (not following a link, regular files only, at most ``max_bytes``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return Decoded(None, reason="file not found")
    except OSError as exc:
        reason = "refused: a symbolic link (links are not followed)" if exc.errno == errno.ELOOP else \
            f"cannot read file: {exc.strerror}"
        return Decoded(None, reason=reason)
    try:
        r = _read_fd(fd, max_bytes)
    finally:
        os.close(fd)
    if r.data is None:
        return Decoded(None, reason=r.reason)
    dec = decode_bytes(r.data, max_pixels)
    dec.sha256 = r.sha256
    return dec


def decode_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    size = _header_size(data)
    if size is None:
        kind = "a video (MP4/MOV)" if data[4:8] == b"ftyp" else "not an image"
        return Decoded(None, reason=f"{kind}: unrecognised image format")
    w, h = size
    is_jpeg = data[:2] == b"\xff\xd8"
    if is_jpeg and b"\xff\xd9" not in data[-1024:]:
        return Decoded(None, w, h, reason="truncated JPEG (no end-of-image marker)")
    flag, scale = cv2.IMREAD_COLOR, 1
    if w * h > max_pixels:
        fit = [(s, f) for s, f in _REDUCED if (w // s) * (h // s) <= max_pixels] if is_jpeg else []
        if not fit:
            return Decoded(None, w, h, reason=f"image too large ({w}x{h} pixels, limit {max_pixels:,})")
        scale, flag = fit[0]
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as exc:
        return Decoded(None, w, h, reason=f"could not be decoded: {str(exc).strip()[:200]}")
    if img is None:
        return Decoded(None, w, h, reason="could not be decoded")
    return Decoded(img, w, h, scale)
