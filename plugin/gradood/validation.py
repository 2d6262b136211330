"""Argument and tensor checks shared by the detectors: errors that name the problem."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_channel_values",
    "check_finite",
    "check_norm_order",
    "check_number",
    "check_positive_int",
    "check_temperature",
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
