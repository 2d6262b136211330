"""Side-by-side timing: paired rounds, their ratios, and a verdict against a target.

One *round* times workload ``a`` and workload ``b`` back to back (the order alternates from
round to round), so both see the same machine state; the round's ratio is ``t_a / t_b``. On a
shared CPU whose speed drifts within seconds, ratios of such pairs are far steadier than ratios
of separately timed benchmarks. A ratio is summarized by the median of at least five rounds and
the interquartile range (IQR) of the rounds, and judged against a bound:

- ``met``: the whole IQR is on the target's side of the bound;
- ``missed``: the whole IQR is on the other side;
- ``inconclusive``: the IQR straddles the bound (the spread is too wide to tell);
- ``reported``: the ratio has no target here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "INCONCLUSIVE",
    "MET",
    "MISSED",
    "REPORTED",
    "PairedRatio",
    "PairedRounds",
    "SpeedCheck",
    "Target",
    "paired_ratio",
]

MET, MISSED, INCONCLUSIVE, REPORTED = "met", "missed", "inconclusive", "reported"
MIN_ROUNDS = 5


@dataclass(frozen=True)
class Target:
    """``ratio >= bound`` (``at_least``) or ``ratio <= bound``; ``bound=None``: reported only."""

    bound: float | None = None
    at_least: bool = True

    def __str__(self) -> str:
        if self.bound is None:
            return "reported"
        return f"{'>=' if self.at_least else '<='} {self.bound:g}"

    def holds(self, ratio: float) -> bool:
        assert self.bound is not None
        return ratio >= self.bound if self.at_least else ratio <= self.bound


@dataclass(frozen=True)
class PairedRatio:
    """The ratios ``t_a / t_b`` of paired rounds."""

    ratios: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.ratios) < MIN_ROUNDS:
            raise ValueError(f"need at least {MIN_ROUNDS} paired rounds, got {len(self.ratios)}")

    @property
    def median(self) -> float:
        return float(np.median(self.ratios))

    @property
    def iqr(self) -> tuple[float, float]:
        """The 25th and 75th percentiles of the rounds' ratios (linear interpolation)."""
        low, high = np.percentile(self.ratios, [25, 75])
        return float(low), float(high)

    def verdict(self, target: Target) -> str:
        if target.bound is None:
            return REPORTED
        low, high = self.iqr
        if target.holds(low) and target.holds(high):
            return MET
        if not target.holds(low) and not target.holds(high):
            return MISSED
        return INCONCLUSIVE

    def scaled(self, factor: float) -> PairedRatio:
        """Every round's ratio times ``factor`` (e.g. per image -> per batch)."""
        return PairedRatio(tuple(r * factor for r in self.ratios))


def _synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _seconds(work: Callable[[], object], device: str | torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    work()
    _synchronize(device)
    return time.perf_counter() - start


class PairedRounds:
    """Calling it runs one paired round of ``a`` and ``b`` (CUDA synchronized; the order
    alternates) and keeps the ratio ``t_a / t_b``; hand it to a timer such as pytest-benchmark's
    ``pedantic`` as the function to time, or use :func:`paired_ratio`."""

    def __init__(
        self, a: Callable[[], object], b: Callable[[], object], device: str | torch.device
    ):
        self.a, self.b, self.device = a, b, device
        self.ratios: list[float] = []

    def rounds_for(self, budget_s: float, min_rounds: int = MIN_ROUNDS, max_rounds: int = 50):
        """Warm up (one call of each) and return how many rounds fit in ``budget_s`` seconds,
        between ``min_rounds`` and ``max_rounds``."""
        pair_s = _seconds(self.a, self.device) + _seconds(self.b, self.device)
        return max(min_rounds, min(max_rounds, math.floor(budget_s / max(pair_s, 1e-9))))

    def __call__(self) -> None:
        if len(self.ratios) % 2 == 0:
            t_a = _seconds(self.a, self.device)
            t_b = _seconds(self.b, self.device)
        else:
            t_b = _seconds(self.b, self.device)
            t_a = _seconds(self.a, self.device)
        self.ratios.append(t_a / t_b)

    def result(self) -> PairedRatio:
        return PairedRatio(tuple(self.ratios))


def paired_ratio(
    a: Callable[[], object],
    b: Callable[[], object],
    *,
    device: str | torch.device = "cpu",
    budget_s: float = 2.0,
    min_rounds: int = MIN_ROUNDS,
) -> PairedRatio:
    """The ratio ``t_a / t_b`` of as many paired rounds as fit in ``budget_s`` seconds after a
    warm-up call of each (at least ``min_rounds``)."""
    rounds = PairedRounds(a, b, device)
    for _ in range(rounds.rounds_for(budget_s, min_rounds)):
        rounds()
    return rounds.result()


@dataclass(frozen=True)
class SpeedCheck:
    """One side-by-side target of a run: what was compared where, and the verdict.

    ``ratio`` is a :class:`PairedRatio`, or a single number for a measurement without spread
    (peak memory); ``note`` says how it was measured where that is not obvious.
    """

    setting: str
    what: str
    ratio: PairedRatio | float
    target: Target
    note: str = ""

    @property
    def median(self) -> float:
        return self.ratio.median if isinstance(self.ratio, PairedRatio) else float(self.ratio)

    @property
    def verdict(self) -> str:
        if isinstance(self.ratio, PairedRatio):
            return self.ratio.verdict(self.target)
        if self.target.bound is None:
            return REPORTED
        return MET if self.target.holds(self.ratio) else MISSED

    def line(self) -> str:
        """E.g. ``GradNorm / MSP throughput  resnet18 32px b64  0.97x [0.95-0.99]  >= 0.95  met``
        (the median and the interquartile range of the rounds)."""
        bound = self.target.bound
        value = f"{_figure(self.median, bound)}x"
        if isinstance(self.ratio, PairedRatio):
            low, high = self.ratio.iqr
            value += f" [{_figure(low, bound)}-{_figure(high, bound)}]"
        target = "-" if self.target.bound is None else str(self.target)
        return f"{self.what:<34} {self.setting:<20} {value:<20} {target:<7} {self.verdict}"


def _figure(value: float, bound: float | None) -> str:
    """``value`` with 3 significant digits, more (up to 6) where it would print as ``bound``
    without being equal to it: the figures never contradict the verdict."""
    for digits in range(3, 7):
        text = f"{value:#.{digits}g}".rstrip(".")
        if bound is None or value == bound or float(text) != bound:
            return text
    return text
