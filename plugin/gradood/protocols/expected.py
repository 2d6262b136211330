"""What a protocol requires of its data: the exact counts of each dataset, and checksums.

A protocol opened with its defaults requires the paper's counts (e.g. 50,000 ImageNet
validation images in 1,000 class folders) and torchvision's published checksums; a dataset
with more or fewer images is an error, never a silent change of the benchmark. A miniature of
a layout (``gradood.testing``) states its own counts and, since its files cannot match the
published checksums, ``verify_checksums=False``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["Expected", "ExpectedData"]


@dataclass(frozen=True)
class Expected:
    """The exact size of one dataset.

    :param images: number of images the protocol uses
    :param classes: number of class folders (or classes), where the protocol checks it
    :param drawn_from: number of images on disk that ``images`` are sampled from (Places365)
    """

    images: int
    classes: int | None = None
    drawn_from: int | None = None

    def __post_init__(self):
        for what in ("images", "classes", "drawn_from"):
            value = getattr(self, what)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Expected.{what} must be a positive int or None, got {value!r}")
        if self.drawn_from is not None and self.drawn_from < self.images:
            raise ValueError(
                f"Expected: cannot sample {self.images} images from {self.drawn_from} (drawn_from)"
            )


@dataclass(frozen=True)
class ExpectedData:
    """The counts of every dataset of a protocol, by dataset name, and whether the files must
    match the checksums torchvision publishes (CIFAR, SVHN, the Places365 file lists)."""

    counts: Mapping[str, Expected]
    verify_checksums: bool = True

    def __post_init__(self):
        object.__setattr__(self, "counts", MappingProxyType(dict(self.counts)))

    def __reduce__(self):
        return type(self), (dict(self.counts), self.verify_checksums)

    def __getitem__(self, name: str) -> Expected:
        return self.counts[name]

    def require(self, names: Iterable[str]) -> None:
        """Check that exactly the datasets ``names`` have counts.

        :raises ValueError: naming the datasets without counts, or counts for unknown ones
        """
        names = set(names)
        lacking = sorted(names - set(self.counts))
        unknown = sorted(set(self.counts) - names)
        if lacking or unknown:
            raise ValueError(
                f"expected counts do not match the protocol's datasets {sorted(names)}: "
                f"missing {lacking}, unknown {unknown}"
            )
