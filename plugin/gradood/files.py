"""Atomic file writes: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .locking import exclusive_lock  # its home before gradood.locking

__all__ = [
    "WriteError",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_text",
    "exclusive_lock",
    "os_cause",
]


class WriteError(OSError):
    """A file could not be written: names the file and the cause (the disk full first)."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename
    it to ``path`` (``os.replace``). On any error the temporary file is removed and ``path`` is
    left as it was. The parent directory is created if needed.

    :raises WriteError: if an operating-system error (found in the exception's chain: torch
        wraps them) stops the write, naming ``path`` and the cause
    """
    path = Path(path)
    try:
        return _atomic_write(path, write)
    except WriteError:
        raise
    except Exception as error:
        cause = os_cause(error)
        if cause is None:
            raise
        raise WriteError(cause.errno, _problem(path, cause)) from error


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
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


def os_cause(error: BaseException) -> OSError | None:
    """The first operating-system error with an error number in ``error``'s chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _problem(path: Path, cause: OSError) -> str:
    reason = cause.strerror or os.strerror(cause.errno)
    if cause.errno == errno.ENOSPC:
        return f"no space left on the device: {path} could not be written ({reason})"
    return f"{path} could not be written: {reason}"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_torch_save(path: str | os.PathLike, payload: object) -> Path:
    """:func:`atomic_write` of ``torch.save(payload)``."""
    import torch  # here: the downloads import this module, and the pytest plugin them

    return atomic_write(path, lambda file: torch.save(payload, file))
