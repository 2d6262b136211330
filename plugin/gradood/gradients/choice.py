"""Which of a rule's exact forms runs: each candidate timed once on first use, the fastest
cached in memory per key (layer shape, input shape, device, dtype, order).

All candidates compute the same statistic exactly (they differ by rounding only), so the
choice changes the time and never the result. Counting multiply-adds does not predict the
time: for a 16-channel convolution on a 32 x 32 map, unfolding the patches moves 9 times the
input through memory, and per-position Gram matrices cost :math:`L^2` for :math:`L = 1024`;
one per-sample convolution backward does neither. Timing the candidates on the call itself
measures what matters on this device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

__all__ = ["chosen_forms", "clear_choices", "fastest"]

#: key -> the name of the fastest candidate
_CHOICES: dict[Hashable, str] = {}
#: timed runs of each candidate on first use (the fastest run counts)
TRIALS = 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest(
    key: Hashable, candidates: dict[str, Callable[[], Tensor]], device: torch.device
) -> Tensor:
    """The result of the cached choice for ``key``; on first use, every candidate runs
    :data:`TRIALS` times in alternation, the one with the fastest run is cached, and its
    result is returned. A single candidate runs once, untimed."""
    name = _CHOICES.get(key)
    if name is not None and name in candidates:
        return candidates[name]()
    if len(candidates) == 1:
        return next(iter(candidates.values()))()
    best: dict[str, float] = dict.fromkeys(candidates, float("inf"))
    results: dict[str, Tensor] = {}
    for _ in range(TRIALS):
        for candidate, compute in candidates.items():
            _synchronize(device)
            start = time.perf_counter()
            results[candidate] = compute()
            _synchronize(device)
            best[candidate] = min(best[candidate], time.perf_counter() - start)
    name = min(best, key=best.__getitem__)
    _CHOICES[key] = name
    return results[name]


def chosen_forms() -> dict[Hashable, str]:
    """A copy of the cache: key -> the chosen candidate."""
    return dict(_CHOICES)


def clear_choices() -> None:
    """Forget every choice (the next call of each key times its candidates again)."""
    _CHOICES.clear()
