"""The CIFAR-10/100 training and test sets of the ResNet-20 recipe (:mod:`.train`), with its
transforms, and a clear error where the data is missing, incomplete or corrupt."""

from __future__ import annotations

import os
from pathlib import Path

import torchvision.transforms as T
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100

from .preprocessing import CIFAR_RESNET20

__all__ = ["CIFAR_SETS", "DatasetError", "cifar_datasets", "eval_transform", "train_transform"]

#: dataset name -> (torchvision class, number of classes, title)
CIFAR_SETS = {"cifar10": (CIFAR10, 10, "CIFAR-10"), "cifar100": (CIFAR100, 100, "CIFAR-100")}
_CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


class DatasetError(RuntimeError):
    """A dataset on disk that cannot be used as it is."""


def _normalize() -> T.Normalize:
    return T.Normalize(CIFAR_RESNET20.mean, CIFAR_RESNET20.std)


def train_transform() -> T.Compose:
    """Random 32 x 32 crop of the image zero-padded by 4, random horizontal flip, to tensor,
    normalization with :data:`~gradood.models.preprocessing.CIFAR_RESNET20`'s statistics."""
    return T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), _normalize()]
    )


def eval_transform() -> T.Compose:
    """The evaluation transform, :data:`~gradood.models.preprocessing.CIFAR_RESNET20`'s (the
    protocols use the same)."""
    return CIFAR_RESNET20.transform()


def cifar_datasets(
    name: str, root: str | os.PathLike, download: bool = False
) -> tuple[Dataset, Dataset]:
    """The torchvision CIFAR-10/100 training set (with :func:`train_transform`) and test set
    (with :func:`eval_transform`) under ``root``.

    :param download: fetch and extract the archive into ``root`` if it is not there
    :raises FileNotFoundError: if the dataset is missing or incomplete and ``download`` is off;
        the message gives the folder, the files found and missing, and where to get them
    :raises DatasetError: if the files are there but fail torchvision's checksums
    """
    if name not in CIFAR_SETS:
        raise ValueError(f"dataset must be one of {sorted(CIFAR_SETS)}, got {name!r}")
    cls, _, title = CIFAR_SETS[name]
    folder = Path(root) / cls.base_folder
    expected = [file for file, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [file for file in expected if not (folder / file).is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"{title} is missing or incomplete in '{folder}': found {len(expected) - len(missing)}"
            f" of {len(expected)} files (missing: {', '.join(missing)}). Pass --download "
            f"(download=True) to fetch {cls.url} and extract it into '{root}', or extract "
            f"{cls.filename} from {_CIFAR_PAGE} there yourself"
        )
    try:
        train_set = cls(str(root), train=True, transform=train_transform(), download=download)
        test_set = cls(str(root), train=False, transform=eval_transform(), download=False)
    except RuntimeError as error:
        raise DatasetError(
            f"{title} in '{folder}' fails torchvision's checksums (corrupted or another "
            f"version): {error}. Delete the folder and pass --download, or get {cls.filename} "
            f"from {_CIFAR_PAGE}"
        ) from None
    return train_set, test_set
