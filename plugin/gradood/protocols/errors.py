"""What is wrong with a dataset on disk: :class:`MissingDataset` and the error that carries it;
:class:`ImageReadError`, an image that cannot be decoded."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DatasetNotFoundError", "ImageReadError", "MissingDataset", "read_image"]


@dataclass(frozen=True)
class MissingDataset:
    """A dataset of a protocol that is absent, incomplete or corrupted under the data root.

    ``found`` and ``expected`` count ``unit`` (images, class folders, files); ``found`` is
    ``None`` where the files are there but could not be counted (e.g. a failed checksum).
    ``source`` says where to get the dataset.
    """

    name: str
    path: Path
    found: int | None
    expected: int
    unit: str
    problem: str
    source: str

    def __str__(self) -> str:
        if self.found is None:
            counts = f"expected {self.expected:,} {self.unit}, found files that fail the check"
        else:
            counts = f"found {self.found:,} {self.unit}, expected {self.expected:,}"
        return f"{self.name}: {self.problem} at {self.path}: {counts}. How to get it: {self.source}"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is absent, incomplete or corrupted; ``.missing`` (and the attributes ``path``,
    ``found``, ``expected``, ``source``) say what and where, and how to get it."""

    def __init__(self, missing: MissingDataset):
        super().__init__(str(missing))
        self.missing = missing

    @property
    def path(self) -> Path:
        return self.missing.path

    @property
    def found(self) -> int | None:
        return self.missing.found

    @property
    def expected(self) -> int:
        return self.missing.expected

    @property
    def source(self) -> str:
        return self.missing.source

    def __reduce__(self):
        return type(self), (self.missing,)


class ImageReadError(OSError):
    """An image of a dataset that cannot be read or decoded (e.g. a truncated JPEG); the
    message names the dataset, the sample's index and the file."""


def read_image(
    loader: Callable[[str], Any], path: str | os.PathLike, dataset: str, index: int
) -> Any:
    """``loader(path)``; its errors become :class:`ImageReadError` naming ``dataset``, ``index``
    and ``path``."""
    try:
        return loader(os.fspath(path))
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... on bad bytes
        raise ImageReadError(
            f"cannot read image {index} of {dataset} ('{os.fspath(path)}'): "
            f"{type(error).__name__}: {error}"
        ) from error
