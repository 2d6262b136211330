"""The layers whose outputs the paper's Mahalanobis detector models, and their features: each
layer's output averaged over its spatial positions."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import Tensor, nn

from ...capture import forward_until_captured, layer_outputs

__all__ = ["default_layers", "layer_features", "spatial_mean"]


def default_layers(model: nn.Module) -> list[str]:
    """The feature layers the official codes use, by architecture.

    - timm ResNetV2 (BiT, e.g. ``resnetv2_101x1_bit``): ``stem``, ``stages.0`` ... (the official
      BiT code's root and ``body.block1..4``)
    - big_transfer's ResNetV2: ``root``, ``body.block1`` ...
    - ResNets with ``layer1``, ``layer2``, ...: the first activation (a top-level ``relu``
      module, else ``bn1``) and every ``layerK`` (Lee et al.'s ResNet feature list)

    :raises ValueError: for any other architecture, listing its top-level modules
    """
    children = dict(model.named_children())
    if "stem" in children and "stages" in children:
        return ["stem"] + [f"stages.{name}" for name, _ in children["stages"].named_children()]
    if "root" in children and "body" in children:
        blocks = [n for n, _ in children["body"].named_children() if re.fullmatch(r"block\d+", n)]
        if blocks:
            return ["root"] + [f"body.{name}" for name in blocks]
    stages = sorted((n for n in children if re.fullmatch(r"layer\d+", n)), key=lambda n: int(n[5:]))
    if stages:
        first = [n for n in ("relu", "bn1") if n in children][:1]
        return first + stages
    raise ValueError(
        f"no default feature layers for {type(model).__name__}; pass layers=[module names] "
        f"(top-level modules: {', '.join(children) or 'none'})"
    )


def spatial_mean(output: object, name: str) -> Tensor:
    if not isinstance(output, Tensor) or output.ndim < 2:
        raise ValueError(
            f"layer '{name}' must output a tensor of shape B x C (x ...), got "
            f"{tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__}"
        )
    return output.reshape(output.shape[0], output.shape[1], -1).mean(dim=2)


def layer_features(model: nn.Module, layers: Sequence[str], x: Tensor) -> dict[str, Tensor]:
    """Spatially averaged outputs (B x C) of the first call of each layer; the forward pass
    stops as soon as all of them have run."""
    with layer_outputs(
        model,
        {name: name for name in layers},
        lambda _inputs, output: output,
        first_only=True,
        stop_when_complete=True,
    ) as captured:
        forward_until_captured(model, x)
    missing = [n for n in layers if not captured[n]]
    if missing:
        raise ValueError(f"layers {missing} did not run in the model's forward pass")
    return {name: spatial_mean(captured[name][0], name) for name in layers}
