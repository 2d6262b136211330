"""The final classification layer ("head") of a model, and the features that enter it.

A head is an ``nn.Linear`` or a 1x1 ``nn.Conv2d`` applied to pooled features (BiT's
``head.conv``, timm ResNetV2's ``head.fc``). Its input is the penultimate feature ``h`` (B x D)
and its output the logits ``z`` (B x C): ``z = W h + b``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .capture import layer_outputs
from .shared import shared_for
from .validation import check_logits

__all__ = [
    "Head",
    "PenultimateEncoder",
    "check_deferred",
    "check_output_is_head_output",
    "find_head",
    "forward_logits",
    "forward_with_features",
    "module_name",
    "penultimate_encoder",
]


def _is_head_layer(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.groups == 1
        and module.dilation == (1, 1)
    )


def _outputs(layer: nn.Module) -> int:
    """The output width of a head layer (``nn.Linear`` or ``nn.Conv2d``)."""
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _describe(module: nn.Module) -> str:
    return type(module).__name__


@dataclass(frozen=True)
class Head:
    """A model's classification layer: its qualified ``name`` and the ``module`` itself."""

    name: str
    module: nn.Module

    @property
    def in_features(self) -> int:
        m = self.module
        return m.in_features if isinstance(m, nn.Linear) else m.in_channels

    @property
    def num_classes(self) -> int:
        return _outputs(self.module)

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight" if self.name else "weight"

    def logits(self, features: Tensor) -> Tensor:
        """Apply the head to pooled features ``h`` (B x D) and return logits (B x C)."""
        if isinstance(self.module, nn.Conv2d):
            return self.module(features[:, :, None, None]).flatten(1)
        return self.module(features)

    def pooled_features(self, head_input: Tensor) -> Tensor:
        """The head's input as B x D, or an error if it is not a pooled feature vector."""
        if head_input.ndim == 2:
            return head_input
        if head_input.ndim == 4 and head_input.shape[2:] == (1, 1):
            return head_input.flatten(1)
        raise ValueError(
            f"the head '{self.name}' receives input of shape {tuple(head_input.shape)}, not "
            "pooled features (B x D, or B x D x 1 x 1 for a 1x1 convolution); the head-only "
            "factorization needs pooled features: select the parameters explicitly "
            f"(params=['{self.name}']) for exact per-sample gradients instead"
        )


def _candidates(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if _is_head_layer(module)]


def _parameterized_leaves(model: nn.Module) -> list[str]:
    return [
        f"{name} ({_describe(module)})"
        for name, module in model.named_modules()
        if next(module.children(), None) is None
        and next(module.parameters(False), None) is not None
    ]


def _no_head_error(model: nn.Module, reason: str) -> ValueError:
    leaves = _parameterized_leaves(model)[-8:]
    return ValueError(
        f"no classification head found in {type(model).__name__}: {reason}. A head is an "
        "nn.Linear or a 1x1 nn.Conv2d on pooled features; pass head=<module name or module>. "
        f"Last modules with parameters: {', '.join(leaves) or 'none'}"
    )


def module_name(model: nn.Module, layer: str | nn.Module, what: str) -> str:
    """The qualified name of ``layer``, a module of ``model`` or its qualified name; ``what``
    (e.g. ``"the head"``) names it in errors.

    :raises ValueError: if ``layer`` is not a module of ``model``
    :raises TypeError: if it is neither a module nor a name
    """
    model_type = type(model).__name__
    if isinstance(layer, str):
        try:
            model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"{what} '{layer}' is not a module of {model_type}") from None
        return layer
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name
        raise ValueError(f"{what} given ({_describe(layer)}) is not a module of {model_type}")
    raise TypeError(
        f"{what} must be a module of the model or its qualified name, got {type(layer).__name__}"
    )


def find_head(model: nn.Module, head: str | nn.Module | None = None) -> Head:
    """Locate the classification layer of ``model``.

    :param head: ``None`` to take the last registered ``nn.Linear`` or 1x1 ``nn.Conv2d`` (the
        ``fc`` of torchvision ResNets, the last layer of VGG's or DenseNet's ``classifier``,
        ``head.fc`` of timm's ResNetV2, ``head.conv`` of big_transfer's BiT), a qualified
        module name, or the module itself
    :raises ValueError: if there is no such layer, or the given one is not a head layer or not
        part of ``model``; the message lists candidate modules
    """
    if head is not None:
        try:
            name = module_name(model, head, "the head")
        except ValueError as error:
            raise _no_head_error(model, str(error)) from None
        return _checked(model, name, model.get_submodule(name))
    candidates = _candidates(model)
    if not candidates:
        raise _no_head_error(model, "it has no nn.Linear and no 1x1 nn.Conv2d")
    return Head(candidates[-1], model.get_submodule(candidates[-1]))


def _checked(model: nn.Module, name: str, module: nn.Module) -> Head:
    if not _is_head_layer(module):
        raise _no_head_error(
            model, f"'{name}' is a {_describe(module)}, not an nn.Linear or a 1x1 nn.Conv2d"
        )
    return Head(name, module)


