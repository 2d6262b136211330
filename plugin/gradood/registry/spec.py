"""The recipe type: how a registered detector is built, fitted and scored
(:class:`DetectorSpec`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pytorch_ood.api import Detector

__all__ = ["FIT_KINDS", "PAPER_PROTOCOLS", "REPRESENTATIONS", "DetectorSpec", "Factory"]

Factory = Callable[..., Detector]

#: the protocols whose settings the paper fixes (preset names; ``cifar`` where both agree)
PAPER_PROTOCOLS = ("imagenet", "cifar", "cifar10", "cifar100")

#: what a detector is fitted on: ``none``; ``train`` (the ID training loader); ``tuning`` (a
#: held-out ID loader); ``train+tuning`` (``fit(train, tuning_loader=tuning)``, the tuning loader
#: defaulting to the training one); ``surrogate`` (the ID training loader, with OOD data the
#: detector makes itself, e.g. noise); ``auto`` (plugins: the training loader if the detector
#: says ``requires_fit``)
FIT_KINDS = ("none", "train", "tuning", "train+tuning", "surrogate", "auto")
#: what a detector scores from: ``logits`` and ``features`` (penultimate) are served from
#: :func:`gradood.evaluate`'s cached pass, ``layers`` (cached layer outputs) where the
#: detector's settings allow, ``inputs`` always take the raw inputs
REPRESENTATIONS = ("logits", "features", "layers", "inputs")


@dataclass(frozen=True)
class DetectorSpec:
    """A registered detector's recipe: its ``factory`` ``(model, **settings) -> detector``, named
    ``presets`` of settings, what it is ``fit`` on (:data:`~gradood.registry.spec.FIT_KINDS`) and
    what it ``scores_from`` (:data:`~gradood.registry.spec.REPRESENTATIONS`)."""

    name: str
    factory: Factory
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    summary: str = ""
    fit: str = "auto"
    scores_from: str = "inputs"
    #: the default dtype the fit must run under, if it needs one (pytorch-ood's DICE computes
    #: in float32 and makes its quantile's level in the default dtype)
    fit_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.fit not in FIT_KINDS:
            raise ValueError(f"fit must be one of {', '.join(FIT_KINDS)}, got '{self.fit}'")
        if self.scores_from not in REPRESENTATIONS:
            raise ValueError(
                f"scores_from must be one of {', '.join(REPRESENTATIONS)}, got '{self.scores_from}'"
            )
