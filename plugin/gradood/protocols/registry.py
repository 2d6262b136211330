"""The paper's protocols by name: ``"imagenet"``, ``"cifar10"``, ``"cifar100"``."""

from __future__ import annotations

from os import PathLike
from typing import Any

from .base import GradNormProtocol
from .cifar import CIFAR10GradNorm, CIFAR100GradNorm
from .errors import MissingDataset
from .imagenet import ImageNetGradNorm

__all__ = ["available_protocols", "make_protocol", "missing", "protocol_class"]

_PROTOCOLS: dict[str, type[GradNormProtocol]] = {
    cls.name: cls for cls in (ImageNetGradNorm, CIFAR10GradNorm, CIFAR100GradNorm)
}


def available_protocols() -> list[str]:
    """The protocols' names, sorted."""
    return sorted(_PROTOCOLS)


def protocol_class(name: str) -> type[GradNormProtocol]:
    """The benchmark class of protocol ``name``: its ``info``, ``preprocessing``,
    ``paper_expected`` counts, ``paper_tables``, ``ood_names`` and ``detector_preset``.

    :raises ValueError: for an unknown name, listing the known ones
    """
    try:
        return _PROTOCOLS[name]
    except KeyError:
        raise ValueError(
            f"unknown protocol {name!r}; available: {', '.join(available_protocols())}"
        ) from None


def make_protocol(name: str, root: str | PathLike, **kwargs: Any) -> GradNormProtocol:
    """Open protocol ``name`` on the data under ``root`` (keyword arguments as the class's:
    ``transform``, ``download``, ``expected``).

    :raises DatasetNotFoundError: for the first dataset that is absent or incomplete
    """
    return protocol_class(name)(root, **kwargs)


def missing(name: str, root: str | PathLike, **kwargs: Any) -> list[MissingDataset]:
    """What protocol ``name`` lacks under ``root``, without raising (see
    :meth:`GradNormProtocol.missing`; keyword arguments ``expected``, ``include_train``)."""
    return protocol_class(name).missing(root, **kwargs)
