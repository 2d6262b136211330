"""Argument and tensor checks shared by the detectors: errors that name the problem."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "check_channel_values",
    "check_finite",
    "check_finite_scores",
    "check_inputs",
    "check_logits",
    "check_norm_order",
    "check_number",
    "check_positive_int",
    "check_temperature",
    "settings_text",
    "warn_if_training",
]


def check_number(value: Any, what: str, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with ``allow_zero``), as a float.

    :raises TypeError: if ``value`` is not a real number (bools are not)
    :raises ValueError: if it is not finite or out of range
    """
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a finite number {bound}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{what} must be a finite number {bound}, got {value}")
    return value


def check_positive_int(value: Any, what: str) -> int:
    """An integer >= 1 (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def check_channel_values(
    value: float | Sequence[float], what: str, *, positive: bool = False
) -> tuple[float, ...]:
    """Per-channel values (one number is one channel): finite, and > 0 with ``positive``."""
    values = (value,) if isinstance(value, numbers.Real) else tuple(value)
    valid = all(
        isinstance(v, numbers.Real) and math.isfinite(v) and (v > 0 or not positive) for v in values
    )
    if not values or not valid:
        kind = "positive" if positive else "finite"
        raise ValueError(f"{what} must be a {kind} number or a sequence of them, got {value!r}")
    return tuple(float(v) for v in values)


def check_norm_order(p: float) -> float:
    """``p`` of an entrywise L_p norm: a real number > 0, or ``float("inf")``."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be a real number > 0 or float('inf'), got {p!r}")
    p = float(p)
    if math.isnan(p) or p <= 0:
        raise ValueError(f"p must be > 0 (or float('inf')), got {p}")
    return p


def check_temperature(temperature: float) -> float:
    """A softmax temperature: a finite real number > 0."""
    return check_number(temperature, "temperature")


def check_finite(tensor: Tensor, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` and the count if ``tensor`` has NaN or inf entries."""
    if tensor.is_floating_point() or tensor.is_complex():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{what} contain {bad} non-finite values (NaN or inf)")


def check_logits(output: Any, rows: int | None = None) -> Tensor:
    """The model's output, which must be a logits tensor of B x ... (``rows`` = B if given).

    :raises ValueError: saying what the model returned instead (e.g. a tuple or a dict)
    """
    if not isinstance(output, Tensor):
        kind = type(output).__name__
        if isinstance(output, (tuple, list)):
            kind = f"a {kind} of {len(output)}"
        elif isinstance(output, dict):
            kind = f"a dict with keys {', '.join(map(str, output))}"
        raise ValueError(
            f"the model must return a logits tensor with one row per input, got {kind}: wrap "
            "it so that its forward returns the logits alone"
        )
    if output.ndim == 0 or (rows is not None and output.shape[0] != rows):
        raise ValueError(
            f"the model must return a logits tensor with one row per input, got shape "
            f"{tuple(output.shape)} for {rows} inputs"
        )
    return output


def settings_text(settings: Mapping[str, Any]) -> str:
    """``name=value, ...`` (floats in ``%g``)."""
    return ", ".join(f"{name}={_format(value)}" for name, value in settings.items())


def _format(value: Any) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return f"{float(value):g}"
    return str(value)


def check_finite_scores(scores: Tensor, detector: str, settings: Mapping[str, Any]) -> Tensor:
    """``scores``, if all are finite; else a ``ValueError`` naming the detector, its settings
    and how many of how many samples: a NaN or inf score is never passed on to the metrics
    (they would rank it as the most or least OOD)."""
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"{detector} ({settings_text(settings)}): {bad} of {scores.numel()} scores are not "
            "finite (NaN or inf); the metrics need finite scores"
        )
    return scores


def check_loader_batch(batch: Any, who: str) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of one batch of a loader of ``(inputs, labels)`` batches: ``x`` a tensor with a
    batch axis (B x C x H x W for an image model), ``y`` one label per input.

    :raises ValueError: saying what ``who`` expected and what the batch was
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        tensor = isinstance(batch, Tensor)
        got = f"a tensor of shape {tuple(batch.shape)}" if tensor else _kind(batch)
        hint = "; a tensor is not a loader: DataLoader(TensorDataset(x, y), batch_size=...)"
        raise ValueError(
            f"{who} takes a loader of (x, y) batches (x: inputs B x C x H x W, y: B labels), "
            f"got a batch that is {got}{hint if tensor else ''}"
        )
    x, y = batch[0], torch.as_tensor(batch[1])
    if not isinstance(x, Tensor) or x.ndim < 2 or y.ndim != 1 or len(y) != len(x):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{who} takes (x, y) batches with inputs B x C x H x W and B labels, got inputs "
            f"{shape} and labels of shape {tuple(y.shape)}"
        )
    return x, y


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def check_input_batch(x: Any, sample_shape: Sequence[int] | None, who: str) -> Tensor:
    """``x``: a tensor of inputs, a batch axis before one sample's axes; with ``sample_shape``
    (one sample's shape, e.g. C x H x W, where known), as many axes as it has (sizes may
    differ).

    :raises ValueError: saying what ``who`` expected and what ``x`` was
    """
    axes = None if sample_shape is None else 1 + len(sample_shape)
    if isinstance(x, Tensor) and x.ndim >= 1 and axes in (None, x.ndim):
        return x
    if sample_shape is None:
        raise ValueError(f"{who} takes a tensor of inputs with a batch axis, got {x!r:.80}")
    expected = " x ".join(["B", *map(str, sample_shape)])
    got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
    single = isinstance(x, Tensor) and x.ndim + 1 == axes
    hint = "; one sample needs a batch axis: x.unsqueeze(0)" if single else ""
    raise ValueError(
        f"{who} takes a batch of inputs {expected} (as many axes as the inputs it was fitted "
        f"on), got {got}{hint}"
    )


def check_inputs(x: Any, device: torch.device | None, who: str) -> Tensor:
    """``x``, a tensor of finite inputs with a batch axis (``check_input_batch``), on
    ``device`` (``None``: where it is); an empty batch is returned as it is.

    :raises ValueError: saying what ``who`` expected and what ``x`` was, or counting its
        non-finite values
    """
    x = check_input_batch(x, None, who)
    if device is not None:
        x = x.to(device)
    check_finite(x, "inputs")
    return x


def warn_if_training(model: nn.Module, who: str) -> None:
    """Warn, naming ``who``, if ``model`` is in training mode (its caller's caller is blamed)."""
    if model.training:
        warnings.warn(
            f"{who}: the model is in training mode (dropout and batch statistics change the "
            "scores); call model.eval() as the official code does",
            stacklevel=3,
        )
