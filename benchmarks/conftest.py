"""Thin fixtures of the benchmarks: timing conditions (one CPU thread, a steady allocator),
the speed verdicts' recording, and the machine facts in pytest-benchmark's JSON."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from threadpoolctl import threadpool_limits

from gradood.harness.session import (
    GPU_MARKER,
    enforce_speed_targets,
    flag,
    run_report,
    speed_policy,
    uses_gpu,
)
from gradood.harness.speed import SideBySide, steady_allocator
from gradood.harness.timing import MISSED, SpeedCheck

#: how the C library's allocator was set for timing (see ``speed.steady_allocator``)
_ALLOCATOR = pytest.StashKey[object]()
_SIDE_BY_SIDE = pytest.StashKey[SideBySide]()


#: pytest-benchmark's columns unless ``--benchmark-columns`` is given: narrow tables
COLUMNS = ["min", "median", "iqr", "rounds"]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if "--benchmark-columns" not in " ".join(config.invocation_params.args):
        config.option.benchmark_columns = COLUMNS
    config.stash[_SIDE_BY_SIDE] = SideBySide()
    if not config.getoption("benchmark_disable", default=True):
        config.stash[_ALLOCATOR] = steady_allocator()


_XDIST = "speed tests deselected under pytest-xdist (-n): the workers share the CPUs"


def _under_xdist(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput") or config.getoption("dist", "no") != "no"


def pytest_report_header(config: pytest.Config) -> str | None:
    """One line, as pytest-benchmark's, which turns its timing off under xdist."""
    return f"gradood: {_XDIST}" if _under_xdist(config) else None


_GPU_ONLY = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``--gradood-gpu``, the GPU-only cases are deselected (counted in one line, not
    skipped one by one); under pytest-xdist, the tests that give speed verdicts do not run."""
    dropped = []
    if not uses_gpu(config):
        gpu = [item for item in items if item.get_closest_marker(GPU_MARKER) is not None]
        config.stash[_GPU_ONLY] = len(gpu)
        dropped += gpu
    if _under_xdist(config):
        dropped += [item for item in items if "speed_check" in getattr(item, "fixturenames", ())]
    if dropped:
        gone = set(map(id, dropped))
        config.hook.pytest_deselected(items=list({id(i): i for i in dropped}.values()))
        items[:] = [item for item in items if id(item) not in gone]


def pytest_report_collectionfinish(config: pytest.Config) -> str | None:
    """One line for the GPU-only cases this run deselected."""
    count = config.stash.get(_GPU_ONLY, 0)
    if not count:
        return None
    return f"gradood: {count} GPU-only cases deselected (run with {flag('gpu', config)})"


@pytest.fixture(scope="session")
def side_by_side(request: pytest.FixtureRequest) -> SideBySide:
    return request.config.stash[_SIDE_BY_SIDE]


@pytest.fixture(scope="session")
def speed_check(request: pytest.FixtureRequest) -> Callable[[SpeedCheck], None]:
    """Record a verdict in the run's summary; a missed target fails only where timings mean
    something (``--gradood-gpu``) or where asked to (``--gradood-enforce-speed``)."""
    config = request.config

    def record(check: SpeedCheck) -> None:
        report = run_report(config)
        report.speed.append(check)
        policy = speed_policy(config)
        if policy:
            report.policies["speed"] = policy
        if check.verdict == MISSED and enforce_speed_targets(config):
            pytest.fail(f"speed target missed: {check.line()}")

    return record


@pytest.fixture(autouse=True, scope="session")
def one_cpu_thread(device: str):
    """On the CPU, everything runs with one intra-op thread: a busy machine then slows a
    workload by its share of a core, whereas threads that spin waiting for each other make it
    up to ten times slower (batch-1 loops such as the official per-sample GradNorm most). The
    ratios of side-by-side work do not depend on it; images per second are per core."""
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # the BLAS of NumPy and SciPy (scikit-learn's fits) too
        yield
    torch.set_num_threads(threads)


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
    machine_info["allocator"] = config.stash.get(_ALLOCATOR, None)
    machine_info["tf32"] = {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": torch.backends.cudnn.allow_tf32,
    }
