"""Whether a checkpoint file can be read, found cheaply, so that the plan promises only what the
run can do: a file that does not load is "unreadable", never "found" or "will resume training".

A small file (a ResNet-20 checkpoint, about 1 MB) is read whole, as the run reads it. A large
one (the 170 MB BiT-S-R101x1) gets a header check only: the format torch writes since 1.6 is a
zip archive, whose central directory at the end of the file must be whole and list the
pickled ``data.pkl``; the legacy format starts with torch's magic number, pickled. A file
truncated in its legacy format's body passes this check; the load then says so.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["checkpoint_problem", "read_resnet20"]

_ZIP = b"PK\x03\x04"
#: torch's legacy format: pickle protocol 2, then the magic number as a 10-byte long
_LEGACY = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def checkpoint_problem(path: Path, read_whole: bool) -> str | None:
    """Why the checkpoint at ``path`` (a file) cannot be loaded, in words, or ``None``.

    :param read_whole: read it as a ResNet-20 checkpoint of :mod:`gradood.models.train`
        (``gradood.models.resnet20.read_checkpoint``); else check its header only
    """
    return read_resnet20(path)[1] if read_whole else _header_problem(path)


def read_resnet20(path: Path) -> tuple[Mapping | None, str | None]:
    """The content of the ResNet-20 checkpoint at ``path`` (a file), as
    ``gradood.models.resnet20.read_checkpoint`` returns it, and ``None``; or ``None`` and why
    it cannot be loaded, in words."""
    from ..models.resnet20 import read_checkpoint

    try:
        return read_checkpoint(path), None
    except ValueError as error:
        return None, str(error).replace(f"'{path}'", "it")


def _header_problem(path: Path) -> str | None:
    with open(path, "rb") as file:
        head = file.read(len(_LEGACY))
    if not head:
        return "it is empty"
    if head.startswith(_LEGACY):
        return None
    if not head.startswith(_ZIP):
        return "it is not a torch file (neither a zip archive nor torch's legacy format)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        return f"it is a zip archive that cannot be read, truncated? ({error})"
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return "it is a zip archive without the data.pkl of torch's format"
    return None
