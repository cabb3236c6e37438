"""An exclusive lock on a file beside an output: one writer at a time, and who holds it.

``flock`` is released by the kernel when its holder dies (even by SIGKILL), so a lock
never outlives its process; the note written into the file says who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..exceptions import ConfigError


class LockBusy(Exception):
    """Another process holds the lock; ``holder`` is the note it wrote."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def take_lock(path: Path, note: str) -> int:
    """Lock ``path`` (created if needed) and write ``note`` into it; return the descriptor that holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        raise LockBusy(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{note}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def held(path: Path, what: str):
    """Hold the lock ``path`` (named after the real file) while the block runs; a ``ConfigError``
    naming ``what`` and the holder when another process has it."""
    real = path.resolve()
    real.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = take_lock(real, str(os.getpid()))
    except LockBusy as busy:
        raise ConfigError(f"{what} is in use by another run (PID {busy.holder or 'unknown'}, lock {real}); "
                          "wait for it to finish or stop it") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(real)
        os.close(fd)
