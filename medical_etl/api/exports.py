"""Downloads: a report's rows as CSV or NDJSON, streamed, with the columns of its JSON items.

CSV is what spreadsheets open: UTF-8 with a byte-order mark (without it Excel reads Amharic as mojibake), a
header row, nested objects spread over ``name.key`` columns, lists joined with ``"; "``. Text cells that a
spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) get a
leading apostrophe: the texts come from strangers on Telegram. NDJSON is one JSON object per line, as in
the JSON answer.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from pydantic import BaseModel

Format = Literal["json", "csv", "ndjson"]
MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
_ACCEPTED = {"application/json": "json", "text/csv": "csv", "application/x-ndjson": "ndjson",
             "application/ndjson": "ndjson"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
BOM = "\ufeff"
CHUNK_ROWS = 200


def negotiate(requested: str | None, accept: str | None) -> Format:
    """``?format=`` when given, else the most preferred of JSON, CSV and NDJSON in ``Accept`` (JSON when it
    names none of them)."""
    if requested:
        return requested  # type: ignore[return-value]  (validated by the endpoint's Literal)
    best, best_q = "json", 0.0
    for part in (accept or "").split(","):
        media, *params = [p.strip() for p in part.split(";")]
        fmt = _ACCEPTED.get(media.lower())
        if fmt is None:
            continue
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q:
            best, best_q = fmt, q
    return best  # type: ignore[return-value]


def columns(item_model: type[BaseModel], rows: Sequence[dict]) -> list[str]:
    """The CSV header: the item model's fields in order, a dict field spread over its keys (as the rows
    have them, in the order first seen)."""
    out = []
    for name, field in item_model.model_fields.items():
        if _is_dict(field.annotation):
            keys: dict[str, None] = {}
            for r in rows:
                keys.update(dict.fromkeys(_flatten(r.get(name) or {}, name)))
            out.extend(keys)
        else:
            out.append(name)
    return out


def _is_dict(annotation) -> bool:
    return getattr(annotation, "__origin__", annotation) is dict


def _flatten(value: dict, prefix: str) -> dict:
    flat = {}
    for k, v in value.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}.{k}"))
        else:
            flat[f"{prefix}.{k}"] = v
    return flat


def guard(text: str) -> str:
    """A text cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + text if text.startswith(FORMULA_START) else text


def cell(value) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, list):
        return guard("; ".join(str(v) for v in value))
    return guard(str(value))


def csv_lines(rows: Sequence[dict], header: list[str]) -> Iterator[bytes]:
    """The CSV document (BOM, header, rows) in chunks of ``CHUNK_ROWS`` rows."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    buf.write(BOM)
    writer.writerow(header)
    for i, row in enumerate(rows, 1):
        flat = dict(row)
        for name, value in row.items():
            if isinstance(value, dict):
                flat.update(_flatten(value, name))
        writer.writerow([cell(flat.get(c)) for c in header])
        if i % CHUNK_ROWS == 0:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode("utf-8")


def ndjson_lines(rows: Iterable[dict]) -> Iterator[bytes]:
    for row in rows:
        yield (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def filename(report: str, day: str, fmt: Format, *parts: str | None) -> str:
    """``top-products-2026-12-01.csv``; ``parts`` (a channel, a product) are reduced to ASCII letters,
    digits and dashes, so the name is safe in a header and on every file system."""
    words = [report, *(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-")[:60] for p in parts if p), day]
    return "-".join(w for w in words if w) + "." + fmt
