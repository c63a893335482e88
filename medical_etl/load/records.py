"""What the load stage moves: named rows for its bookkeeping tables, a batch of lake files' rows as COPY
lines, and the running totals that become the stage summary."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class RejectRow(NamedTuple):
    """A row of ``raw.load_rejects``: a record (``position`` -1: the whole file) and why it was refused."""

    source_file: str
    position: int
    reason: str
    payload: str | None
    run_id: str | None
    channel: str | None = None
    message_id: int | None = None


class FileRow(NamedTuple):
    """A row of ``raw.loaded_files``: what was read of a lake file (``size_bytes`` -1: read it again)."""

    source_file: str
    size_bytes: int
    mtime_ns: int
    sha256: str
    rows_valid: int
    rows_rejected: int
    status: str  # loaded, rejected
    run_id: str


class KnownFile(NamedTuple):
    """What ``raw.loaded_files`` says of a file read before."""

    size_bytes: int
    mtime_ns: int
    sha256: str


def copy_line(values) -> bytes:
    """One row in COPY text format. (str.translate is ~4x slower here on long non-ASCII text.)"""
    out = []
    for v in values:
        if v is None:
            out.append("\\N")
        elif type(v) is str:
            if "\\" in v:
                v = v.replace("\\", "\\\\")
            if "\t" in v:
                v = v.replace("\t", "\\t")
            if "\n" in v:
                v = v.replace("\n", "\\n")
            if "\r" in v:
                v = v.replace("\r", "\\r")
            out.append(v)
        else:
            out.append(str(v))
    return ("\t".join(out) + "\n").encode("utf-8")


class LinesReader:
    """File-like view over a list of COPY lines, so a batch is never joined into one big copy."""

    def __init__(self, lines: list[bytes]):
        self.lines, self.pos = lines, 0

    def read(self, size: int = -1) -> bytes:
        chunk, n = [], 0
        while self.pos < len(self.lines) and (size < 0 or n < size):
            chunk.append(self.lines[self.pos])
            n += len(self.lines[self.pos])
            self.pos += 1
        return b"".join(chunk)

    readline = read


@dataclass
class FileRows:
    """One lake file's part of a batch: its rows (COPY lines), rejects and bookkeeping row."""
    rel: str
    new: bool                      # never loaded before: its rows may be COPY'd directly
    lines: list[bytes] = field(default_factory=list)
    rejects: list[RejectRow] = field(default_factory=list)
    file_row: FileRow | None = None
    retry_later: bool = False      # a record may become valid with time: read the file again next run


@dataclass
class Batch:
    parts: list[FileRows] = field(default_factory=list)
    rows: int = 0
    touched: list[tuple[str, int]] = field(default_factory=list)   # (source_file, mtime_ns): content unchanged

    @property
    def lines(self) -> list[bytes]:      # rows of files seen before: merged
        return [ln for p in self.parts if not p.new for ln in p.lines]

    @property
    def new_lines(self) -> list[bytes]:  # rows of files never loaded: COPY'd directly
        return [ln for p in self.parts if p.new for ln in p.lines]

    @property
    def files(self) -> list[FileRow]:
        return [p.file_row for p in self.parts if p.file_row]

    @property
    def rejects(self) -> list[RejectRow]:
        return [r for p in self.parts for r in p.rejects]


@dataclass
class Totals:
    files_read: int = 0
    files_skipped: int = 0
    files_rejected: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_rejected: int = 0
    rows_duplicate: int = 0
    rows_deleted: int = 0
    rows_refused_by_db: int = 0
    nul_chars_stripped: int = 0
    surrogates_replaced: int = 0
    batches: int = 0
    retries: int = 0
