"""Datasets read as torchvision ``ImageFolder``s (class subfolders), checked by counting files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets import ImageFolder

from .archives import Archive
from .expected import Expected
from .source import DataSource, count_problem

__all__ = ["ImageFolderSource"]


class ImageFolderSource(DataSource):
    """An image folder at ``root / relpath``: one subfolder per class, images found the way
    ``ImageFolder`` finds them (recursively, by extension), labelled by sorted class index.

    The check counts the class folders and images of that same scan, so the count checked is
    exactly the number of samples served.

    :param relpath: the folder, relative to the data root
    :param archive: where to download it from, if it can be downloaded
    :param installed_as: the folder, relative to the data root, that :meth:`download` creates
        from the archive (``relpath`` or a parent of it); defaults to ``relpath``
    """

    def __init__(
        self,
        name: str,
        relpath: str,
        how_to_get: str,
        archive: Archive | None = None,
        installed_as: str | None = None,
    ):
        super().__init__(name, how_to_get)
        self.relpath = relpath
        self.archive = archive
        self.installed_as = installed_as or relpath

    def path(self, root: Path) -> Path:
        return Path(root) / self.relpath

    def open(
        self,
        root: Path,
        expected: Expected,
        *,
        transform: Callable | None,
        target_transform: Callable | None,
        verify_checksums: bool,
    ) -> ImageFolder:
        folder = self.path(root)
        if not folder.is_dir():
            raise self.missing(root, expected.images, 0, "not found")
        if not any(entry.is_dir() for entry in os.scandir(folder)):
            raise self.missing(
                root,
                expected.images,
                0,
                "no class subfolder (images are read from subfolders, as ImageFolder does)",
            )
        dataset = ImageFolder(
            str(folder), transform=transform, target_transform=target_transform, allow_empty=True
        )
        if expected.classes is not None and len(dataset.classes) != expected.classes:
            found = len(dataset.classes)
            problem = count_problem(found, expected.classes)
            raise self.missing(root, expected.classes, found, problem, "class folders")
        if len(dataset.samples) != expected.images:
            found = len(dataset.samples)
            raise self.missing(root, expected.images, found, count_problem(found, expected.images))
        return dataset

    @property
    def can_download(self) -> bool:
        return self.archive is not None

    def is_present(self, root: Path) -> bool:
        return (Path(root) / self.installed_as).exists()

    def download(self, root: Path) -> None:
        if self.archive is None:
            super().download(root)
            return
        self.archive.install(Path(root) / self.installed_as)
