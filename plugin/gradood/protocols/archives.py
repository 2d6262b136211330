"""Install a dataset from an archive without overwriting anything on disk."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import torchvision.datasets.utils as tv_utils

__all__ = ["Archive"]


@dataclass(frozen=True)
class Archive:
    """An archive at ``url`` whose folder ``member`` is the dataset.

    :param url: where to download it
    :param filename: the name it is saved under, beside the dataset's folder
    :param md5: its published checksum; ``None`` where none is published (then the archive is
        not verified, and only the dataset's image count checks the result)
    :param member: the folder inside the archive to install, e.g. ``"dtd/images"``
    """

    url: str
    filename: str
    md5: str | None
    member: str

    def install(self, destination: Path) -> None:
        """Make ``destination`` the archive's ``member`` folder.

        The archive is downloaded to ``destination.parent / filename`` (a copy already there is
        used if it passes the md5, or as is where no md5 is known), extracted into a fresh
        temporary folder beside ``destination`` and ``member`` is moved into place; the rest
        of the extraction is removed, the archive kept.

        :raises FileExistsError: if ``destination`` exists, or a copy of the archive there fails
            the md5 (neither is ever overwritten)
        :raises FileNotFoundError: if the archive has no folder ``member``
        """
        if destination.exists():
            raise FileExistsError(f"{destination} exists; it is never overwritten")
        folder = destination.parent
        folder.mkdir(parents=True, exist_ok=True)
        archive = folder / self.filename
        if archive.exists():
            if self.md5 is not None and not tv_utils.check_integrity(str(archive), self.md5):
                raise FileExistsError(
                    f"{archive} exists but fails its md5 {self.md5}; it is never overwritten: "
                    "remove or replace it"
                )
        else:
            self._download(archive)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=folder))
        try:
            tv_utils.extract_archive(str(archive), str(staging))
            extracted = staging / self.member
            if not extracted.is_dir():
                raise FileNotFoundError(
                    f"{archive} has no folder {self.member}; it holds "
                    f"{sorted(p.name for p in staging.iterdir())}"
                )
            os.rename(extracted, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _download(self, archive: Path) -> None:
        """Download to a temporary name (md5-checked by torchvision when known), then rename."""
        partial = archive.with_name(f".{archive.name}.{uuid.uuid4().hex}.part")
        try:
            tv_utils.download_url(self.url, str(archive.parent), partial.name, self.md5)
            os.rename(partial, archive)
        finally:
            partial.unlink(missing_ok=True)
