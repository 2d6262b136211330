"""Checksums of downloaded files: the published md5, and the SHA-256 recorded beside a file
that comes without a published checksum (trust on first download, checked on every later use).

A record is a text file ``<file>.sha256`` in ``sha256sum``'s format (``<hex digest>  <name>``),
so ``sha256sum -c`` checks it too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..files import atomic_write_text

__all__ = [
    "ChecksumError",
    "check_record",
    "digests",
    "record_file",
    "recorded_sha256",
    "write_record",
]

_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file does not match its published md5 or its recorded SHA-256; the message names the
    file, both digests and where the expected one comes from."""


def digests(path: str | os.PathLike) -> tuple[str, str]:
    """The hex ``(md5, sha256)`` of the file at ``path``, from one read."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def record_file(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of ``path`` is recorded: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(f"{path.name}.sha256")


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The SHA-256 recorded for ``path``, or ``None`` where there is no record.

    :raises ChecksumError: if the record is not a SHA-256 line
    """
    record = record_file(path)
    if not record.is_file():
        return None
    fields = record.read_text(encoding="utf-8").split()
    if not fields or len(fields[0]) != 64 or any(c not in "0123456789abcdef" for c in fields[0]):
        raise ChecksumError(f"{record} is not a SHA-256 record ('<64 hex digits>  <file name>')")
    return fields[0]


def write_record(path: str | os.PathLike, sha256: str) -> Path:
    """Record ``sha256`` for ``path`` (atomically); an existing record is never replaced.

    :raises FileExistsError: if a record with another digest exists
    """
    path = Path(path)
    existing = recorded_sha256(path)
    if existing is not None and existing != sha256:
        raise FileExistsError(f"{record_file(path)} records another SHA-256; it is never replaced")
    return atomic_write_text(record_file(path), f"{sha256}  {path.name}\n")


def check_record(path: str | os.PathLike, sha256: str, what: str | None = None) -> None:
    """Check ``sha256`` (of ``path``'s content, or of ``what`` about to become ``path``) against
    the record of ``path``, where there is one.

    :raises ChecksumError: naming both digests and the record
    """
    expected = recorded_sha256(path)
    if expected is not None and expected != sha256:
        raise ChecksumError(
            f"{what or path} has SHA-256 {sha256}, but {record_file(path)} (recorded at its "
            f"first download) says {expected}: the file changed since, or the server serves "
            "another one"
        )
