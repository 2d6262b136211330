"""The CIFAR protocols' Places365 set: a fixed, reproducible sample of the Places365-Standard
test images.

The paper samples 10,000 of the 328,500 test images (900 per category) without publishing the
list. gradood draws its own sample, defined by the file names alone so that anyone can redraw
it with any tool: the names listed in torchvision's ``places365_test.txt`` (md5-checked), each
keyed by the hex SHA-256 digest of ``f"{seed}:{name}"`` (UTF-8), the ``size`` smallest keys
taken, served in file-list order. The default seed is :data:`PLACES365_SEED`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urljoin

import torchvision.datasets.utils as tv_utils
from torch.utils.data import Subset
from torchvision.datasets import Places365
from torchvision.datasets.folder import IMG_EXTENSIONS

from .expected import Expected
from .source import DataSource, count_problem

__all__ = ["PLACES365_SEED", "Places365SampleSource", "sample_places365"]

#: the seed of the CIFAR protocols' Places365 sample
PLACES365_SEED = 0


class Places365WithoutChecksums(Places365):
    """torchvision's Places365 accepting list files that do not match the published md5s: for
    miniatures only, which state ``verify_checksums=False``."""

    _CATEGORIES_META = (Places365._CATEGORIES_META[0], None)
    _FILE_LIST_META = {split: (f, None) for split, (f, _) in Places365._FILE_LIST_META.items()}


def sample_places365(names: Sequence[str], size: int, seed: int = PLACES365_SEED) -> list[int]:
    """Indices, ascending, of the ``size`` names with the smallest SHA-256 of ``f"{seed}:{name}"``.

    The sample depends only on the set of names (not their order, not any library's random
    number generator).

    :raises ValueError: if ``size`` exceeds the number of names, or names repeat
    """
    if len(set(names)) != len(names):
        raise ValueError("the names to sample from repeat")
    if not 0 < size <= len(names):
        raise ValueError(f"cannot sample {size} of {len(names)} names")
    keys = [hashlib.sha256(f"{seed}:{name}".encode()).hexdigest() for name in names]
    return sorted(sorted(range(len(names)), key=keys.__getitem__)[:size])


class Places365SampleSource(DataSource):
    """A sample of the Places365-Standard test images (256 x 256 versions) at
    ``root / "places365"``, in torchvision's layout: ``categories_places365.txt``,
    ``places365_test.txt`` and ``test_256/``.

    ``Expected.drawn_from`` is the number of test images (listed, and in ``test_256/``),
    ``Expected.images`` the sample size.
    """

    folder = "places365"
    split = "test"

    def __init__(self, name: str, seed: int = PLACES365_SEED):
        devkit, _ = Places365._DEVKIT_META["standard"]
        images, _ = Places365._IMAGES_META[(self.split, True)]
        how_to_get = (
            f"torchvision.datasets.Places365(root / {self.folder!r}, split={self.split!r}, "
            f"small=True, download=True), or download=True here ({Places365._BASE_URL}{devkit} "
            f"and {Places365._BASE_URL}{images}, md5-checked by torchvision)"
        )
        super().__init__(name, how_to_get)
        self.seed = seed

    def path(self, root: Path) -> Path:
        return Path(root) / self.folder

    def _lists(self) -> list[tuple[str, str]]:
        """The (file, md5) of the category list and the test file list."""
        return [Places365._CATEGORIES_META, Places365._FILE_LIST_META[self.split]]

    def _images_dir(self, root: Path) -> Path:
        return self.path(root) / Places365._IMAGES_META[(self.split, True)][0].removesuffix(".tar")

    def open(
        self,
        root: Path,
        expected: Expected,
        *,
        transform: Callable | None,
        target_transform: Callable | None,
        verify_checksums: bool,
    ) -> Subset:
        if expected.drawn_from is None:
            raise ValueError(f"{self.name}: Expected.drawn_from (the test set size) is required")
        folder = self.path(root)
        absent = [name for name, _ in self._lists() if not (folder / name).is_file()]
        if absent:
            problem = f"not found (missing {', '.join(absent)})"
            raise self.missing(root, expected.drawn_from, 0, problem)
        cls = Places365 if verify_checksums else Places365WithoutChecksums
        try:
            dataset = cls(
                str(folder),
                split=self.split,
                small=True,
                transform=transform,
                target_transform=target_transform,
            )
        except RuntimeError as error:
            problem = f"corrupted or another version (torchvision's md5 check: {error})"
            raise self.missing(root, expected.drawn_from, None, problem) from error
        self._check_test_set(root, expected.drawn_from, len(dataset.imgs))
        images_dir = Path(dataset.images_dir)
        names = [os.path.relpath(path, images_dir) for path, _ in dataset.imgs]
        indices = sample_places365(names, expected.images, self.seed)
        found = sum((images_dir / names[i]).is_file() for i in indices)
        if found != expected.images:
            problem = "sampled images missing"
            raise self.missing(root, expected.images, found, problem, path=images_dir)
        return Subset(dataset, indices)

    def _check_test_set(self, root: Path, expected: int, listed: int) -> None:
        """The file list and the image folder both hold the whole test set."""
        file_list = self.path(root) / self._lists()[1][0]
        if listed != expected:
            problem = count_problem(listed, expected)
            raise self.missing(root, expected, listed, problem, "listed images", file_list)
        images_dir = self._images_dir(root)
        if not images_dir.is_dir():
            raise self.missing(root, expected, 0, "not found", path=images_dir)
        found = _count_images(images_dir)
        if found != expected:
            raise self.missing(
                root, expected, found, count_problem(found, expected), path=images_dir
            )

    @property
    def can_download(self) -> bool:
        return True

    def is_present(self, root: Path) -> bool:
        folder = self.path(root)
        lists = all((folder / name).exists() for name, _ in self._lists())
        return lists and self._images_dir(root).exists()

    def download(self, root: Path) -> None:
        folder = self.path(root)
        refused = []
        if not all(tv_utils.check_integrity(str(folder / f), md5) for f, md5 in self._lists()):
            # torchvision extracts the devkit's lists into the folder, over any there
            lists = [Places365._CATEGORIES_META[0]]
            lists += [f for f, _ in Places365._FILE_LIST_META.values()]
            refused += [folder / name for name in lists if (folder / name).exists()]
            refused += self._failing(folder, *Places365._DEVKIT_META["standard"])
        if not self._images_dir(root).exists():
            refused += self._failing(folder, *Places365._IMAGES_META[(self.split, True)])
        if refused:
            raise FileExistsError(
                f"{self.name}: downloading would overwrite {', '.join(map(str, refused))}, and "
                "download=True never overwrites files: move them away first"
            )
        if not all(tv_utils.check_integrity(str(folder / f), md5) for f, md5 in self._lists()):
            self._fetch(folder, *Places365._DEVKIT_META["standard"])
        if not self._images_dir(root).exists():
            self._fetch(folder, *Places365._IMAGES_META[(self.split, True)])

    @staticmethod
    def _fetch(folder: Path, archive: str, md5: str) -> None:
        url = urljoin(Places365._BASE_URL, archive)
        tv_utils.download_and_extract_archive(url, str(folder), filename=archive, md5=md5)

    @staticmethod
    def _failing(folder: Path, archive: str, md5: str) -> list[Path]:
        """``[folder / archive]`` if it exists and fails ``md5``, else ``[]``."""
        path = folder / archive
        return [path] if path.exists() and not tv_utils.check_integrity(str(path), md5) else []


def _count_images(folder: Path) -> int:
    """Image files directly in ``folder`` (by extension, as torchvision recognizes them)."""
    with os.scandir(folder) as entries:
        return sum(e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS) for e in entries)
