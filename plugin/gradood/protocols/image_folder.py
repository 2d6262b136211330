"""Datasets read as torchvision ``ImageFolder``s (class subfolders), checked by counting files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torchvision.datasets.folder as tv_folder
from torchvision.datasets import ImageFolder

from ..downloads import RemoteFile
from .archives import Archive, archive_verification
from .errors import read_image
from .expected import Expected
from .source import DataSource, count_problem

__all__ = ["ImageFolderSource"]


class ImageFolderKeepingEmptyClasses(ImageFolder):
    """``ImageFolder`` that keeps class folders without images as classes, so that an incomplete
    dataset is reported by its counts rather than by torchvision's error.

    torchvision's ``allow_empty=True`` does the same from 0.18 on (pytorch/vision#8311); this
    works on every supported torchvision. Samples and their order are ``ImageFolder``'s: each
    class folder is scanned by torchvision's own ``make_dataset``, classes in sorted order.
    An image that cannot be decoded raises :class:`ImageReadError` naming the dataset
    (``name``), the index and the file.
    """

    def __init__(self, root: str, name: str, **kwargs: Any):
        self.name = name
        super().__init__(root, **kwargs)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, target = self.samples[index]
        sample = read_image(self.loader, path, self.name, index)
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    @staticmethod
    def make_dataset(
        directory: str,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = True,  # passed by torchvision >= 0.18; empty classes are kept anyway
    ) -> list[tuple[str, int]]:
        samples: list[tuple[str, int]] = []
        for name in sorted(class_to_idx):
            try:
                samples += tv_folder.make_dataset(
                    directory, {name: class_to_idx[name]}, extensions, is_valid_file
                )
            except FileNotFoundError:  # torchvision's error for a class folder without images
                continue
        return samples


def _has_subfolder(folder: Path) -> bool:
    with os.scandir(folder) as entries:  # closed also when any() stops early
        return any(entry.is_dir() for entry in entries)


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
        loader: Callable[[str], Any] | None = None,
    ) -> ImageFolderKeepingEmptyClasses:
        folder = self.path(root)
        if not folder.is_dir():
            raise self.missing(root, expected.images, 0, "not found")
        if not _has_subfolder(folder):
            raise self.missing(
                root,
                expected.images,
                0,
                "no class subfolder (images are read from subfolders, as ImageFolder does)",
            )
        dataset = ImageFolderKeepingEmptyClasses(
            str(folder),
            self.name,
            transform=transform,
            target_transform=target_transform,
            **({} if loader is None else {"loader": loader}),
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

    def download(self, root: Path, progress: bool = True) -> None:
        if self.archive is None:
            super().download(root)
            return
        # archives are kept in the data root: one archive (DTD) makes a folder of two layouts
        self.archive.install(Path(root) / self.installed_as, progress, archive_folder=Path(root))

    def unchecked_download(self, root: Path) -> bool:
        return self.archive is not None and self.archive.unchecked(Path(root) / self.installed_as)

    def confirm_download(self, root: Path) -> None:
        self.archive.confirm(Path(root) / self.installed_as, Path(root))

    def discard_download(self, root: Path) -> str:
        return self.archive.discard(Path(root) / self.installed_as, Path(root))

    def downloads(self, root: Path) -> list[tuple[RemoteFile, Path]]:
        if self.archive is None or self.is_present(root):
            return []
        return self.archive.pending(Path(root))

    def verification(self, root: Path) -> tuple[bool, str]:
        return archive_verification(self.archive, Path(root) / self.installed_as)
