"""Shared pieces of the benchmark harness: side-by-side timing ratios from one run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch


@dataclass
class SideBySide:
    """Fastest round of each benchmark of this run, by (group, name), to form ratios."""

    fastest: dict[tuple[str, str], float] = field(default_factory=dict)

    def measure(
        self,
        benchmark,
        group: str,
        name: str,
        function: Callable[[], object],
        rounds: int,
        warmup_rounds: int = 1,
    ) -> object:
        """Time ``function`` with pytest-benchmark (CUDA work synchronized) and record it."""
        benchmark.group = group
        benchmark.name = name

        def synchronized():
            result = function()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return result

        result = benchmark.pedantic(synchronized, rounds=rounds, warmup_rounds=warmup_rounds)
        if benchmark.stats is not None:
            self.fastest[(group, name)] = benchmark.stats.stats.min
        return result

    def speedup(self, group: str, slow: str, fast: str) -> float:
        """How many times faster ``fast`` ran than ``slow``; skips if one was not measured."""
        try:
            return self.fastest[(group, slow)] / self.fastest[(group, fast)]
        except KeyError:
            pytest.skip(f"'{slow}' and '{fast}' were not both timed in this run")


_SIDE_BY_SIDE = SideBySide()


@pytest.fixture(scope="session")
def side_by_side() -> SideBySide:
    return _SIDE_BY_SIDE


def pytest_terminal_summary(terminalreporter) -> None:
    if not _SIDE_BY_SIDE.fastest:
        return
    terminalreporter.section("side by side (fastest round, this run)")
    groups = sorted({group for group, _ in _SIDE_BY_SIDE.fastest})
    for group in groups:
        times = {n: t for (g, n), t in _SIDE_BY_SIDE.fastest.items() if g == group}
        base_name = min(times, key=times.get)
        terminalreporter.write_line(f"{group}:")
        for name, seconds in sorted(times.items(), key=lambda item: item[1]):
            terminalreporter.write_line(
                f"  {name:<28} {seconds * 1e3:10.2f} ms   {seconds / times[base_name]:8.2f}x "
                f"the time of {base_name}"
            )
