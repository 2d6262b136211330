"""A training set held in device memory and augmented there, so that an epoch on CUDA waits
for no DataLoader and no host synchronization.

The images are stored as the dataset gives them (already normalized); the augmentation is the
recipe's: a random 32 x 32 crop of the image padded by 4 with black pixels, then a random
horizontal flip. Padding the normalized image with ``fill = (0 - mean) / std`` per channel equals
padding the raw image with zeros before normalizing, as ``torchvision.transforms.RandomCrop``
followed by ``Normalize`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .preprocessing import Preprocessing

__all__ = ["DeviceDataset", "augment", "black_fill", "to_device_dataset"]

_READ_BATCH = 500


@dataclass(frozen=True)
class DeviceDataset:
    """``images`` (N x C x H x W, normalized) and ``labels`` (N) on one device, with the
    per-channel value of a black pixel after normalization (``fill``, C)."""

    images: Tensor
    labels: Tensor
    fill: Tensor

    def __post_init__(self) -> None:
        n, channels = self.images.shape[:2]
        if self.images.ndim != 4 or self.labels.shape != (n,) or self.fill.shape != (channels,):
            raise ValueError(
                f"images must be N x C x H x W, labels N and fill C; got {tuple(self.images.shape)}"
                f", {tuple(self.labels.shape)} and {tuple(self.fill.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)


def black_fill(preprocessing: Preprocessing) -> Tensor:
    """``(0 - mean) / std`` per channel: a black pixel after ``preprocessing``'s normalization."""
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32)
    std = torch.tensor(preprocessing.std, dtype=torch.float32)
    return -mean / std


def to_device_dataset(
    dataset: Dataset, device: str | torch.device, fill: Tensor, num_workers: int = 0
) -> DeviceDataset:
    """Read every ``(image tensor, label)`` item of ``dataset`` once, in order, onto ``device``.

    :raises ValueError: if ``dataset`` is empty or its items are not (image, label) pairs
    """
    device = torch.device(device)
    images, labels = [], []
    for batch in DataLoader(dataset, batch_size=_READ_BATCH, num_workers=num_workers):
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise ValueError("the dataset's items must be pairs (image tensor, label)")
        images.append(batch[0].to(device, torch.float32))
        labels.append(torch.as_tensor(batch[1]).to(device, torch.long))
    if not images:
        raise ValueError("the training set is empty")
    return DeviceDataset(torch.cat(images), torch.cat(labels), fill.to(device, torch.float32))


def augment(images: Tensor, fill: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """A random crop of each image padded by ``padding`` pixels of ``fill`` (per channel), of the
    image's size, then a random horizontal flip (probability 1/2); draws from ``generator``,
    which lives on the images' device."""
    n, channels, height, width = images.shape
    device = images.device
    padded = fill.view(1, channels, 1, 1).expand(
        n, channels, height + 2 * padding, width + 2 * padding
    )
    padded = padded.clone()
    padded[:, :, padding : padding + height, padding : padding + width] = images
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    rows = top[:, None] + torch.arange(height, device=device)
    columns = torch.arange(width, device=device).expand(n, width)
    columns = torch.where(flip[:, None], columns.flip(1), columns) + left[:, None]
    samples = torch.arange(n, device=device)[:, None, None, None]
    planes = torch.arange(channels, device=device)[None, :, None, None]
    return padded[samples, planes, rows[:, None, :, None], columns[:, None, None, :]]
