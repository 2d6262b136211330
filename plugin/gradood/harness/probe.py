"""A short timed probe of a model on the run's device: images per second of a forward pass
(no gradients) and of a training step (forward, backward, SGD step), for the plan's estimate."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Speed", "probe"]

#: seconds of timed repetitions per measurement (after one untimed warm-up)
_PROBE_SECONDS = 0.3
_MAX_REPEATS = 5


@dataclass(frozen=True)
class Speed:
    """Images per second of ``model`` at one input size on one device."""

    forward: float
    training: float


def _batch_size(device: torch.device, pixels: int) -> int:
    """Small images (CIFAR's): the training batch on a GPU; large ones (BiT's 480 x 480): a
    batch whose training step fits in a GPU's memory."""
    small = pixels <= 64 * 64
    if device.type == "cuda":
        return 128 if small else 16
    return 32 if small else 1


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step, batch: int, device: torch.device) -> float:
    """Images per second of ``step()`` on batches of ``batch``: one warm-up, then repeats for
    about :data:`_PROBE_SECONDS`."""
    step()
    _synchronize(device)
    start, repeats = time.perf_counter(), 0
    while repeats < _MAX_REPEATS and (repeats == 0 or time.perf_counter() - start < _PROBE_SECONDS):
        step()
        repeats += 1
        _synchronize(device)
    return batch * repeats / (time.perf_counter() - start)


def probe(model: nn.Module, size: tuple[int, int], device: str | torch.device) -> Speed:
    """Time a copy of ``model`` on random inputs of ``size`` (height, width) on ``device``
    (``model`` itself is left as it is; the device's memory is given back after)."""
    device = torch.device(device)
    try:
        return _probe(model, size, device)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _probe(model: nn.Module, size: tuple[int, int], device: torch.device) -> Speed:
    import copy

    batch = _batch_size(device, size[0] * size[1])
    inputs = torch.randn(batch, 3, *size, device=device)
    model = copy.deepcopy(model).to(device)

    @torch.no_grad()
    def forward() -> None:
        model.eval()(inputs)

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def training() -> None:
        logits = model.train()(inputs)
        optimizer.zero_grad(set_to_none=True)
        logits.float().logsumexp(1).mean().backward()
        optimizer.step()

    return Speed(_rate(forward, batch, device), _rate(training, batch, device))
