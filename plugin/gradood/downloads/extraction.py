"""Extract a tar archive (any compression tarfile reads) with every member checked first.

A member that would land outside the destination is refused with its name, before anything is
extracted: an absolute path, a ``..`` component, a symbolic or hard link pointing out (or to
an absolute path), a device file or FIFO, or any other special member. During extraction each
path is checked again on the file system (``realpath``, which follows links extracted before),
and tarfile's ``data`` filter is applied where the Python has it (3.10.12, 3.11.4, 3.12 and
later); older Pythons get the same checks from this module and no file attributes (owner,
mode bits) from the archive.
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

__all__ = ["ArchiveError", "UnsafeArchiveError", "extract_tar", "is_no_space"]


class ArchiveError(ValueError):
    """An archive that cannot be read (truncated or not a tar archive); names the file."""


class UnsafeArchiveError(ArchiveError):
    """An archive member that would land outside the destination; names the archive, the
    member and why."""


def extract_tar(
    archive: str | os.PathLike, destination: str | os.PathLike, progress: bool = False
) -> None:
    """Extract ``archive`` into the folder ``destination`` (created if needed), after checking
    every member; with ``progress``, a progress bar over the members.

    :raises UnsafeArchiveError: for the first member that would land outside ``destination``
        (nothing is extracted when the member's own header shows it)
    :raises ArchiveError: if the archive cannot be read
    :raises OSError: from the file system, e.g. ``ENOSPC`` (the caller removes the extraction)
    """
    archive, destination = Path(archive), Path(destination)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _refuse_if_unsafe(archive, member)
            destination.mkdir(parents=True, exist_ok=True)
            _refuse_if_no_space(archive, members, destination)
            bar = tqdm(members, desc=f"extracting {archive.name}", disable=not progress)
            for member in bar:
                _refuse_if_outside(archive, member, destination)
                _extract(tar, member, destination)
    except (tarfile.ReadError, EOFError, zlib.error) as error:
        raise ArchiveError(
            f"{archive} cannot be read as a tar archive (truncated or corrupt?): {error}"
        ) from error
    except tarfile.TarError as error:  # the data filter's refusals (FilterError) among them
        raise UnsafeArchiveError(f"{archive}: {error}; extraction stopped") from error


def _refuse_if_unsafe(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse ``member`` from its header alone."""
    why = _why_unsafe(member)
    if why is not None:
        raise UnsafeArchiveError(
            f"{archive}: member {member.name!r} {why}; the archive is refused and nothing was "
            "extracted"
        )


def _why_unsafe(member: tarfile.TarInfo) -> str | None:
    if _escapes(member.name):
        return "has an absolute path or a '..' component"
    if member.issym():
        if os.path.isabs(member.linkname) or member.linkname.startswith("\\"):
            return f"is a symbolic link to the absolute path {member.linkname!r}"
        target = os.path.normpath(os.path.join(os.path.dirname(member.name), member.linkname))
        if target == ".." or target.startswith("../"):
            return f"is a symbolic link pointing out of the destination ({member.linkname!r})"
    elif member.islnk():
        if _escapes(member.linkname):
            return f"is a hard link pointing out of the destination ({member.linkname!r})"
    elif member.isdev():
        return "is a device file or FIFO"
    elif not (member.isfile() or member.isdir()):
        return f"is a special member (tar type {member.type!r})"
    return None


def _escapes(name: str) -> bool:
    """Whether a member name is absolute (POSIX or Windows style) or has a ``..`` part."""
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    return ".." in PurePosixPath(name.replace("\\", "/")).parts


def _refuse_if_no_space(archive: Path, members: list[tarfile.TarInfo], destination: Path) -> None:
    """Raise ``ENOSPC`` before extracting if the members' sizes exceed the free space."""
    needed = sum(member.size for member in members if member.isfile())
    free = shutil.disk_usage(destination).free
    if needed > free:
        raise OSError(
            errno.ENOSPC,
            f"extracting {archive} needs {needed:,} bytes, {free:,} are free in {destination}",
        )


def _refuse_if_outside(archive: Path, member: tarfile.TarInfo, destination: Path) -> None:
    """Refuse ``member`` if its path, or its link's target, resolves outside ``destination``
    on the file system as extracted so far (links followed)."""
    root = os.path.realpath(destination)
    paths = [os.path.join(destination, member.name)]
    if member.issym():
        paths.append(os.path.join(destination, os.path.dirname(member.name), member.linkname))
    elif member.islnk():
        paths.append(os.path.join(destination, member.linkname))
    for path in paths:
        resolved = os.path.realpath(path)
        if resolved != root and not resolved.startswith(root + os.sep):
            raise UnsafeArchiveError(
                f"{archive}: member {member.name!r} resolves outside the destination (to "
                f"{resolved}) through links extracted before it; extraction stopped"
            )


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, destination: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        tar.extract(member, destination, filter="data")
    else:  # the checks above stand in for the filter; no owner or mode bits from the archive
        tar.extract(member, destination, set_attrs=False)


def is_no_space(error: OSError) -> bool:
    """Whether ``error`` says the disk is full."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
