"""The slowest transfer a download accepts: a minimum rate over a window of time, as curl's
``--speed-limit`` / ``--speed-time``.

A transfer whose average rate over a whole window of ``speed_time`` seconds stays below
``min_speed`` bytes per second ends (windows follow one another from the transfer's start). The
defaults, :data:`DEFAULT_MIN_SPEED` over :data:`DEFAULT_SPEED_TIME`, hold wherever a download
is not given its own; :func:`speed_limit` sets them for a block (the harness's options do).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MIN_SPEED",
    "DEFAULT_SPEED_TIME",
    "SpeedLimit",
    "SpeedWatch",
    "current_speed_limit",
    "speed_limit",
]

#: bytes per second: 1 KiB/s
DEFAULT_MIN_SPEED = 1024.0
#: seconds
DEFAULT_SPEED_TIME = 60.0


@dataclass(frozen=True)
class SpeedLimit:
    """At least ``min_speed`` bytes per second (``0``: no minimum) on average over every window
    of ``speed_time`` seconds.

    :raises ValueError: if ``min_speed`` is not a finite number >= 0 or ``speed_time`` not a
        finite number > 0
    """

    min_speed: float = DEFAULT_MIN_SPEED
    speed_time: float = DEFAULT_SPEED_TIME

    def __post_init__(self) -> None:
        if not _is_number(self.min_speed) or not self.min_speed >= 0:
            raise ValueError(
                f"min_speed must be a finite number >= 0 (bytes/s), got {self.min_speed!r}"
            )
        if not _is_number(self.speed_time) or not self.speed_time > 0:
            raise ValueError(f"speed_time must be a finite number > 0 (s), got {self.speed_time!r}")

    def replace(self, min_speed: float | None, speed_time: float | None) -> SpeedLimit:
        """This limit with the values given (``None``: kept)."""
        return SpeedLimit(
            self.min_speed if min_speed is None else min_speed,
            self.speed_time if speed_time is None else speed_time,
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_CURRENT: ContextVar[SpeedLimit | None] = ContextVar("gradood_download_speed", default=None)


def current_speed_limit() -> SpeedLimit:
    """The limit of downloads not given one (:func:`speed_limit`'s, else the defaults)."""
    return _CURRENT.get() or SpeedLimit()


@contextmanager
def speed_limit(min_speed: float | None = None, speed_time: float | None = None) -> Iterator[None]:
    """Downloads in the block not given their own limit have this one (``None``: the current
    value is kept)."""
    token = _CURRENT.set(current_speed_limit().replace(min_speed, speed_time))
    try:
        yield
    finally:
        _CURRENT.reset(token)


class SpeedWatch:
    """The windows of one transfer: :meth:`slow_rate` says when a finished window's average
    rate fell below the limit (a window ends at the first check after ``speed_time``)."""

    def __init__(self, limit: SpeedLimit, clock: Callable[[], float] = time.monotonic):
        self.limit, self.clock = limit, clock
        self.start, self.start_bytes = clock(), 0

    def slow_rate(self, received: int) -> tuple[float, float] | None:
        """``(average rate in bytes/s, seconds)`` of the window just finished, if the rate is
        below ``min_speed``; ``None`` while the window runs or where the rate was enough (a
        new window starts).

        :param received: bytes received since the watch started
        """
        now = self.clock()
        elapsed = now - self.start
        if self.limit.min_speed == 0 or elapsed < self.limit.speed_time:
            return None
        rate = (received - self.start_bytes) / elapsed
        if rate < self.limit.min_speed:
            return rate, elapsed
        self.start, self.start_bytes = now, received
        return None
