"""Process-lifetime file locks: one implementation for every "only one of us" rule.

``fcntl.lockf`` (a POSIX record lock), not ``flock``: the lock belongs to this process only, so
forked workers do not inherit it, and the kernel releases it the moment the process dies, even by
SIGKILL, so a crashed holder never leaves a stale lock behind. The lock file records the holder
(``pid N on HOST``) so a refused process can say who holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

_HELD: set[str] = set()  # POSIX locks never conflict within one process: track our own


class LockHeldError(RuntimeError):
    """Another process (or this one) holds the lock; ``holder`` says which."""

    def __init__(self, lock: Path, holder: str) -> None:
        super().__init__(f"{lock} is held by {holder}")
        self.lock = lock
        self.holder = holder


def acquire(lock: Path, mode: int = 0o644) -> int:
    """Take ``lock`` without waiting and return its file descriptor (keep it open to hold the lock).

    Raises ``LockHeldError`` naming the holder when another process has it. ``mode``: of a new
    lock file (0o666 where other users' processes must take the same lock, as for GPUs).
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock.resolve())
    if key in _HELD:
        raise LockHeldError(lock, f"this very process (pid {os.getpid()} on {socket.gethostname()})")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = "another process, " + (os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown")
        os.close(fd)
        if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise LockHeldError(lock, holder) from err
    _HELD.add(key)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def release(lock: Path, fd: int) -> None:
    _HELD.discard(str(lock.resolve()))
    with contextlib.suppress(OSError):
        fcntl.lockf(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def held(lock: Path):
    """``with held(lock):`` take ``lock`` for the block (``LockHeldError`` if another process has it)."""
    fd = acquire(lock)
    try:
        yield lock
    finally:
        release(lock, fd)
