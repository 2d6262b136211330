"""The run's stages (training a model, one measurement group on a protocol): the estimate made
before the first measurement and the time each actually took."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["Stage", "Stages", "seconds"]


@dataclass
class Stage:
    """One stage: ``images`` to process, the ``estimate`` (seconds, from the timed probe) and,
    once run, the ``actual`` seconds."""

    name: str
    images: int = 0
    estimate: float | None = None
    actual: float | None = None
    #: why there is no estimate (e.g. the model cannot be probed)
    note: str = ""
    #: the images of the same stage at the paper's dataset counts and schedule
    paper_images: int = 0

    @property
    def at_paper_size(self) -> float | None:
        """The actual time scaled to :attr:`paper_images` (for a run on a miniature)."""
        if self.actual is None or not self.images or not self.paper_images:
            return None
        return self.actual * self.paper_images / self.images


@dataclass
class Stages:
    """The stages by name, in the order planned (or first run)."""

    by_name: dict[str, Stage] = field(default_factory=dict)

    def plan(self, stage: Stage) -> None:
        self.by_name[stage.name] = stage

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (added if not planned); the times of several blocks
        of one stage add up. A block that raises counts too."""
        stage = self.by_name.setdefault(name, Stage(name))
        start = time.perf_counter()
        try:
            yield
        finally:
            stage.actual = (stage.actual or 0.0) + time.perf_counter() - start

    def ran(self) -> list[Stage]:
        return [stage for stage in self.by_name.values() if stage.actual is not None]

    def total(self, which: str) -> float | None:
        """The sum of the ``"estimate"``, ``"actual"`` or ``"at_paper_size"`` seconds of the
        stages that have one."""
        values = [getattr(s, which) for s in self.by_name.values()]
        values = [v for v in values if v is not None]
        return sum(values) if values else None


def seconds(value: float | None) -> str:
    """``value`` seconds for people: ``"42 s"``, ``"3.5 min"``, ``"1.2 h"``; ``"?"`` if unknown."""
    if value is None:
        return "?"
    if value < 100:
        return f"{value:.2g} s" if value < 10 else f"{value:.0f} s"
    if value < 6000:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"
