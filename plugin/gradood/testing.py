"""Small models for tests, examples and the offline benchmark: they run in milliseconds on CPU.

- :class:`BigTransferStyleNet`: the big_transfer module layout in miniature (``root.conv``,
  ``body``, ``before_head.gn``, ``head.avg`` + ``head.conv``, a 1x1 convolution on pooled
  features), so that code written for BiT runs on it.
- :class:`SmallCNN`: two convolutions with batch normalization and a linear ``fc`` head.

Miniatures of the protocols' data layouts, written with small generated images (deterministic
from a seed) and opened with the counts they were written with:

- :func:`make_imagenet_layout` -> :class:`Miniature` of the ImageNet protocol.
- :func:`make_cifar_layout` -> one :class:`Miniature` each for ``"cifar10"`` and ``"cifar100"``
  (the same OOD sets under one root).
- :func:`forbid_downloads`: make any torchvision download or network connection fail a test.
- :func:`write_image_folder`: a small generated ``ImageFolder`` tree of random PNGs.
- :func:`write_photo_like`: one smooth image (coarse noise, upsampled), as JPEG compresses photos.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor, nn

from .protocols import (
    Expected,
    ExpectedData,
    GradNormProtocol,
    MissingDataset,
    make_protocol,
    missing,
)

__all__ = [
    "BigTransferStyleNet",
    "Miniature",
    "SmallCNN",
    "forbid_downloads",
    "make_cifar_layout",
    "make_imagenet_layout",
    "write_image_folder",
    "write_photo_like",
]


class BigTransferStyleNet(nn.Module):
    """A 2-block GroupNorm network with BiT's head: a 1x1 convolution on pooled features."""

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3):
        super().__init__()
        self.root = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(in_channels, width, 3, padding=1, bias=False))
        )
        self.body = nn.Sequential(
            nn.GroupNorm(4, width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
        )
        self.before_head = nn.Sequential(OrderedDict(gn=nn.GroupNorm(4, 2 * width), relu=nn.ReLU()))
        self.head = nn.Sequential(
            OrderedDict(
                avg=nn.AdaptiveAvgPool2d(1),
                conv=nn.Conv2d(2 * width, num_classes, kernel_size=1, bias=True),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.before_head(self.body(self.root(x))))
        return x[..., 0, 0]


class SmallCNN(nn.Module):
    """conv-BN-ReLU twice, global average pooling, and a linear head ``fc``."""

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


# -- Miniature data layouts ------------------------------------------------------------------


@dataclass(frozen=True)
class Miniature:
    """A miniature of protocol ``protocol``'s layout under ``root``, with its exact counts
    (``expected``; checksums off, since generated files cannot match the published ones)."""

    protocol: str
    root: Path
    expected: ExpectedData

    def open(self, **kwargs: Any) -> GradNormProtocol:
        """The protocol on this miniature (keyword arguments as
        :func:`~gradood.protocols.make_protocol`'s; ``expected`` defaults to the miniature's)."""
        kwargs.setdefault("expected", self.expected)
        return make_protocol(self.protocol, self.root, **kwargs)

    def missing(self, **kwargs: Any) -> list[MissingDataset]:
        """What the protocol lacks in this miniature (e.g. after a test deleted files)."""
        kwargs.setdefault("expected", self.expected)
        return missing(self.protocol, self.root, **kwargs)


#: DTD's first categories, for the miniature Textures folders
_TEXTURE_CLASSES = ("banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed")


def make_imagenet_layout(
    root: str | Path,
    *,
    classes: int = 3,
    images_per_class: int = 2,
    ood_counts: Mapping[str, int] | None = None,
    texture_classes: int = 2,
    train_images_per_class: int | None = None,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> Miniature:
    """Write a miniature of the ImageNet protocol's layout (see
    :mod:`gradood.protocols.imagenet`) under ``root``: ``classes`` wnid folders of
    ``images_per_class`` JPEGs in ``id_data/ILSVRC-2012/val``, ``ood_counts[name]`` JPEGs for
    each OOD set (default iNaturalist 3, SUN 2, Places 4, Textures 4 spread over
    ``texture_classes`` folders). Images are 16 to 48 pixels a side, not square, or
    ``image_size`` (height, width) each (e.g. ``(375, 500)``, a typical ImageNet photo, to time
    decoding and resizing as on the real data).

    The training folder is written only with ``train_images_per_class``; without, its expected
    count is one image per class (so that ``train_set()`` reports it missing).

    :raises FileExistsError: if a folder of the layout exists (nothing is overwritten)
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {"iNaturalist": 3, "SUN": 2, "Places": 4, "Textures": 4, **(ood_counts or {})}
    wnids = [f"n{10_000_000 + i:08d}" for i in range(classes)]
    base = root / "id_data" / "ILSVRC-2012"
    val = {
        w: [
            f"ILSVRC2012_val_{c * images_per_class + k + 1:08d}.JPEG"
            for k in range(images_per_class)
        ]
        for c, w in enumerate(wnids)
    }
    _write_image_folder(base / "val", val, rng, image_size)
    if train_images_per_class is not None:
        train = {w: [f"{w}_{k}.JPEG" for k in range(train_images_per_class)] for w in wnids}
        _write_image_folder(base / "train", train, rng, image_size)
    for name in ("iNaturalist", "SUN", "Places"):
        images = [f"{k:05d}.jpg" for k in range(counts[name])]
        _write_image_folder(root / "ood_data" / name, {"images": images}, rng, image_size)
    _write_image_folder(
        root / "ood_data" / "Textures",
        _texture_files(counts["Textures"], texture_classes),
        rng,
        image_size,
    )
    train_count = classes * (train_images_per_class or 1)
    expected = {
        "ImageNet-1k val": Expected(classes * images_per_class, classes=classes),
        "ImageNet-1k train": Expected(train_count, classes=classes),
        "iNaturalist": Expected(counts["iNaturalist"]),
        "SUN": Expected(counts["SUN"]),
        "Places": Expected(counts["Places"]),
        "Textures": Expected(counts["Textures"], classes=texture_classes),
    }
    return Miniature("imagenet", root, ExpectedData(expected, verify_checksums=False))


def make_cifar_layout(
    root: str | Path,
    *,
    test_images: int = 6,
    train_images: int = 10,
    cifar10_classes: int = 3,
    cifar100_classes: int = 4,
    svhn: int = 5,
    lsun: int = 3,
    places365_test: int = 12,
    places365_sample: int = 4,
    textures: int = 4,
    texture_classes: int = 2,
    seed: int = 0,
) -> dict[str, Miniature]:
    """Write a miniature of the CIFAR protocols' layout (see :mod:`gradood.protocols.cifar`)
    under ``root``: CIFAR-10 and CIFAR-100 in torchvision's pickle format (``test_images`` and
    ``train_images`` each, labels in ``range(cifarXX_classes)``), SVHN's ``test_32x32.mat``,
    LSUN crop's 36 x 36 JPEGs, a Places365 test set of ``places365_test`` JPEGs (with
    torchvision's two list files) to sample ``places365_sample`` from, and Textures.

    :return: ``{"cifar10": Miniature, "cifar100": Miniature}``
    :raises FileExistsError: if a folder or file of the layout exists (nothing is overwritten)
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    _write_cifar(root / "cifar-10-batches-py", 10, test_images, train_images, cifar10_classes, rng)
    _write_cifar(root / "cifar-100-python", 100, test_images, train_images, cifar100_classes, rng)
    _write_svhn(root / "svhn" / "test_32x32.mat", svhn, rng)
    lsun_files = {"test": [f"{k}.jpg" for k in range(lsun)]}
    _write_image_folder(root / "LSUN", lsun_files, rng, sizes=(36, 36))
    _write_places365(root / "places365", places365_test, rng)
    _write_image_folder(root / "dtd" / "images", _texture_files(textures, texture_classes), rng)
    ood = {
        "SVHN": Expected(svhn),
        "LSUN (crop)": Expected(lsun),
        "Places365": Expected(places365_sample, drawn_from=places365_test),
        "Textures": Expected(textures, classes=texture_classes),
    }
    layouts = {}
    for protocol, name, classes in (
        ("cifar10", "CIFAR-10", cifar10_classes),
        ("cifar100", "CIFAR-100", cifar100_classes),
    ):
        expected = {
            f"{name} test": Expected(test_images, classes=classes),
            f"{name} train": Expected(train_images, classes=classes),
            **ood,
        }
        layouts[protocol] = Miniature(protocol, root, ExpectedData(expected, False))
    return layouts


def forbid_downloads(monkeypatch: Any) -> None:
    """Make torchvision's download functions, and any network connection (so gradood's
    downloads too), fail the test (``monkeypatch`` is pytest's fixture; it undoes this after
    the test)."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn
    import torchvision.datasets.utils

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a download or connection was attempted: {args} {kwargs}")

    modules = {
        torchvision.datasets.utils: (
            "download_url",
            "download_and_extract_archive",
            "download_file_from_google_drive",
            "_urlretrieve",
        ),
        torchvision.datasets.cifar: ("download_and_extract_archive",),
        torchvision.datasets.svhn: ("download_url",),
    }
    for module, names in modules.items():
        for name in names:
            monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)


def _texture_files(count: int, classes: int) -> dict[str, list[str]]:
    """``count`` file names spread over the first ``classes`` DTD categories."""
    return {
        name: [f"{name}_{k:04d}.jpg" for k in range(c, count, classes)]
        for c, name in enumerate(_TEXTURE_CLASSES[:classes])
    }


def _fresh(path: Path) -> Path:
    """``path``, after checking that it does not exist, with its parent created."""
    if path.exists():
        raise FileExistsError(f"{path} exists; a miniature is never written over files")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _random_pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _write_image_folder(
    folder: Path,
    files: Mapping[str, list[str]],
    rng: np.random.Generator,
    sizes: tuple[int, int] | None = None,
) -> None:
    """A new ``folder`` with JPEGs ``folder / subfolder / name`` (see :func:`_write_images`)."""
    _fresh(folder).mkdir()
    for subfolder, names in files.items():
        (folder / subfolder).mkdir()
        _write_images(folder / subfolder, names, rng, sizes)


def _write_images(
    folder: Path, names: list[str], rng: np.random.Generator, sizes: tuple[int, int] | None
) -> None:
    """Images of random pixels (format from the name's suffix), ``sizes`` (height, width) or
    16 to 48 pixels a side; an existing file is never overwritten."""
    for name in names:
        height, width = sizes or rng.integers(16, 49, size=2)
        pixels = _random_pixels(rng, int(height), int(width))
        with open(folder / name, "xb") as file:
            Image.fromarray(pixels).save(
                file, format=Image.registered_extensions()[Path(name).suffix.lower()]
            )


def _write_cifar(
    folder: Path, variant: int, test: int, train: int, classes: int, rng: np.random.Generator
) -> None:
    """CIFAR-``variant`` (10 or 100) in torchvision's pickle layout."""
    _fresh(folder).mkdir()
    label_key = "labels" if variant == 10 else "fine_labels"

    def batch(size: int) -> dict[str, Any]:
        return {
            "data": rng.integers(0, 256, size=(size, 32 * 32 * 3), dtype=np.uint8),
            label_key: [int(y) for y in rng.integers(0, classes, size)],
        }

    if variant == 10:
        files = {"test_batch": batch(test)}
        files.update({f"data_batch_{b + 1}": batch(n) for b, n in enumerate(_split(train, 5))})
        files["batches.meta"] = {"label_names": [f"class_{c}" for c in range(classes)]}
    else:
        files = {"test": batch(test), "train": batch(train)}
        files["meta"] = {"fine_label_names": [f"class_{c}" for c in range(classes)]}
    for name, content in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump(content, f)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (k < total % parts) for k in range(parts)]


def _write_svhn(path: Path, count: int, rng: np.random.Generator) -> None:
    """SVHN's ``.mat`` layout: ``X`` is 32 x 32 x 3 x N, ``y`` N x 1 in 1..10 (10 = digit 0)."""
    import scipy.io

    pixels = np.stack([_random_pixels(rng, 32, 32) for _ in range(count)], axis=-1)
    labels = rng.integers(1, 11, size=(count, 1)).astype(np.uint8)
    scipy.io.savemat(_fresh(path), {"X": pixels, "y": labels})


def _write_places365(folder: Path, count: int, rng: np.random.Generator) -> None:
    """torchvision's Places365 test layout: the two list files and ``test_256/``."""
    names = [f"Places365_test_{k + 1:08d}.jpg" for k in range(count)]
    _fresh(folder).mkdir()
    (folder / "test_256").mkdir()
    _write_images(folder / "test_256", names, rng, sizes=(48, 48))  # square, as the real ones
    (folder / "categories_places365.txt").write_text(
        "".join(f"/a/category_{c} {c}\n" for c in range(3))
    )
    (folder / "places365_test.txt").write_text("".join(f"{name}\n" for name in names))


def write_image_folder(
    root: str | os.PathLike,
    counts: Mapping[str, int],
    size: tuple[int, int] = (8, 8),
    seed: int = 0,
) -> list[Path]:
    """Write random RGB PNGs in torchvision's ``ImageFolder`` layout, ``root/<class>/<i>.png``.

    :param counts: number of images per class folder
    :param size: (height, width) of every image
    :return: the written paths, class by class in the order of ``counts``
    :raises FileExistsError: if an image to write exists (nothing is overwritten)
    """
    rng = np.random.default_rng(seed)
    paths = []
    for name, count in counts.items():
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"{index:04d}.png" for index in range(count)]
        _write_images(folder, names, rng, size)
        paths += [folder / file_name for file_name in names]
    return paths


def write_photo_like(
    path: str | os.PathLike,
    size: tuple[int, int],
    seed: int = 0,
    mode: str = "RGB",
    image_format: str = "JPEG",
) -> Path:
    """Write a smooth random image of ``size`` (height, width): noise on a grid 8 times coarser,
    upsampled bicubically, so that JPEG keeps most of it, as with photos; in PIL ``mode``
    (``"L"``, ``"CMYK"``, ...) and ``image_format``.

    :raises FileExistsError: if ``path`` exists (nothing is overwritten)
    """
    height, width = size
    rng = np.random.default_rng(seed)
    coarse = _random_pixels(rng, max(2, height // 8), max(2, width // 8))
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC).convert(mode)
    with open(path, "xb") as file:
        image.save(file, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return Path(path)
