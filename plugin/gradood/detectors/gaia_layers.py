"""Which layers GAIA inspects: the general rule for any classifier and the official choices.

A choice is the *inner* layers (GAIA-A's inner component) and the *output layer* (GAIA-A's
output component; GAIA-Z treats it as one more inspected layer, the last). ``None`` as the
output layer means the head's input, the pooled feature the official code calls
``before_head_data``.

- ``"norms"`` (the general rule, the default): every normalization layer whose output has its
  channels on axis 1 (``BatchNorm*``, ``InstanceNorm*``, ``GroupNorm``), or, in a model without
  one, every ``Conv2d`` (the official code's ``get_conv_hooks``); the output layer is the
  head's input.
- ``"before_head"`` (the official ``-hook before_head``): ResNet-18/34/50 (a model with
  ``layer3`` and ``layer4``): the ``BatchNorm2d`` layers of ``layer3`` and ``layer4``, output
  layer ``layer4``; BiT: the ``GroupNorm`` layers of the last stage (big_transfer's
  ``body.block4``, timm's ``stages[-1]``), output layer the head's input (big_transfer's
  ``before_head``: its final GroupNorm, ReLU and pooling).
- ``"bn"`` (the official ``-hook bn``): ResNet: every ``BatchNorm2d``; BiT: the ``GroupNorm``
  layers of the last stage; the last of them is the output layer.
- ``"textures"``: the official code's choice for BiT, GAIA-Z and the Textures OOD set only:
  ``"before_head"`` with the final GroupNorm's output (before its ReLU; spatial) as the output
  layer instead of the pooled feature.

timm fuses a normalization and its activation in one module (``GroupNormAct``,
``BatchNormAct2d``: the norm, then ``drop``, then ``act``); the official layer is the norm
alone, before the ReLU, so for those the layer inspected is the norm's ``drop`` submodule (an
identity in evaluation mode, whose output is the normalized, not yet activated tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["CHOICES", "LayerChoice", "choose_layers"]

#: the named layer choices (module docstring)
CHOICES = ("norms", "before_head", "bn", "textures")


@dataclass(frozen=True)
class LayerChoice:
    """Qualified module names: the ``inner`` layers and the ``output`` layer (``None``: the
    head's input)."""

    inner: tuple[str, ...]
    output: str | None


def _fused_activation(module: nn.Module) -> bool:
    """timm's norm + activation modules: ``drop`` then a real ``act`` after the norm."""
    act, drop = getattr(module, "act", None), getattr(module, "drop", None)
    return (
        isinstance(act, nn.Module)
        and not isinstance(act, nn.Identity)
        and isinstance(drop, nn.Module)
    )


def _normalized(name: str, module: nn.Module) -> str:
    """The name of the module whose output is ``module``'s normalized, not activated, output."""
    return f"{name}.drop" if _fused_activation(module) else name


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _norms_in(model: nn.Module, prefix: str, kind: type | tuple[type, ...]) -> list[str]:
    """The normalization layers of type ``kind`` inside ``model.get_submodule(prefix)``."""
    root = model.get_submodule(prefix) if prefix else model
    return [
        _normalized(_joined(prefix, name), module)
        for name, module in root.named_modules()
        if isinstance(module, kind)
    ]


def _general(model: nn.Module) -> LayerChoice:
    norms = _norms_in(model, "", (_NormBase, nn.GroupNorm))
    if norms:
        return LayerChoice(tuple(norms), None)
    convolutions = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ValueError(
            f"GAIA's general layer rule inspects the normalization layers (BatchNorm, "
            f"InstanceNorm, GroupNorm) or else the Conv2d layers; {type(model).__name__} has "
            "neither: pass layers=[...] (qualified module names)"
        )
    return LayerChoice(tuple(convolutions), None)


def _architecture(model: nn.Module) -> str:
    """``resnet``, ``big_transfer`` (the official BiT module layout) or ``timm_bit``."""
    if isinstance(getattr(model, "layer3", None), nn.Module) and isinstance(
        getattr(model, "layer4", None), nn.Module
    ):
        return "resnet"
    body, before_head = getattr(model, "body", None), getattr(model, "before_head", None)
    if hasattr(body, "block4") and isinstance(getattr(before_head, "gn", None), nn.GroupNorm):
        return "big_transfer"
    stages, norm = getattr(model, "stages", None), getattr(model, "norm", None)
    if isinstance(stages, nn.Sequential) and len(stages) > 0 and isinstance(norm, nn.GroupNorm):
        return "timm_bit"
    raise ValueError(
        f"the official GAIA layer choices are defined for ResNet-18/34/50 (modules layer3 and "
        f"layer4) and BiT (big_transfer's body.block4 and before_head, or timm's ResNetV2); "
        f"{type(model).__name__} is neither: use layers='norms' or pass layers=[...]"
    )


def _official(model: nn.Module, choice: str) -> LayerChoice:
    architecture = _architecture(model)
    if architecture == "resnet":
        if choice == "textures":
            raise ValueError("the official 'textures' layer choice exists for BiT only")
        if choice == "bn":
            norms = _norms_in(model, "", nn.BatchNorm2d)
            return LayerChoice(tuple(norms[:-1]), norms[-1])
        inner = _norms_in(model, "layer3", nn.BatchNorm2d) + _norms_in(
            model, "layer4", nn.BatchNorm2d
        )
        return LayerChoice(tuple(inner), "layer4")
    last_stage = (
        "body.block4" if architecture == "big_transfer" else f"stages.{len(model.stages) - 1}"
    )
    norms = _norms_in(model, last_stage, nn.GroupNorm)
    if choice == "bn":
        return LayerChoice(tuple(norms[:-1]), norms[-1])
    if choice == "textures":
        final = (
            "before_head.gn" if architecture == "big_transfer" else _normalized("norm", model.norm)
        )
        return LayerChoice(tuple(norms), final)
    return LayerChoice(tuple(norms), "before_head" if architecture == "big_transfer" else None)


def choose_layers(model: nn.Module, choice: str = "norms") -> LayerChoice:
    """The layers of the named ``choice`` (:data:`CHOICES`, see the module docstring) in
    ``model``.

    :raises ValueError: for an unknown choice, an official choice on an architecture it is not
        defined for, or a model without the layers of the general rule
    """
    if choice not in CHOICES:
        raise ValueError(f"unknown GAIA layer choice '{choice}'; choices: {', '.join(CHOICES)}")
    return _general(model) if choice == "norms" else _official(model, choice)
