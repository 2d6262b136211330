"""Datasets in torchvision's own format (CIFAR-10/100, SVHN), opened by torchvision's classes,
which verify the published md5 checksums, and downloaded (:mod:`gradood.downloads`) from the
URLs and with the checksums its classes publish."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, SVHN, VisionDataset

from ..downloads import RemoteFile
from .archives import Archive
from .expected import Expected
from .source import DataSource, count_problem

__all__ = ["CifarSource", "SvhnSource"]


# torchvision's classes with the class attributes that hold md5 checksums set to None, so that
# they accept files that exist but do not match: for miniatures only, which state
# ``verify_checksums=False``. Defined at module level so that their datasets pickle (DataLoader
# workers).


class CIFAR10WithoutChecksums(CIFAR10):
    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class CIFAR100WithoutChecksums(CIFAR100):
    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


class SVHNWithoutChecksums(SVHN):
    split_list = {split: [url, name, None] for split, (url, name, _) in SVHN.split_list.items()}


#: published sizes in bytes (for plans; the transfer uses the server's)
_SIZES = {
    CIFAR10.filename: 170_498_071,
    CIFAR100.filename: 169_001_437,
    SVHN.split_list["test"][1]: 64_275_384,
    SVHN.split_list["train"][1]: 182_040_794,
}

_WITHOUT_CHECKSUMS = {CIFAR10: CIFAR10WithoutChecksums, CIFAR100: CIFAR100WithoutChecksums}


class _TorchvisionSource(DataSource):
    """Shared checks: the files exist, torchvision's md5 check passes, the count matches."""

    @abstractmethod
    def files(self) -> Sequence[str]:
        """The files torchvision reads, relative to :meth:`path`."""

    @abstractmethod
    def _construct(self, root: Path, verify_checksums: bool, **kwargs: Any) -> VisionDataset:
        """The torchvision dataset (without md5 checks unless ``verify_checksums``)."""

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
        folder = self.path(root)
        absent = [name for name in self.files() if not (folder / name).is_file()]
        if absent:
            problem = f"not found (missing {', '.join(absent)})"
            raise self.missing(root, expected.images, 0, problem)
        try:
            dataset = self._construct(
                root, verify_checksums, transform=transform, target_transform=target_transform
            )
        except RuntimeError as error:
            problem = f"corrupted or another version (torchvision's md5 check: {error})"
            raise self.missing(root, expected.images, None, problem) from error
        classes = getattr(dataset, "classes", None)
        if (
            expected.classes is not None
            and classes is not None
            and len(classes) != expected.classes
        ):
            problem = count_problem(len(classes), expected.classes)
            raise self.missing(root, expected.classes, len(classes), problem, "classes")
        if len(dataset) != expected.images:
            problem = count_problem(len(dataset), expected.images)
            raise self.missing(root, expected.images, len(dataset), problem)
        return dataset

    @property
    def can_download(self) -> bool:
        return True

    def verification(self, root: Path) -> tuple[bool, str]:
        return True, "its files are checked against torchvision's published md5s at every open"


class CifarSource(_TorchvisionSource):
    """A split of CIFAR-10 or CIFAR-100 (``cifar_class``), at ``root / cifar_class.base_folder``.

    torchvision reads either split only if the folder holds both (it checks all files)."""

    def __init__(self, name: str, cifar_class: type[CIFAR10], train: bool):
        if cifar_class not in _WITHOUT_CHECKSUMS:
            raise ValueError(f"not a CIFAR class: {cifar_class}")
        how_to_get = (
            f"torchvision.datasets.{cifar_class.__name__}(root, train={train}, download=True), "
            f"or {cifar_class.url} (md5 {cifar_class.tgz_md5}) extracted into the root "
            f"({cifar_class.base_folder}/)"
        )
        super().__init__(name, how_to_get)
        self.cifar_class = cifar_class
        self.train = train

    def path(self, root: Path) -> Path:
        return Path(root) / self.cifar_class.base_folder

    def files(self) -> Sequence[str]:
        cls = self.cifar_class
        return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]

    def _construct(self, root, verify_checksums, **kwargs):
        cls = self.cifar_class if verify_checksums else _WITHOUT_CHECKSUMS[self.cifar_class]
        return cls(str(root), train=self.train, **kwargs)

    def archive(self) -> Archive:
        """The published archive (torchvision's URL and md5), whose folder is the dataset."""
        cls = self.cifar_class
        size = _SIZES.get(cls.filename)
        return Archive(cls.url, cls.filename, cls.tgz_md5, member=cls.base_folder, size=size)

    def download(self, root: Path, progress: bool = True) -> None:
        self.archive().install(self.path(root), progress)

    def downloads(self, root: Path) -> list[tuple[RemoteFile, Path]]:
        return [] if self.is_present(root) else self.archive().pending(Path(root))


class SvhnSource(_TorchvisionSource):
    """A split of SVHN, at ``root / "svhn" / "<split>_32x32.mat"``."""

    folder = "svhn"

    def __init__(self, name: str, split: str):
        url, _, md5 = SVHN.split_list[split]
        how_to_get = (
            f"torchvision.datasets.SVHN(root / {self.folder!r}, split={split!r}, download=True), "
            f"or {url} (md5 {md5}) saved into root / {self.folder!r}"
        )
        super().__init__(name, how_to_get)
        self.split = split

    def path(self, root: Path) -> Path:
        return Path(root) / self.folder

    def files(self) -> Sequence[str]:
        return [SVHN.split_list[self.split][1]]

    def is_present(self, root: Path) -> bool:
        return (self.path(root) / self.files()[0]).exists()

    def _construct(self, root, verify_checksums, **kwargs):
        cls = SVHN if verify_checksums else SVHNWithoutChecksums
        return cls(str(self.path(root)), split=self.split, **kwargs)

    def remote(self) -> RemoteFile:
        """The published file (torchvision's URL and md5)."""
        url, filename, md5 = SVHN.split_list[self.split]
        return RemoteFile(url, md5, _SIZES.get(filename))

    def download(self, root: Path, progress: bool = True) -> None:
        self.remote().fetch(self.path(root) / self.files()[0], progress)

    def downloads(self, root: Path) -> list[tuple[RemoteFile, Path]]:
        path = self.path(root) / self.files()[0]
        return [] if path.exists() else [(self.remote(), path)]
