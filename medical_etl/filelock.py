"""An flock-based lock file: held until released or the process ends (the kernel frees it even on
kill -9). The job lock and the Telegram session lock use it."""
from __future__ import annotations

import errno
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is the note it wrote (its pid and since when)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


@dataclass
class Lock:
    fd: int
    path: Path

    def release(self) -> None:
        os.close(self.fd)


def acquire_lock(path: Path, wait_s: float = 0) -> Lock:
    """flock ``path`` (the kernel releases it even on kill -9), waiting up to ``wait_s`` for another
    holder; raises :class:`LockHeld` (with the holder's note) when it is still taken then."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                raise LockHeld(path, holder or "unknown holder") from None
            time.sleep(min(5.0, max(0.05, deadline - time.monotonic())))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode(), 0)
    return Lock(fd, path)

