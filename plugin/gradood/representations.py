"""What one forward pass gives for a dataset (:class:`Features`): logits, penultimate features,
labels and further layer outputs, one row per sample."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Features"]


@dataclass(frozen=True)
class Features:
    """What one forward pass gives for a dataset, one row per sample, in dataset order.

    ``logits`` (N x C), ``features`` (N x D, the penultimate features entering the head),
    ``labels`` (N; pytorch-ood convention: < 0 for OOD) and ``extras`` (name -> N x ...,
    the reduced outputs of other layers).
    """

    logits: Tensor
    features: Tensor
    labels: Tensor
    extras: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rows = self.labels.shape[0] if self.labels.ndim else -1
        named = {"logits": self.logits, "features": self.features, **self.extras}
        wrong = {name: tuple(t.shape) for name, t in named.items() if t.ndim == 0 or len(t) != rows}
        if rows < 0 or wrong:
            raise ValueError(
                f"Features: every tensor needs one row per label ({rows} labels); got {wrong}"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: slice | Tensor | Sequence[int]) -> Features:
        """The rows selected by a slice, index tensor or boolean mask."""
        return Features(
            self.logits[index],
            self.features[index],
            self.labels[index],
            {name: value[index] for name, value in self.extras.items()},
        )

    @staticmethod
    def cat(parts: Sequence[Features]) -> Features:
        """The rows of ``parts``, one after the other (all with the same extras)."""
        if not parts:
            raise ValueError("Features.cat needs at least one part")
        names = list(parts[0].extras)
        if any(list(part.extras) != names for part in parts):
            raise ValueError("Features.cat: the parts have different extras")
        return Features(
            torch.cat([part.logits for part in parts]),
            torch.cat([part.features for part in parts]),
            torch.cat([part.labels for part in parts]),
            {name: torch.cat([part.extras[name] for part in parts]) for name in names},
        )

    def to(self, device: str | torch.device) -> Features:
        return Features(
            self.logits.to(device),
            self.features.to(device),
            self.labels.to(device),
            {name: value.to(device) for name, value in self.extras.items()},
        )

    def _tensors(self) -> dict[str, Any]:
        return {
            "logits": self.logits,
            "features": self.features,
            "labels": self.labels,
            "extras": dict(self.extras),
        }
