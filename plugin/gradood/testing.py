"""Small models for tests, examples and the offline benchmark: they run in milliseconds on CPU.

- :class:`BigTransferStyleNet`: the big_transfer module layout in miniature (``root.conv``,
  ``body``, ``before_head.gn``, ``head.avg`` + ``head.conv``, a 1x1 convolution on pooled
  features), so that code written for BiT runs on it.
- :class:`SmallCNN`: two convolutions with batch normalization and a linear ``fc`` head.
- :func:`write_image_folder`: a small generated ``ImageFolder`` tree of random PNGs.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor, nn

__all__ = ["BigTransferStyleNet", "SmallCNN", "write_image_folder"]


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
    generator = np.random.default_rng(seed)
    paths = []
    for name, count in counts.items():
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            path = folder / f"{index:04d}.png"
            pixels = generator.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            with open(path, "xb") as file:
                Image.fromarray(pixels).save(file, format="PNG")
            paths.append(path)
    return paths
