"""Install a dataset from an archive without overwriting anything on disk."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..downloads import (
    ChecksumError,
    NoSpaceError,
    RemoteFile,
    check_record,
    digests,
    extract_tar,
    is_no_space,
    recorded_sha256,
    write_record,
)
from ..files import atomic_write_text
from ..locking import exclusive_lock

__all__ = ["Archive", "archive_verification", "installed_from"]

#: the suffix of a folder being extracted into (never taken for data)
_PARTIAL = ".gradood-partial"


@dataclass(frozen=True)
class Archive:
    """An archive at ``url`` whose folder (or files) ``member`` is the dataset.

    :param url: where to download it
    :param filename: the name it is saved under
    :param md5: its published checksum; ``None`` where none is published (then the dataset's
        counts check what it installs, and only then is its SHA-256 recorded, to be checked on
        every later use: :meth:`confirm`; a failed count check removes what it installed:
        :meth:`discard`)
    :param member: the folder inside the archive to install, e.g. ``"dtd/images"``
    :param size: its size in bytes, where known (for plans)
    """

    url: str
    filename: str
    md5: str | None
    member: str
    size: int | None = None

    @property
    def remote(self) -> RemoteFile:
        return RemoteFile(self.url, self.md5, self.size)

    def pending(self, folder: Path) -> list[tuple[RemoteFile, Path]]:
        """``[(remote file, where it goes)]`` if the archive is not in ``folder`` yet, else
        ``[]``."""
        path = Path(folder) / self.filename
        return [] if path.exists() else [(self.remote, path)]

    def install(
        self, destination: Path, progress: bool = True, archive_folder: Path | None = None
    ) -> None:
        """Make ``destination`` the archive's ``member`` folder.

        The archive is downloaded to ``archive_folder / filename`` (default: beside
        ``destination``; a copy already there is used if it passes the md5, or the recorded
        SHA-256 where no md5 is published, so that two datasets made from one archive share
        it), extracted into a fresh temporary folder beside ``destination`` (every member checked:
        :func:`gradood.downloads.extract_tar`) and ``member`` is moved into place; the rest of
        the extraction is removed, the archive kept. How it was installed is noted beside it
        (:func:`installed_from`).

        :raises FileExistsError: if ``destination`` exists, or a copy of the archive there fails
            its checksum (neither is ever overwritten)
        :raises FileNotFoundError: if the archive has no folder ``member``
        :raises gradood.downloads.UnsafeArchiveError: for a member landing outside
        """
        if destination.exists():
            raise FileExistsError(f"{destination} exists; it is never overwritten")
        archive_folder = destination.parent if archive_folder is None else Path(archive_folder)
        archive, sha256, downloaded = self.obtain(archive_folder, progress)
        destination.parent.mkdir(parents=True, exist_ok=True)
        installed = [destination]
        with self._extracted(
            archive, destination.parent, destination.name, installed, progress
        ) as staging:
            if staging is None:  # another process installed it while this one waited
                return
            extracted = staging / self.member
            if not extracted.is_dir():
                raise FileNotFoundError(
                    f"{archive} has no folder {self.member}; it holds "
                    f"{sorted(p.name for p in staging.iterdir())}"
                )
            os.rename(extracted, destination)
            self._note(destination, sha256, downloaded, archive)

    def install_files(self, folder: Path, names: Sequence[str], progress: bool = True) -> None:
        """Put the files ``names`` of the archive's ``member`` folder (``"."``: its top) into
        ``folder``, as :meth:`install` does.

        :raises FileExistsError: if one of them exists in ``folder`` (nothing is moved then)
        """
        existing = [str(folder / name) for name in names if (folder / name).exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} exist; they are never overwritten")
        archive, sha256, downloaded = self.obtain(folder, progress)
        installed = [folder / name for name in names]
        with self._extracted(
            archive, folder, Path(self.filename).stem, installed, progress
        ) as staging:
            if staging is None:  # another process installed them while this one waited
                return
            absent = [name for name in names if not (staging / self.member / name).is_file()]
            if absent:
                raise FileNotFoundError(f"{archive} has no files {absent} in {self.member}")
            for name in names:
                os.rename(staging / self.member / name, folder / name)
                self._note(folder / name, sha256, downloaded, archive)

    def obtain(self, folder: Path, progress: bool = True) -> tuple[Path, str | None, bool]:
        """The archive in ``folder`` (downloaded and checked if absent, checked if present), its
        SHA-256 where it was computed (``None`` for a fresh download with a published md5), and
        whether it was downloaded now. Without a published md5 no SHA-256 is recorded here
        (:meth:`confirm` does, once the content checks out).
        """
        folder.mkdir(parents=True, exist_ok=True)
        archive = folder / self.filename
        if not archive.exists():
            if self.md5 is not None:
                self.remote.fetch(archive, progress)  # checks the md5
                return archive, None, True
            sha256 = self.remote.fetch_unrecorded(archive, progress)
            return archive, sha256 or digests(archive)[1], True
        md5, sha256 = digests(archive)
        if self.md5 is not None and md5 != self.md5:
            raise FileExistsError(
                f"{archive} exists but fails its md5 {self.md5}; it is never overwritten: "
                "remove or replace it"
            )
        if self.md5 is None:
            try:
                check_record(archive, sha256)
            except ChecksumError as error:
                raise FileExistsError(f"{error}; it is never overwritten") from error
        return archive, sha256, False

    @contextmanager
    def _extracted(
        self, archive: Path, folder: Path, name: str, installed: Sequence[Path], progress: bool
    ) -> Iterator[Path | None]:
        """A temporary folder in ``folder`` (where its contents go: one device, so they move by
        renaming) holding ``archive``'s extraction, removed afterwards; ``None`` if another
        process installed all of ``installed`` from this archive meanwhile.

        One process at a time extracts for ``name`` there (a lock), so that the extractions
        left by a process that was killed can be removed first, and two processes that both
        found the dataset absent (two runs, or ranks of one) install it once.

        :raises FileExistsError: if some of ``installed`` appeared meanwhile, not from this
            archive
        """
        with exclusive_lock(folder / f".{name}.extracting.lock"):
            if any(path.exists() for path in installed):
                self._check_installed_meanwhile(installed)
                yield None
                return
            for stale in folder.glob(f".{glob.escape(name)}.*{_PARTIAL}"):
                shutil.rmtree(stale, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=_PARTIAL, dir=folder))
            try:
                extract_tar(archive, staging, progress)
                yield staging
            except OSError as error:
                if not is_no_space(error):
                    raise
                raise NoSpaceError(
                    f"no space left on the device of {folder} while extracting {archive}; the "
                    "partial extraction was removed: free space there and run again"
                ) from error
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _check_installed_meanwhile(self, installed: Sequence[Path]) -> None:
        notes = [installed_from(path) for path in installed]
        if not all(note is not None and note.get("url") == self.url for note in notes):
            present = ", ".join(str(path) for path in installed if path.exists())
            raise FileExistsError(
                f"{present} appeared while {self.filename} was being prepared, not installed "
                "from it; it is never overwritten"
            )

    def _note(self, installed: Path, sha256: str | None, downloaded: bool, archive: Path) -> None:
        note = {"url": self.url, "archive": self.filename, "md5": self.md5}
        if sha256 is not None:
            note["sha256"] = sha256
        if self.md5 is None and recorded_sha256(archive) is None:
            note.update(unchecked=True, downloaded=downloaded)
        _write_note(installed, note)

    def unchecked(self, installed: Path) -> bool:
        """Whether ``installed`` came from an archive without a published md5 whose SHA-256
        is not recorded yet: its content awaits its check (:meth:`confirm` or :meth:`discard`)."""
        note = installed_from(installed)
        return note is not None and note.get("url") == self.url and bool(note.get("unchecked"))

    def confirm(self, installed: Path, archive_folder: Path) -> None:
        """``installed`` checked out: record its archive's SHA-256 (checked on every later use)."""
        note = installed_from(installed)
        if note is None or not note.get("unchecked"):
            return
        write_record(Path(archive_folder) / self.filename, note["sha256"])
        note.pop("unchecked")
        note.pop("downloaded", None)
        _write_note(installed, note)

    def discard(self, installed: Path, archive_folder: Path) -> str:
        """``installed`` failed its check: remove it and its note, and the archive if it was
        downloaded for it (an archive put there by hand is kept); what was done, in words."""
        note = installed_from(installed) or {}
        if installed.is_dir():
            shutil.rmtree(installed)
        else:
            installed.unlink(missing_ok=True)
        _note_path(installed).unlink(missing_ok=True)
        archive = Path(archive_folder) / self.filename
        if note.get("downloaded") and recorded_sha256(archive) is None:
            archive.unlink(missing_ok=True)
            return (
                f"download it again: {installed} and the archive {archive} it was extracted "
                "from were removed (no SHA-256 was recorded), so the next download fetches it "
                "afresh"
            )
        return (
            f"remove the archive {archive} to have it downloaded afresh (it was there before "
            f"this download and is kept; {installed} was removed)"
        )


