"""Gradients also under ``torch.inference_mode()``: the one place where a detector that
differentiates leaves inference mode.

``torch.enable_grad()`` alone does not leave inference mode, and what autograd does inside it
depends on the torch version: a plain backward raises, and ``torch.func.grad`` (with ``vmap``)
silently returns zero gradients on torch 2.1 to 2.8 (correct on 2.15). So every detector that
takes gradients to score runs that step inside :func:`autograd_enabled`, on inputs made
ordinary by :func:`ordinary`: gradood's own detectors, and pytorch-ood's through
:class:`OutsideInferenceMode` (the registry's recipe of ``graduncertainty``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = ["OutsideInferenceMode", "autograd_enabled", "ordinary"]


@contextmanager
def autograd_enabled() -> Iterator[None]:
    """Inference mode off and gradients on for the ``with`` block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def ordinary(tensor: Tensor) -> Tensor:
    """``tensor``, or a copy of it if it is an inference tensor (autograd cannot record
    operations on one). Call it inside :func:`autograd_enabled`: a copy made in inference mode
    is an inference tensor again."""
    return tensor.clone() if tensor.is_inference() else tensor


class OutsideInferenceMode:
    """Mixin for a pytorch-ood detector that takes gradients in ``predict``: it scores inside
    :func:`autograd_enabled`, its input made :func:`ordinary`. Put it first among the bases."""

    def predict(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The base class's ``predict``, outside inference mode."""
        with autograd_enabled():
            return super().predict(ordinary(x), *args, **kwargs)  # type: ignore[misc]
