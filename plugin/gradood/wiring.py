"""How a pytorch-ood detector class is connected to a classifier: the wirings of the registry.

pytorch-ood's constructors take the pieces of a model in a few shapes; each wiring builds one
of them from a whole classifier, with :func:`gradood.heads.penultimate_encoder` as the encoder
(so that :func:`gradood.evaluate` serves ``FeaturesDetector`` s from its cached pass) and the
head found by :func:`gradood.heads.find_head`:

- :func:`on_model`: ``cls(model)`` (logits and gradient detectors);
- :func:`on_features`: ``cls(encoder)``; :func:`on_differentiable_features` with an encoder
  that keeps the autograd graph (input preprocessing), not served from the cache;
- :func:`on_features_and_head`: ``cls(encoder, head)``, the head a module mapping features
  (B x D) to logits;
- :func:`on_features_and_weights`: ``cls(encoder, w=W, b=b)``, the head's weight and bias;
- :func:`on_pooled_maps`: ``cls(backbone, head)`` for feature-map detectors, the backbone
  returning the penultimate features as B x D x 1 x 1 maps (where ASH's and SCALE's official
  codes apply them: after the global pooling) and the head flattening them first.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from pytorch_ood.api import Detector
from torch import Tensor, nn

from .heads import find_head, penultimate_encoder

__all__ = [
    "Wiring",
    "feature_width",
    "on_differentiable_features",
    "on_features",
    "on_features_and_head",
    "on_features_and_weights",
    "on_model",
    "on_pooled_maps",
]

Wiring = Callable[..., Detector]


class HeadOnFeatures(nn.Module):
    """The model's head as a module from features (B x D, or B x D x 1 x 1) to logits."""

    def __init__(self, model: nn.Module, head: str | nn.Module | None = None):
        super().__init__()
        self.found = find_head(model, head)
        # pytorch-ood's NCI and fDBD read ``head.weight`` and ``head.bias``
        self.weight = self.found.module.weight.flatten(1)
        self.bias = self.found.module.bias

    def forward(self, features: Tensor) -> Tensor:
        # some pytorch-ood detectors cast features to float32 whatever the model's dtype
        return self.found.logits(features.flatten(1).to(self.weight.dtype))


class DifferentiableEncoder(nn.Module):
    """``x -> h`` like :func:`~gradood.heads.penultimate_encoder`, but keeping the autograd
    graph, for detectors that step the input against a feature score's gradient."""

    def __init__(self, model: nn.Module, head: str | nn.Module | None = None):
        super().__init__()
        self.model = model
        self.found = find_head(model, head)

    def forward(self, x: Tensor) -> Tensor:
        record: list[Tensor] = []
        handle = self.found.module.register_forward_hook(
            lambda _module, inputs, _output: record.append(inputs[0])
        )
        try:
            self.model(x)
        finally:
            handle.remove()
        return self.found.pooled_features(record[-1])


class PooledMaps(nn.Module):
    """``x -> h[:, :, None, None]``: the penultimate features as 1 x 1 feature maps."""

    def __init__(self, model: nn.Module, head: str | nn.Module | None = None):
        super().__init__()
        self.encoder = penultimate_encoder(model, head)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)[:, :, None, None]


def on_model(cls: type[Detector], model: nn.Module, **settings: Any) -> Detector:
    """``cls(model, **settings)``."""
    return cls(model, **settings)


def on_features(
    cls: type[Detector], model: nn.Module, *, head: Any = None, **settings: Any
) -> Detector:
    """``cls(penultimate_encoder(model), **settings)``."""
    return cls(penultimate_encoder(model, head), **settings)


def on_differentiable_features(
    cls: type[Detector], model: nn.Module, *, head: Any = None, **settings: Any
) -> Detector:
    """``cls(encoder, **settings)`` with an encoder that input gradients pass through."""
    return cls(DifferentiableEncoder(model, head), **settings)


def on_features_and_head(
    cls: type[Detector], model: nn.Module, *, head: Any = None, **settings: Any
) -> Detector:
    """``cls(penultimate_encoder(model), head_module, **settings)``."""
    return cls(penultimate_encoder(model, head), HeadOnFeatures(model, head), **settings)


def on_features_and_weights(
    cls: type[Detector], model: nn.Module, *, head: Any = None, **settings: Any
) -> Detector:
    """``cls(penultimate_encoder(model), w=W, b=b, **settings)`` with the head's W and b."""
    found = HeadOnFeatures(model, head)
    return cls(penultimate_encoder(model, head), w=found.weight, b=found.bias, **settings)


def on_pooled_maps(
    cls: type[Detector], model: nn.Module, *, head: Any = None, **settings: Any
) -> Detector:
    """``cls(backbone, head, **settings)`` on the penultimate features as 1 x 1 maps."""
    return cls(PooledMaps(model, head), HeadOnFeatures(model, head), **settings)


def wired(wiring: Wiring, cls: type[Detector], **defaults: Any) -> Callable[..., Detector]:
    """The factory ``(model, **settings) -> detector`` of ``cls`` connected by ``wiring``;
    ``defaults`` are settings that ``settings`` override."""
    factory = partial(wiring, cls, **defaults)
    factory.__module__ = __name__  # type: ignore[attr-defined]
    return factory


def feature_width(model: nn.Module, head: str | nn.Module | None = None) -> int:
    """The width D of ``model``'s penultimate features (the head's input)."""
    return find_head(model, head).in_features
