"""Speed measurement of the benchmarks (``benchmarks/test_speed_targets.py`` and
``test_throughput.py``): models on random batches, the reference implementations that gradood is
compared with, round calibration and peak-memory probes.

Random weights and inputs throughout: the cost of every workload here does not depend on them.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import platform
import resource
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pytorch_ood.detector import GradUncertainty
from torch import Tensor, nn

from ..detectors.lee_alregib import LeeAlRegib
from ..heads import find_head

#: a workload of :func:`lee_alregib_workload` (the computations Lee & AlRegib's features are
#: compared with): one batched pass of their loss into every parameter
FORWARD_BACKWARD = "forward + backward"
#: a workload of :func:`lee_alregib_workload`: gradood's gradient features
FEATURES = "gradood gradient features"
#: a workload of :func:`lee_alregib_workload`: pytorch-ood's ``GradUncertainty``
GRAD_UNCERTAINTY = "pytorch-ood GradUncertainty"


def random_batch(batch: int, size: int, device: str, seed: int = 0) -> Tensor:
    """``batch`` random RGB images of ``size`` x ``size`` (standard normal, i.e. already
    normalized) on ``device``, the same for the same ``seed`` on every device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator).to(device)


def model_and_batch(
    build: Callable[[], nn.Module], batch: int, size: int, device: str, seed: int = 0
) -> tuple[nn.Module, Tensor]:
    """``build()`` (initialized with ``seed``) in evaluation mode on ``device``, and
    :func:`random_batch`."""
    torch.manual_seed(seed)
    return build().eval().to(device), random_batch(batch, size, device, seed)


# -- reference implementations ----------------------------------------------------------------


def official_per_sample(model: nn.Module, x: Tensor, temperature: float = 1.0) -> Tensor:
    """The official GradNorm loop: batch size 1, all-ones targets, a backward pass into every
    parameter, then the L1 norm of the head weight's gradient (float64, higher = more ID)."""
    weight = find_head(model).module.weight
    scores = []
    for sample in x:
        inputs = sample[None].clone().requires_grad_(True)
        model.zero_grad()
        logits = model(inputs) / temperature
        loss = torch.mean(torch.sum(-torch.log_softmax(logits, dim=-1), dim=-1))
        loss.backward()
        scores.append(weight.grad.abs().sum().item())
    model.zero_grad(set_to_none=True)
    return torch.tensor(scores, dtype=torch.float64)


def lee_alregib_workload(name: str, model: nn.Module, x: Tensor) -> Callable[[], object]:
    """One of the computations compared with Lee & AlRegib's features, on a fixed batch:
    :data:`FORWARD_BACKWARD` (one batched pass of their loss into every parameter),
    :data:`FEATURES` (gradood's features, the whole batch in one pass) or
    :data:`GRAD_UNCERTAINTY` (pytorch-ood's, which materializes every per-sample gradient)."""
    if name == FORWARD_BACKWARD:
        params = list(model.parameters())

        def forward_backward():
            loss = F.softplus(-model(x)).sum()
            return torch.autograd.grad(loss, params)

        return forward_backward
    if name == FEATURES:
        detector = LeeAlRegib(model, micro_batch_size=x.shape[0])
        return lambda: detector.gradient_features(x)
    if name == GRAD_UNCERTAINTY:
        detector = GradUncertainty(model)  # all parameters
        return lambda: detector.predict(x)
    raise ValueError(f"unknown workload {name!r}")


# -- timing -----------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def calibrated_rounds(
    work: Callable[[], object],
    device: str,
    budget_s: float,
    min_rounds: int = 5,
    max_rounds: int = 200,
    warmup_s: float = 0.2,
) -> int:
    """Warm up (``work`` until ``warmup_s`` seconds have passed, at least once; CUDA
    synchronized) and return how many rounds of the last call's duration fit in ``budget_s``
    seconds, between ``min_rounds`` and ``max_rounds``."""
    started = time.perf_counter()
    while True:
        synchronize(device)
        start = time.perf_counter()
        work()
        synchronize(device)
        seconds = time.perf_counter() - start
        if time.perf_counter() - started >= warmup_s:
            break
    return max(min_rounds, min(max_rounds, math.ceil(budget_s / max(seconds, 1e-9))))


def interleaved_fastest(
    workloads: Mapping[str, Callable[[], object]],
    device: str,
    budget_s: float,
    min_rounds: int = 5,
) -> dict[str, float]:
    """The fastest round (seconds) of each workload, timed in alternation (CUDA synchronized)
    for about ``budget_s`` seconds after a warm-up. On a machine whose speed drifts (a shared
    CPU), workloads timed in alternation see the same conditions; benchmarks timed one after
    the other do not, which matters for ratios close to 1."""
    rounds = calibrated_rounds(
        lambda: [work() for work in workloads.values()], device, budget_s, min_rounds
    )
    fastest = dict.fromkeys(workloads, math.inf)
    for _ in range(rounds):
        for name, work in workloads.items():
            synchronize(device)
            start = time.perf_counter()
            work()
            synchronize(device)
            fastest[name] = min(fastest[name], time.perf_counter() - start)
    return fastest


