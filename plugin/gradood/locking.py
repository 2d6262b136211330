"""An exclusive lock between processes on a file (the feature cache, downloads, archive
extraction), on every OS that torch supports: :mod:`filelock` (a dependency of torch) takes it,
``flock`` on Unix and ``msvcrt`` locking on Windows."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["exclusive_lock"]


@contextmanager
def exclusive_lock(
    path: str | os.PathLike, on_wait: Callable[[], object] | None = None
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block; another
    process asking for it waits (calling ``on_wait`` first, if given). The file is removed on
    release.

    The lock is the file's inode: a process that waited on a file that its holder removed
    finds another inode (or none) under ``path`` once it gets the lock, and tries again, so two
    processes never hold the lock at the same time. The OS releases it when its holder dies
    (the file then stays, and is removed by the next holder).
    """
    path = Path(path)
    while True:
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            lock.acquire()
        if _holds_the_named_file(lock, path):
            break
        lock.release()
    try:
        yield
    finally:
        with suppress(OSError):  # Windows: an open file stays; filelock removes it on release
            path.unlink(missing_ok=True)  # before the release: no one else can hold it now
        lock.release()


def _holds_the_named_file(lock: FileLock, path: Path) -> bool:
    """Whether the file ``lock`` holds is the one named ``path`` now. A backend that locks by
    creating the file (no descriptor held) always holds the named file."""
    handle = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    if handle is None:
        return True
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
