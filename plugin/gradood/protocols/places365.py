"""The CIFAR protocols' Places365 set: a fixed, reproducible sample of the Places365-Standard
test images.

The paper samples 10,000 of the 328,500 test images (900 per category) without publishing the
list. gradood draws its own sample, defined by the file names alone so that anyone can redraw
it with any tool: the names listed in ``places365_test.txt`` (md5-checked), each keyed by the
hex SHA-256 digest of ``f"{seed}:{name}"`` (UTF-8), the ``size`` smallest keys taken, served in
file-list order. The default seed is :data:`PLACES365_SEED`.

The test set is read by :class:`Places365TestImages`, not by torchvision's ``Places365``: that
class reads the test split only from torchvision 0.22 on. The layout, archives and checksums are
the ones torchvision's class uses.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import torchvision.datasets.utils as tv_utils
from torch.utils.data import Subset
from torchvision.datasets import VisionDataset
from torchvision.datasets.folder import IMG_EXTENSIONS, pil_loader

from ..downloads import RemoteFile
from .archives import Archive, archive_verification
from .errors import read_image
from .expected import Expected
from .source import DataSource, count_problem

__all__ = [
    "PLACES365_BASE_URL",
    "PLACES365_CATEGORIES",
    "PLACES365_DEVKIT",
    "PLACES365_SEED",
    "PLACES365_TEST_IMAGES",
    "PLACES365_TEST_LIST",
    "Places365SampleSource",
    "Places365TestImages",
    "sample_places365",
]

#: the seed of the CIFAR protocols' Places365 sample
PLACES365_SEED = 0

#: where the Places365 archives are published
PLACES365_BASE_URL = "http://data.csail.mit.edu/places/places365/"
#: (archive, md5) of the Places365-Standard devkit, which holds the list files
PLACES365_DEVKIT = ("filelist_places365-standard.tar", "35a0585fee1fa656440f3ab298f8479c")
#: (archive, md5) of the 256 x 256 test images, extracted to ``test_256/``
PLACES365_TEST_IMAGES = ("test_256.tar", "f532f6ad7b582262a2ec8009075e186b")
#: (file, md5) of the category list (in the devkit)
PLACES365_CATEGORIES = ("categories_places365.txt", "06c963b85866bd0649f97cb43dd16673")
#: (file, md5) of the test file list (in the devkit): one image file name per line
PLACES365_TEST_LIST = ("places365_test.txt", "2fce8233fe493576d724142e45d93653")

#: the folder of the test images, in ``test_256.tar`` and under the Places365 folder
_TEST_FOLDER = PLACES365_TEST_IMAGES[0].removesuffix(".tar")


class Places365TestImages(VisionDataset):
    """The images named in ``root / "places365_test.txt"``, read from ``root / "test_256"`` as
    RGB PIL images (or by ``loader``), in file-list order; the test set is unlabelled, so the
    target is ``None`` (before ``target_transform``).

    ``imgs`` holds ``(path, None)`` per image, as torchvision's ``Places365`` does.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        loader: Callable[[str], Any] = pil_loader,
    ):
        super().__init__(str(root), transform=transform, target_transform=target_transform)
        self.loader = loader
        self.images_dir = os.path.join(self.root, _TEST_FOLDER)
        self.names = _read_names(Path(self.root) / PLACES365_TEST_LIST[0])
        self.imgs: list[tuple[str, None]] = [
            (os.path.join(self.images_dir, name), None) for name in self.names
        ]

    def __len__(self) -> int:
        return len(self.imgs)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, target = self.imgs[index]
        image = read_image(self.loader, path, "the Places365 test set", index)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def _read_names(file_list: Path) -> list[str]:
    """The file names of a Places365 test list: the first field of every non-blank line."""
    with open(file_list, encoding="utf-8") as lines:
        return [fields[0] for fields in map(str.split, lines) if fields]


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
    ``places365_test.txt`` (both md5-checked) and ``test_256/``.

    ``Expected.drawn_from`` is the number of test images (listed, and in ``test_256/``),
    ``Expected.images`` the sample size.
    """

    folder = "places365"

    def __init__(self, name: str, seed: int = PLACES365_SEED):
        devkit_url = urljoin(PLACES365_BASE_URL, PLACES365_DEVKIT[0])
        images_url = urljoin(PLACES365_BASE_URL, PLACES365_TEST_IMAGES[0])
        how_to_get = (
            f"{devkit_url} and {images_url} (md5-checked), extracted to "
            f"root / {self.folder!r}, or torchvision.datasets.Places365(root / {self.folder!r}, "
            "split='test', small=True, download=True) with torchvision >= 0.22"
        )
        super().__init__(name, how_to_get)
        self.seed = seed

    def path(self, root: Path) -> Path:
        return Path(root) / self.folder

    @staticmethod
    def _lists() -> list[tuple[str, str]]:
        """The (file, md5) of the category list and the test file list."""
        return [PLACES365_CATEGORIES, PLACES365_TEST_LIST]

    def _images_dir(self, root: Path) -> Path:
        return self.path(root) / _TEST_FOLDER

    def open(
        self,
        root: Path,
        expected: Expected,
        *,
        transform: Callable | None,
        target_transform: Callable | None,
        verify_checksums: bool,
        loader: Callable[[str], Any] | None = None,
    ) -> Subset:
        if expected.drawn_from is None:
            raise ValueError(f"{self.name}: Expected.drawn_from (the test set size) is required")
        folder = self.path(root)
        absent = [name for name, _ in self._lists() if not (folder / name).is_file()]
        if absent:
            problem = f"not found (missing {', '.join(absent)})"
            raise self.missing(root, expected.drawn_from, 0, problem)
        if verify_checksums:
            self._check_lists(root, expected.drawn_from)
        dataset = Places365TestImages(folder, transform, target_transform, loader or pil_loader)
        self._check_test_set(root, expected.drawn_from, len(dataset))
        indices = sample_places365(dataset.names, expected.images, self.seed)
        images_dir = self._images_dir(root)
        found = sum((images_dir / dataset.names[i]).is_file() for i in indices)
        if found != expected.images:
            problem = "sampled images missing"
            raise self.missing(root, expected.images, found, problem, path=images_dir)
        return Subset(dataset, indices)

    def _check_lists(self, root: Path, expected: int) -> None:
        """The list files match their published md5s."""
        for name, md5 in self._lists():
            path = self.path(root) / name
            if not tv_utils.check_integrity(str(path), md5):
                problem = f"corrupted or another version (md5 check: {path} does not match {md5})"
                raise self.missing(root, expected, None, problem)

    def _check_test_set(self, root: Path, expected: int, listed: int) -> None:
        """The file list and the image folder both hold the whole test set."""
        file_list = self.path(root) / PLACES365_TEST_LIST[0]
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

    def download(self, root: Path, progress: bool = True) -> None:
        folder = self.path(root)
        refused = [
            folder / name
            for name, md5 in self._lists()
            if (folder / name).exists() and not tv_utils.check_integrity(str(folder / name), md5)
        ]
        absent_lists = [name for name, _ in self._lists() if not (folder / name).exists()]
        if absent_lists:
            refused += self._failing(folder, *PLACES365_DEVKIT)
        if not self._images_dir(root).exists():
            refused += self._failing(folder, *PLACES365_TEST_IMAGES)
        if refused:
            raise FileExistsError(
                f"{self.name}: downloading would overwrite {', '.join(map(str, refused))}, and "
                "download=True never overwrites files: move them away first"
            )
        if absent_lists:
            _archive(*PLACES365_DEVKIT, member=".").install_files(folder, absent_lists, progress)
        if not self._images_dir(root).exists():
            _archive(*PLACES365_TEST_IMAGES, member=_TEST_FOLDER).install(
                self._images_dir(root), progress
            )

    def downloads(self, root: Path) -> list[tuple[RemoteFile, Path]]:
        folder, pending = self.path(root), []
        if not all((folder / name).exists() for name, _ in self._lists()):
            pending += _archive(*PLACES365_DEVKIT, member=".").pending(folder)
        if not self._images_dir(root).exists():
            pending += _archive(*PLACES365_TEST_IMAGES, member=_TEST_FOLDER).pending(folder)
        return pending

    def verification(self, root: Path) -> tuple[bool, str]:
        archive = _archive(*PLACES365_TEST_IMAGES, member=_TEST_FOLDER)
        verified, how = archive_verification(archive, self._images_dir(root))
        return verified, f"the file lists against their published md5s at every open; {how}"

    @staticmethod
    def _failing(folder: Path, archive: str, md5: str) -> list[Path]:
        """``[folder / archive]`` if it exists and fails ``md5``, else ``[]``."""
        path = folder / archive
        return [path] if path.exists() and not tv_utils.check_integrity(str(path), md5) else []


def _archive(filename: str, md5: str, member: str) -> Archive:
    url = urljoin(PLACES365_BASE_URL, filename)
    return Archive(url, filename, md5, member)


def _count_images(folder: Path) -> int:
    """Image files directly in ``folder`` (by extension, as torchvision recognizes them)."""
    with os.scandir(folder) as entries:
        return sum(e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS) for e in entries)
