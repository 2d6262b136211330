"""Argument and tensor checks shared by the detectors: errors that name the problem."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["check_finite", "check_norm_order", "check_temperature"]


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
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a finite number > 0, got {temperature!r}")
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def check_finite(tensor: Tensor, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` and the count if ``tensor`` has NaN or inf entries."""
    if tensor.is_floating_point() or tensor.is_complex():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{what} contain {bad} non-finite values (NaN or inf)")
