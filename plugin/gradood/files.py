"""Atomic file writes (a reader sees the old file or the complete new one, never a part), and
exclusive locks between processes."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text", "exclusive_lock"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename
    it to ``path`` (``os.replace``). On any error the temporary file is removed and ``path`` is
    left as it was. The parent directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_torch_save(path: str | os.PathLike, payload: object) -> Path:
    """:func:`atomic_write` of ``torch.save(payload)``."""
    return atomic_write(path, lambda file: torch.save(payload, file))


@contextmanager
def exclusive_lock(
    path: str | os.PathLike, on_wait: Callable[[], object] | None = None
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the ``with`` block;
    another process asking for it waits (calling ``on_wait`` first, if given). The file is
    removed on release.

    The lock is the file's inode: a process that waited on a file that its holder removed
    finds another inode (or none) under ``path`` once it gets the lock, and tries again, so two
    processes never hold the lock at the same time. The kernel releases it when its holder dies
    (the file then stays, and is removed by the next holder).
    """
    path = Path(path)
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock(handle, on_wait)
            if _is_same_file(handle, path):
                break
        except BaseException:
            os.close(handle)
            raise
        os.close(handle)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the release: no one else can hold it now
        os.close(handle)


def _flock(handle: int, on_wait: Callable[[], object] | None) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if on_wait is not None:
            on_wait()
        fcntl.flock(handle, fcntl.LOCK_EX)


def _is_same_file(handle: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