def _copies(inputs: tuple[Tensor, ...], output: Tensor) -> dict[str, Tensor]:
    return {"input": inputs[0].detach().clone(), "output": output.detach().clone()}


@contextmanager
def capture_head(head: Head) -> Iterator[list[dict[str, Tensor]]]:
    """Record copies of the head's input and output (``{"input": ..., "output": ...}``) on each
    forward pass inside the block.

    Copies, so that an in-place change after the head (``out /= T``) shows in a comparison
    with the model's output instead of reaching the record too.
    """
    with layer_outputs(head.module, {"head": head.module}, _copies) as captured:
        yield captured["head"]


def check_output_is_head_output(
    model: nn.Module,
    head: Head,
    logits: Tensor,
    head_output: Tensor,
    deferred: list[Tensor] | None = None,
) -> None:
    """Raise unless the model's logits equal, value for value, what its head returned.

    With ``deferred``, the values are compared on their device without waiting: a 0-dim
    boolean tensor (true where they differ) is appended to it, for :func:`check_deferred` to
    raise on after many batches (one host synchronization instead of one per batch).

    :raises ValueError: naming the head and both shapes if they differ (a wrongly guessed head,
        or a layer or an in-place operation after the head that changes the logits), and the
        layers that could be heads if several have as many outputs as there are logits
    """
    if head_output.numel() != logits.numel():
        raise ValueError(
            f"the model's output (shape {tuple(logits.shape)}) is not the output of its head "
            f"'{head.name}' (shape {tuple(head_output.shape)}): the head found is the last "
            "registered nn.Linear or 1x1 nn.Conv2d, which need not be the last one applied; "
            "pass the correct head=..."
        )
    # a cast after the head (e.g. autocast's bf16 to float32) keeps the values; NaN differs
    differs = (head_output.reshape(logits.shape).to(logits.dtype) != logits.detach()).any()
    if deferred is not None:
        deferred.append(differs)
    elif differs:
        raise _values_differ(model, head, logits.shape[1])


def check_deferred(model: nn.Module, head: Head, deferred: list[Tensor], width: int) -> None:
    """Raise as :func:`check_output_is_head_output` if a deferred comparison found a difference
    (``width``: the number of logits); empties ``deferred``."""
    differs = bool(torch.stack(deferred).any()) if deferred else False
    deferred.clear()
    if differs:
        raise _values_differ(model, head, width)


def _values_differ(model: nn.Module, head: Head, width: int) -> ValueError:
    return ValueError(
        f"the model's output is not the output of its head '{head.name}' (a layer or an "
        "in-place operation after the head changes the logits); pass the correct head=..., "
        "or select parameters with params=... for exact per-sample gradients through it"
        + _several_heads(model, width)
    )


def _several_heads(model: nn.Module, width: int) -> str:
    """A note naming the head layers with ``width`` outputs, if there are several."""
    names = [n for n, m in model.named_modules() if _is_head_layer(m) and _outputs(m) == width]
    if len(names) < 2:
        return ""
    return (
        f". Layers with {width} outputs: {', '.join(names)}; if the logits combine several of "
        "them (e.g. two averaged heads, as in distilled DeiT), no single head gives them"
    )


def forward_with_features(
    model: nn.Module, head: Head, x: Tensor, deferred: list[Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """One forward pass: the model's logits (B x C) and the head's pooled input (B x D); with
    ``deferred``, the check of the logits against the head's output is left to
    :func:`check_deferred` (see :func:`check_output_is_head_output`).

    :raises ValueError: if the head did not run, or if the model's output is not, by value, the
        head's output (then the logits cannot be recomputed from the features)
    """
    with capture_head(head) as calls:
        logits = forward_logits(model, x)
    if not calls:
        raise ValueError(f"the head '{head.name}' was not called in the model's forward pass")
    record = calls[-1]  # the call whose output the model returns, if any
    features = head.pooled_features(record["input"])
    check_output_is_head_output(model, head, logits, record["output"], deferred)
    return logits, features


def forward_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The model's output as logits, B x C (any head, or none; nothing is captured).

    :raises ValueError: if the model does not return one tensor row per input
    """
    logits = check_logits(model(x), x.shape[0])
    return logits.reshape(logits.shape[0], -1)


class PenultimateEncoder(nn.Module):
    """``x -> h``: runs the whole model and returns the pooled input of its head (B x D)."""

    def __init__(self, model: nn.Module, head: Head):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return forward_with_features(self.model, self.head, x)[1]


def penultimate_encoder(
    model: nn.Module, head: str | nn.Module | None = None
) -> PenultimateEncoder:
    """The encoder for ``model``'s penultimate features; one shared object per (model, head).

    Sharing lets pytorch-ood's ``Benchmark.evaluate``, whose cache is keyed by the encoder's
    identity, run the model once for every detector built on the same features.
    """
    found = find_head(model, head)
    return shared_for(model, ("penultimate", found.name), lambda: PenultimateEncoder(model, found))
