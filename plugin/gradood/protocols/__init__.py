"""The GradNorm paper's evaluation protocols as pytorch-ood benchmarks.

``make_protocol("imagenet" | "cifar10" | "cifar100", root)`` opens one; every dataset is checked
when opened (exact counts, published checksums) and a missing or incomplete one raises
:class:`DatasetNotFoundError` with its path, the count found and expected, and where to get it.
``missing(name, root)`` lists the problems without raising. The layouts under ``root`` are in
docs/datasets.md, and the module docstrings of :mod:`.imagenet` and :mod:`.cifar`.
"""

from .base import GradNormProtocol
from .cifar import CIFAR10GradNorm, CIFAR100GradNorm, cifar_transform
from .errors import DatasetNotFoundError, ImageReadError, MissingDataset
from .expected import Expected, ExpectedData
from .imagenet import ImageNetGradNorm
from .places365 import PLACES365_SEED, sample_places365
from .registry import available_protocols, make_protocol, missing, protocol_class

__all__ = [
    "PLACES365_SEED",
    "CIFAR10GradNorm",
    "CIFAR100GradNorm",
    "DatasetNotFoundError",
    "Expected",
    "ExpectedData",
    "GradNormProtocol",
    "ImageNetGradNorm",
    "ImageReadError",
    "MissingDataset",
    "available_protocols",
    "cifar_transform",
    "make_protocol",
    "missing",
    "protocol_class",
    "sample_places365",
]
