"""Input perturbations of the paper's Mahalanobis detector: the official sign, the per-layer
preprocessing step and FGSM examples, with steps divided by the normalization's per-channel
standard deviation where it is given (pixel units)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...grad_mode import autograd_enabled

__all__ = ["ADVERSARIAL_STEP", "fgsm", "official_sign"]

#: the FGSM perturbation size of the regression's "OOD" examples
ADVERSARIAL_STEP = 0.05


def official_sign(gradient: Tensor) -> Tensor:
    """The official codes' sign: +1 where ``gradient >= 0`` (zero included), -1 elsewhere."""
    one = torch.ones((), dtype=gradient.dtype, device=gradient.device)
    return torch.where(gradient >= 0, one, -one)


def per_channel(values: Sequence[float], like: Tensor) -> Tensor:
    shape = (1, -1) + (1,) * (like.ndim - 2)
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(shape)


def check_channels(values: Sequence[float] | None, x: Tensor, what: str) -> None:
    if values is not None and (x.ndim < 2 or x.shape[1] != len(values)):
        raise ValueError(
            f"{what} has {len(values)} channels but the inputs have shape {tuple(x.shape)} "
            "(channels on axis 1)"
        )


def input_gradient(loss: Tensor, x: Tensor) -> Tensor:
    (gradient,) = torch.autograd.grad(loss, x)
    return gradient


def signed_step(gradient: Tensor, norm_std: Sequence[float] | None) -> Tensor:
    step = official_sign(gradient)
    return step if norm_std is None else step / per_channel(norm_std, step)


@contextmanager
def gradients_enabled() -> Iterator[None]:
    if torch.is_inference_mode_enabled():
        warnings.warn(
            "MahalanobisEnsemble needs input gradients; inference mode is disabled for it",
            stacklevel=4,
        )
    with autograd_enabled():
        yield


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    step: float = ADVERSARIAL_STEP,
    *,
    norm_std: Sequence[float] | None = None,
    norm_mean: Sequence[float] | None = None,
    clamp: tuple[float, float] | None = None,
) -> Tensor:
    """FGSM examples as the official tuning script makes them (true labels, official sign):

    :math:`x_{adv} = \\mathrm{clip}(x + \\delta \\, s(\\nabla_x \\mathrm{CE}(f(x), y)) / \\sigma)`.

    :param step: :math:`\\delta`; in pixel units with ``norm_std``, else in model-input units
    :param norm_std: per-channel std :math:`\\sigma` of the input normalization, or ``None``
    :param norm_mean: per-channel mean of the input normalization (needed to clamp with
        ``norm_std``)
    :param clamp: ``(low, high)`` bounds: pixel values with ``norm_std`` (mapped through the
        normalization), else bounds on the model inputs themselves; ``None``: no clamping
    """
    check_channels(norm_std, x, "norm_std")
    with gradients_enabled():
        inputs = x.detach().clone().requires_grad_()
        gradient = input_gradient(F.cross_entropy(model(inputs), y), inputs)
    adversarial = x.detach() + step * signed_step(gradient, norm_std)
    if clamp is None:
        return adversarial
    low, high = _bounds(clamp, norm_mean, norm_std, adversarial)
    return torch.maximum(torch.minimum(adversarial, high), low)


def _bounds(
    clamp: tuple[float, float],
    norm_mean: Sequence[float] | None,
    norm_std: Sequence[float] | None,
    like: Tensor,
) -> tuple[Tensor, Tensor]:
    low, high = (torch.tensor(v, dtype=like.dtype, device=like.device) for v in clamp)
    if norm_std is None:
        return low, high
    if norm_mean is None:
        raise ValueError("clamping pixel values through the normalization needs norm_mean")
    check_channels(norm_mean, like, "norm_mean")
    mean, std = per_channel(norm_mean, like), per_channel(norm_std, like)
    return (low - mean) / std, (high - mean) / std
