"""BiT-S-R101x1, the paper's ImageNet model: timm's ResNetV2 with the authors' checkpoint.

The official code defines the model in big_transfer's layout and loads the authors' fine-tuned
``BiT-S-R101x1-flat-finetune.pth.tar``. timm's ``resnetv2_101x1_bit`` is the same network:
a 7x7/2 weight-standardized root convolution, zero padding by 1 and a 3x3/2 max pool; four
stages of [3, 4, 23, 3] pre-activation bottlenecks (GroupNorm(32) + ReLU before each
convolution, the stride on the 3x3 convolution, a 1x1 projection of the pre-activated input on
the first unit of each stage); a final GroupNorm + ReLU, global average pooling and a 1x1
convolution head with bias. Only the names differ (see :func:`big_transfer_to_timm`), and one
constant: both standardize each convolution kernel as

.. math:: \\hat W = (W - \\mathrm{mean}(W)) / \\sqrt{\\mathrm{var}(W) + \\epsilon}

per output channel with the biased variance, but big_transfer uses :math:`\\epsilon = 10^{-10}`
and timm's BiT models :math:`10^{-8}`. :func:`bit_s_r101x1` sets :math:`10^{-10}`, so that
the model computes exactly the official function.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

import timm
import torch
from timm.layers import StdConv2d
from torch import Tensor, nn

__all__ = [
    "BIG_TRANSFER_STD_CONV_EPS",
    "BIT_S_R101X1_URL",
    "big_transfer_to_timm",
    "bit_s_r101x1",
    "load_big_transfer_checkpoint",
]

#: the official StdConv2d's epsilon inside the square root (timm's BiT models use 1e-8)
BIG_TRANSFER_STD_CONV_EPS = 1e-10

#: where the authors publish the fine-tuned checkpoint (official README)
BIT_S_R101X1_URL = (
    "http://pages.cs.wisc.edu/~huangrui/finetuned_model/BiT-S-R101x1-flat-finetune.pth.tar"
)

_LISTED_KEYS = 20  # per kind of mismatch in an error message

# big_transfer module name <-> timm module name, inside a unit / block
_UNIT_MODULES = {
    "gn1": "norm1",
    "conv1": "conv1",
    "gn2": "norm2",
    "conv2": "conv2",
    "gn3": "norm3",
    "conv3": "conv3",
    "downsample": "downsample.conv",
}
_TOP_LEVEL = {
    "root.conv.weight": "stem.conv.weight",
    "before_head.gn.weight": "norm.weight",
    "before_head.gn.bias": "norm.bias",
    "head.conv.weight": "head.fc.weight",
    "head.conv.bias": "head.fc.bias",
}
# big_transfer's own ResNetV2 keeps the final GroupNorm in its head (``head.gn``, then ReLU,
# pooling and ``head.conv``); the authors' GradNorm code moved it to ``before_head.gn``
_OWN_HEAD_NORM = {"head.gn.weight": "norm.weight", "head.gn.bias": "norm.bias"}
_BIG_TRANSFER_UNIT = re.compile(r"body\.block(\d+)\.unit(\d+)\.(\w+)\.(weight|bias)")
_TIMM_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.([\w.]+)\.(weight|bias)")


def _timm_key(key: str) -> str:
    """big_transfer name -> timm name; names of neither layout come back unchanged."""
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key]
    if key in _OWN_HEAD_NORM:
        return _OWN_HEAD_NORM[key]
    match = _BIG_TRANSFER_UNIT.fullmatch(key)
    if match is None or match[3] not in _UNIT_MODULES:
        return key
    block, unit, module, param = match.groups()
    return f"stages.{int(block) - 1}.blocks.{int(unit) - 1}.{_UNIT_MODULES[module]}.{param}"


def _big_transfer_key(key: str) -> str:
    """timm name -> big_transfer name (for error messages in the checkpoint's own terms)."""
    top_level = {timm_key: bit_key for bit_key, timm_key in _TOP_LEVEL.items()}
    if key in top_level:
        return top_level[key]
    unit_modules = {timm_name: bit_name for bit_name, timm_name in _UNIT_MODULES.items()}
    match = _TIMM_BLOCK.fullmatch(key)
    if match is None or match[3] not in unit_modules:
        return key
    stage, block, module, param = match.groups()
    return f"body.block{int(stage) + 1}.unit{int(block) + 1:02d}.{unit_modules[module]}.{param}"


def big_transfer_to_timm(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a big_transfer ``ResNetV2`` state dict to timm's ``ResNetV2`` names.

    A leading ``module.`` (saved under ``DataParallel``) is dropped. ``root.conv`` ->
    ``stem.conv``; ``body.block{B}.unit{UU}.{gn1,conv1,gn2,conv2,gn3,conv3}`` ->
    ``stages.{B-1}.blocks.{UU-1}.{norm1,conv1,norm2,conv2,norm3,conv3}``;
    ``...unit{UU}.downsample`` (a convolution) -> ``...blocks.{UU-1}.downsample.conv``;
    the final GroupNorm ``before_head.gn`` (the GradNorm authors' layout) or ``head.gn``
    (big_transfer's own, as its training code saves it) -> ``norm``; ``head.conv`` ->
    ``head.fc``. Tensors are not copied, and
    other names pass unchanged (a timm-layout state dict maps to itself).
    """
    renamed = {}
    for key, value in state_dict.items():
        name = _timm_key(key.removeprefix("module."))
        if name in renamed:
            raise ValueError(f"two checkpoint entries map to the same parameter '{name}'")
        renamed[name] = value
    return renamed


def _listing(kind: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    more = f" (and {len(keys) - _LISTED_KEYS} more)" if len(keys) > _LISTED_KEYS else ""
    return f"\n  {len(keys)} {kind}: {shown}{more}"


def _check_fits(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(_big_transfer_key(k) for k in expected.keys() - state_dict.keys())
    unexpected = sorted(_big_transfer_key(k) for k in state_dict.keys() - expected.keys())
    mismatched = sorted(
        f"{_big_transfer_key(k)} {tuple(state_dict[k].shape)} (model: {tuple(expected[k].shape)})"
        for k in expected.keys() & state_dict.keys()
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"the checkpoint {source} does not fit {type(model).__name__} "
            f"({len(expected)} tensors; big_transfer names):"
            + (_listing("missing", missing) if missing else "")
            + (_listing("unexpected", unexpected) if unexpected else "")
            + (_listing("with other shapes", mismatched) if mismatched else "")
        )


def _describe(content: object) -> str:
    if isinstance(content, Mapping):
        return f"a dict with keys {sorted(map(str, content))[:10]}"
    return f"a {type(content).__name__}"


def _read_checkpoint(path: str | os.PathLike) -> Mapping[str, Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no BiT checkpoint at '{path}'; the paper's BiT-S-R101x1 is {BIT_S_R101X1_URL}"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"'{path}' cannot be read with torch.load(weights_only=True) (it holds more than "
            "tensors and plain containers); if you trust it, load it yourself and pass its "
            f"state dict to big_transfer_to_timm: {error}"
        ) from None
    except Exception as error:  # torch.load fails on empty or truncated files in many ways
        raise ValueError(
            f"'{path}' cannot be read as a checkpoint (empty, truncated or not a torch file?): "
            f"{type(error).__name__}: {error}"
        ) from error
    state_dict = content.get("model", content) if isinstance(content, Mapping) else None
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, Tensor) for v in state_dict.values()
    ):
        raise ValueError(
            f"'{path}' is not a BiT checkpoint: expected a dict whose 'model' entry is a state "
            f"dict (or a state dict), got {_describe(content)}"
        )
    return state_dict


def load_big_transfer_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a big_transfer checkpoint into a timm ``ResNetV2``, strictly; returns ``model``.

    The file is read with ``torch.load(weights_only=True)``: a dict whose ``"model"`` entry is a
    state dict in big_transfer's layout (as the authors publish it, or as big_transfer's own
    training code saves it, with ``head.gn``), or such a state dict.

    :raises FileNotFoundError: if there is no file at ``path``
    :raises ValueError: if the file cannot be read (empty, truncated), is not such a
        checkpoint, holds both layouts' final norm, or does not fit ``model``; the message names
        the file and lists the missing and unexpected keys and the shape mismatches
    """
    state_dict = big_transfer_to_timm(_read_checkpoint(path))
    _check_fits(model, state_dict, f"'{path}'")
    model.load_state_dict(state_dict, strict=True)
    return model


def bit_s_r101x1(checkpoint: str | os.PathLike | None = None, num_classes: int = 1000) -> nn.Module:
    """BiT-S-R101x1 as timm's ``resnetv2_101x1_bit``, numerically the official model.

    Never downloads: timm builds the architecture (``pretrained=False``); the weights come from
    ``checkpoint``, the authors' ``BiT-S-R101x1-flat-finetune.pth.tar``
    (:data:`~gradood.models.bit.BIT_S_R101X1_URL`) or a checkpoint of this architecture saved by
    big_transfer's own code (``head.gn``), loaded strictly. The head is ``head.fc``, a 1x1
    convolution (2048 -> ``num_classes``, with bias) on pooled features; logits are its output
    flattened, as the official ``x[..., 0, 0]``. Inputs: see
    :data:`gradood.models.BIT_S_R101X1 <gradood.models.preprocessing.BIT_S_R101X1>`. Returned in
    eval mode (GroupNorm has no running statistics and there is no dropout, so the mode does not
    change the outputs).

    :raises FileNotFoundError, ValueError: see :func:`load_big_transfer_checkpoint`
    """
    model = timm.create_model("resnetv2_101x1_bit", pretrained=False, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, StdConv2d):
            module.eps = BIG_TRANSFER_STD_CONV_EPS
    if checkpoint is not None:
        load_big_transfer_checkpoint(model, checkpoint)
    return model.eval()
