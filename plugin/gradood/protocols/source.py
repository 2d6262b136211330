"""One dataset of a protocol: where it lives under the data root, how it is checked and opened,
and how to get it."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..downloads import RemoteFile
from .errors import DatasetNotFoundError, MissingDataset
from .expected import Expected

__all__ = ["DataSource", "count_problem"]


class DataSource(ABC):
    """A dataset at a fixed place under a protocol's data root.

    :meth:`open` checks it (counting files, never decoding images) and returns it, or raises
    :class:`~gradood.protocols.DatasetNotFoundError`. :meth:`download` fetches it, only where
    nothing of it is on disk yet.

    :param name: the dataset's name in the protocol (an entry of ``ood_names`` for OOD sets)
    :param how_to_get: where to get it, for error messages
    """

    def __init__(self, name: str, how_to_get: str):
        self.name = name
        self.how_to_get = how_to_get

    @abstractmethod
    def path(self, root: Path) -> Path:
        """The folder or file the dataset is read from."""

    @abstractmethod
    def open(
        self,
        root: Path,
        expected: Expected,
        *,
        transform: Callable | None,
        target_transform: Callable | None,
        verify_checksums: bool,
        loader: Callable[[str], Any] | None = None,
    ) -> Dataset:
        """The dataset, checked against ``expected``.

        :param loader: how image files are read (path to image), for sources that read image
            files; ``None``: as PIL images. Sources of decoded arrays yield PIL images

        :raises DatasetNotFoundError: if it is absent, incomplete or fails its checksums
        """

    @property
    def can_download(self) -> bool:
        """Whether :meth:`download` can fetch the dataset."""
        return False

    def is_present(self, root: Path) -> bool:
        """Whether anything of the dataset is on disk (then :meth:`download` leaves it alone)."""
        return self.path(root).exists()

    def download(self, root: Path, progress: bool = True) -> None:
        """Fetch the dataset into ``root`` (a progress bar per file); never overwrites a file.

        :raises FileExistsError: if a file the download would write exists and fails its check
        :raises gradood.downloads.DownloadError: if a download fails (HTTP error, HTML page,
            failed checksum, no space left)
        """
        raise NotImplementedError(f"{self.name} cannot be downloaded: {self.how_to_get}")

    def check_download(self, root: Path, expected: Expected) -> None:
        """Check what :meth:`download` installed without a published checksum by ``expected``'s
        counts: if they check out, its archive's SHA-256 is recorded (and checked on every later
        use); if not, what it installed is removed, so that the next download starts afresh.
        Nothing to do for data checked by a published checksum.

        :raises DatasetNotFoundError: if the counts fail, saying what was removed
        """
        if not self.unchecked_download(root):
            return
        try:
            self.open(root, expected, transform=None, target_transform=None, verify_checksums=False)
        except DatasetNotFoundError as error:
            removed = self.discard_download(root)
            missing = dataclasses.replace(
                error.missing,
                problem=f"{error.missing.problem} as downloaded (no published checksum)",
                source=f"{removed}; or {error.missing.source}",
            )
            raise DatasetNotFoundError(missing) from error
        self.confirm_download(root)

    def unchecked_download(self, root: Path) -> bool:
        """Whether :meth:`download` installed data under ``root`` that awaits
        :meth:`check_download`."""
        return False

    def confirm_download(self, root: Path) -> None:
        """The unchecked download checked out (:meth:`check_download`)."""
        raise NotImplementedError

    def discard_download(self, root: Path) -> str:
        """Remove the unchecked download that failed its counts; what was removed, in words."""
        raise NotImplementedError

    def downloads(self, root: Path) -> list[tuple[RemoteFile, Path]]:
        """The files :meth:`download` would fetch now, with where each goes (``[]`` if the
        dataset is present or cannot be downloaded)."""
        return []

    def verification(self, root: Path) -> tuple[bool, str]:
        """Whether the data under ``root`` was checked against a published checksum, and how,
        in words."""
        return False, "checked by count only (no published checksum)"

    def missing(
        self,
        root: Path,
        expected: int,
        found: int | None,
        problem: str,
        unit: str = "images",
        path: Path | None = None,
    ) -> DatasetNotFoundError:
        """The error for this dataset (to be raised by the caller)."""
        return DatasetNotFoundError(
            MissingDataset(
                name=self.name,
                path=path if path is not None else self.path(root),
                found=found,
                expected=expected,
                unit=unit,
                problem=problem,
                source=self.how_to_get,
            )
        )


def count_problem(found: int, expected: int) -> str:
    """How a count differs from the expected one, in words."""
    return "incomplete" if found < expected else "more than the protocol uses"
