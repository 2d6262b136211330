"""Shared pieces of the benchmark harness: side-by-side timing ratios from one run, and the
paper measurements behind the reported-number checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from speed import steady_allocator

from gradood.checks import Comparison, PaperCheck, compare, measure, measurement_plan
from gradood.protocols import DatasetNotFoundError, protocol_class
from gradood.pytest_plugin import option_path


@dataclass
class SideBySide:
    """Fastest round of each benchmark of this run, by (group, name), to form ratios, and
    notes (e.g. the ratios a test checked) for the terminal summary."""

    fastest: dict[tuple[str, str], float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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

    def note(self, line: str) -> None:
        """Print ``line`` in the terminal summary."""
        self.notes.append(line)

    def speedup(self, group: str, slow: str, fast: str) -> float:
        """How many times faster ``fast`` ran than ``slow``; skips if one was not measured."""
        try:
            return self.fastest[(group, slow)] / self.fastest[(group, fast)]
        except KeyError:
            pytest.skip(f"'{slow}' and '{fast}' were not both timed in this run")


_SIDE_BY_SIDE = SideBySide()
#: how the C library's allocator was set for timing (see ``speed.steady_allocator``)
_ALLOCATOR: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("benchmark_disable", default=True):
        _ALLOCATOR["allocator"] = steady_allocator()


@pytest.fixture(scope="session")
def side_by_side() -> SideBySide:
    return _SIDE_BY_SIDE


@pytest.fixture(autouse=True, scope="session")
def one_thread_when_untimed(request: pytest.FixtureRequest):
    """Under ``--benchmark-disable`` nothing is timed and every benchmark runs once, as a test:
    with one intra-op thread, as the unit tests run. On a shared machine, threads that wait for
    each other make batch-1 loops (the official per-sample GradNorm) up to ten times slower."""
    if not request.config.getoption("benchmark_disable"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter) -> None:
    if not (_SIDE_BY_SIDE.fastest or _SIDE_BY_SIDE.notes):
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
    for line in _SIDE_BY_SIDE.notes:
        terminalreporter.write_line(line)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """The versions and devices behind the timings, in every saved benchmark JSON."""
    import pytorch_ood
    import torchvision

    machine_info["torch"] = torch.__version__
    machine_info["torchvision"] = torchvision.__version__
    machine_info["pytorch_ood"] = getattr(pytorch_ood, "__version__", "unknown")
    machine_info["torch_threads"] = torch.get_num_threads()
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    machine_info["torch_cpu_capability"] = capability() if capability else None
    machine_info["cuda"] = torch.version.cuda
    machine_info["cudnn"] = (
        torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    )
    cuda = torch.cuda.is_available()
    machine_info["gpus"] = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    )
    machine_info["allocator"] = _ALLOCATOR.get("allocator")
    machine_info["tf32"] = {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": torch.backends.cudnn.allow_tf32,
    }


class PaperMeasurements:
    """Measures each (protocol, group) of the paper checks once per run, on first use.

    The protocol's data and model come from the ``pytest_gradood_open_protocol`` and
    ``pytest_gradood_load_model`` hooks, once per protocol; what is missing skips every check
    that needs it, with the same reason.
    """

    def __init__(self, config: pytest.Config, device: str):
        self.config = config
        self.device = device
        self._memo: dict[tuple, object] = {}

    def compare(self, check: PaperCheck, checks: list[PaperCheck]) -> Comparison:
        measured = self._once(
            ("measured", check.protocol, check.group),
            lambda: self._measure(check.protocol, check.group, checks),
        )
        return compare(check, measured)

    def _once(self, key: tuple, compute):
        """``compute()`` on the first call for ``key``; a skip is remembered and repeated."""
        if key not in self._memo:
            try:
                self._memo[key] = compute()
            except pytest.skip.Exception as skipped:
                self._memo[key] = _Skip(str(skipped.msg))
            except DatasetNotFoundError as error:
                self._memo[key] = _Skip(f"{key[-1]} needs the ID training set: {error}")
        value = self._memo[key]
        if isinstance(value, _Skip):
            pytest.skip(value.reason)
        return value

    def _inputs(self, protocol: str) -> tuple:
        hook = self.config.hook
        return (
            hook.pytest_gradood_open_protocol(config=self.config, name=protocol),
            hook.pytest_gradood_load_model(config=self.config, protocol=protocol).eval(),
        )

    def _measure(self, protocol: str, group: str, checks: list[PaperCheck]) -> dict:
        benchmark, model = self._once(("inputs", protocol), lambda: self._inputs(protocol))
        return measure(
            benchmark,
            model,
            measurement_plan(checks, protocol, group),
            group=group,
            preset=protocol_class(protocol).detector_preset,
            device=self.device,
            cache_dir=option_path(self.config, "cache_dir"),
        )


@dataclass(frozen=True)
class _Skip:
    reason: str


@pytest.fixture(scope="session")
def paper_measurements(request: pytest.FixtureRequest, device: str) -> PaperMeasurements:
    return PaperMeasurements(request.config, device)