def archive_verification(archive: Archive | None, installed: Path) -> tuple[bool, str]:
    """Whether ``installed`` (a dataset's folder or file) was checked against a published
    checksum, and how, in words (see :meth:`gradood.protocols.source.DataSource.verification`)."""
    note = installed_from(installed)
    if archive is None:
        return False, "checked by count only (no published checksum)"
    if note is None:
        published = f"; its archive's published md5 {archive.md5} was never checked" * bool(
            archive.md5
        )
        return False, f"installed by hand, checked by count only{published}"
    if archive.md5 is not None and note.get("md5") == archive.md5:
        return True, f"installed by gradood from {archive.filename}, matching its published md5"
    if note.get("unchecked"):
        return False, (
            f"no published checksum: installed by gradood from {archive.filename}, whose SHA-256 "
            f"{note.get('sha256')} is recorded once the dataset's counts check out"
        )
    return False, (
        f"no published checksum: installed by gradood from {archive.filename}, whose SHA-256 "
        f"{note.get('sha256')} was recorded at its first download (checked on every later use)"
    )


def _write_note(installed: Path, note: dict) -> None:
    atomic_write_text(_note_path(installed), json.dumps(note, indent=1) + "\n")


def _note_path(installed: Path) -> Path:
    return installed.with_name(f".{installed.name}.installed.json")


def installed_from(installed: str | os.PathLike) -> dict | None:
    """How ``installed`` (a folder or file) was installed by :class:`Archive`: its ``url``,
    ``archive``, published ``md5`` (or ``None``) and ``sha256``; ``None`` if not by gradood
    (e.g. by hand)."""
    note = _note_path(Path(installed))
    if not note.is_file():
        return None
    return json.loads(note.read_text(encoding="utf-8"))
