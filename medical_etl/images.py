"""Decoding photos for detection, defensively: every failure becomes a reason, never an exception.

Handles what real channels contain: videos saved as .jpg, truncated JPEGs, missing files and
images too large to decode into memory (decoded at a reduced scale when JPEG, refused otherwise).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 7300 x 5500; decoded BGR that is 120 MB
_REDUCED = ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))


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
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # size only; we enforce our own limit
            try:
                with Image.open(io.BytesIO(data)) as im:
                    return im.size
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Exception:  # noqa: BLE001 - an unidentifiable header is reported by the caller
        return None


def read(path: Path) -> tuple[bytes | None, str | None, str | None]:
    """(bytes, sha256, None) or (None, None, reason)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None, "file not found"
    except OSError as exc:
        return None, None, f"cannot read file: {exc.strerror}"
    if not data:
        return None, None, "empty file"
    return data, hashlib.sha256(data).hexdigest(), None


def decode(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    data, sha, reason = read(path)
    if data is None:
        return Decoded(None, reason=reason)
    dec = decode_bytes(data, max_pixels)
    dec.sha256 = sha
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
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        return Decoded(None, w, h, reason="could not be decoded")
    return Decoded(img, w, h, scale)