def steady_allocator() -> str | None:
    """Keep glibc's malloc from handing freed memory back to the kernel between calls.

    By default glibc serves large blocks with ``mmap`` and trims the heap, with thresholds that
    grow with the largest block freed so far: until the process's first backward pass, a
    forward-only workload page-faults its activations on every call (30 % slower on a ResNet-20
    at batch 64), so timings would depend on which benchmark ran first. With fixed thresholds
    (blocks up to 32 MiB from the heap, up to 256 MiB kept) every case runs in the steady state
    of a long evaluation. Returns what was set, or ``None`` where the C library has no
    ``mallopt`` (macOS) or ignores it (musl).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    trim_threshold, mmap_threshold = -1, -3  # glibc's M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
    if mallopt(mmap_threshold, 32 * 2**20) != 1 or mallopt(trim_threshold, 256 * 2**20) != 1:
        return None
    return "glibc mallopt: mmap threshold 32 MiB, trim threshold 256 MiB"


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``) with its core count."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def native_cpu_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16, Linux only)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_autocast_problem(device: str) -> str | None:
    """Why bfloat16 autocast cannot run on ``device``, or ``None`` if it can."""
    device_type = torch.device(device).type
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name()} does not support bfloat16"
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            product = torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except RuntimeError as error:
        return f"bfloat16 autocast on {device_type}: {error}"
    if product.dtype != torch.bfloat16:
        return f"autocast on {device_type} ignores bfloat16 (torch {torch.__version__})"
    return None


# -- peak memory ------------------------------------------------------------------------------


def resident_bytes() -> int:
    """The process's resident memory now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def reset_peak_resident() -> bool:
    """Reset the peak resident memory (``VmHWM``; Linux >= 4.0); ``False`` where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_resident_bytes(was_reset: bool) -> int:
    """``VmHWM`` after :func:`reset_peak_resident`, else ``ru_maxrss`` (the process's peak)."""
    if was_reset:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(work: Callable[[], object], device: str) -> dict[str, object]:
    """Run ``work`` once; the memory in use before it (``before``), the peak during it
    (``peak``, bytes) and how they were measured (``method``).

    CUDA: ``memory_allocated`` before and ``max_memory_allocated`` after
    ``reset_peak_memory_stats``. CPU: the resident memory before and ``VmHWM`` after resetting
    it; inside a process that ran other work earlier, ``peak - before`` is a lower bound (the
    allocator reuses memory it kept without raising the resident size).
    """
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        work()
        torch.cuda.synchronize()
        return {
            "before": before,
            "peak": torch.cuda.max_memory_allocated(),
            "method": "cuda max_memory_allocated",
        }
    was_reset = reset_peak_resident()
    before = resident_bytes()
    work()
    method = "VmHWM after clear_refs" if was_reset else "ru_maxrss (an upper bound)"
    return {"before": before, "peak": peak_resident_bytes(was_reset), "method": method}


def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or ``None`` where it has none."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Hand the C library's free heap memory back to the kernel (glibc ``malloc_trim``), so that
    memory reused from it is faulted in afresh and counted by :func:`peak_memory`; ``False``
    where the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def forks_for_memory(device: str) -> bool:
    """Whether :func:`start_forked_peak_memory` measures on ``device``: the CPU, on Linux (a
    forked child's ``VmHWM``, with glibc's free heap handed back first). Only asks: hands
    nothing back."""
    return (
        torch.device(device).type == "cpu"
        and os.path.exists("/proc/self/clear_refs")
        and "fork" in multiprocessing.get_all_start_methods()
        and _malloc_trim() is not None
    )


def start_forked_peak_memory(make_work: Callable[[], Callable[[], object]], device: str):
    """Start a forked child that builds ``make_work()`` (one torch thread), hands the free heap
    back (:func:`release_free_heap`) and returns :func:`peak_memory` of the work through a pipe:
    what it allocates, not what the parent freed, raises its peak. No interpreter start and
    no imports (a fresh process spends seconds on them). Collect with
    :func:`forked_peak_memory`."""
    receiving, sending = multiprocessing.Pipe(duplex=False)

    def child() -> None:
        try:
            torch.set_num_threads(1)
            work = make_work()
            release_free_heap()
            sending.send(peak_memory(work, device))
        except BaseException:  # the parent raises it
            sending.send({"error": traceback.format_exc()})

    process = multiprocessing.get_context("fork").Process(target=child, daemon=True)
    process.start()
    sending.close()
    return process, receiving


def forked_peak_memory(started) -> dict[str, object]:
    """The figures of a child of :func:`start_forked_peak_memory` (waits for it).

    :raises RuntimeError: with the child's traceback, or its exit code where it sent nothing
    """
    process, receiving = started
    try:
        figures = receiving.recv()
    except EOFError:
        process.join()
        figures = {"error": f"the child exited with code {process.exitcode}"}
    process.join()
    if "error" in figures:
        raise RuntimeError(f"peak-memory child failed: {figures['error']}")
    return figures


# -- pytest-benchmark timings of a run ------------------------------------------------------


@dataclass
class SideBySide:
    """Fastest round of each benchmark of this run, by (group, name)."""

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
