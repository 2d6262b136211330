"""The cost of Lee & AlRegib's gradient features beside one batched forward + backward pass and
beside pytorch-ood's ``GradUncertainty``, which materializes every per-sample gradient.

Same model, same batch, one run: torchvision ResNet-18 (10 classes, random weights: the cost
does not depend on them) on a batch of 64 images of 32 x 32, on the CPU (``--gpu``: CUDA).

- time: the fastest round of each, side by side;
- peak memory: each workload runs once in a fresh Python process, after building the model and
  the batch; on the CPU its peak resident memory (``VmHWM``, reset through
  ``/proc/self/clear_refs`` after setup; ``ru_maxrss`` where that is not allowed) above the
  resident memory after setup, so the libraries and the model are not counted; on CUDA
  ``max_memory_allocated`` above the memory allocated after setup. The increments and totals
  go into ``benchmark.extra_info``.

Targets (``test_speed_targets``): features within 3x the time and 2x the peak memory of the
batched forward + backward pass, and at least 20x faster than ``GradUncertainty``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from speed import (
    FEATURES,
    FORWARD_BACKWARD,
    GRAD_UNCERTAINTY,
    lee_alregib_workload,
    model_and_batch,
)

from gradood.detectors.gradnorm import uniform_loss
from gradood.gradients import per_sample_squared_norms

GROUP = "lee-alregib features resnet18 32px b64"
BATCH = 64

#: peak memory increments (bytes) measured in this run, by workload name
PEAK_MEMORY: dict[str, int] = {}


def make_inputs(device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    return model_and_batch(lambda: torchvision.models.resnet18(num_classes=10), BATCH, 32, device)


# a fresh process per workload, so that no earlier allocation is reused or counted
_CHILD = r"""
import importlib.util, json, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import speed
spec = importlib.util.spec_from_file_location("lee_alregib_speed", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
name, device = sys.argv[2], sys.argv[3]
model, x = bench.make_inputs(device)
print(json.dumps(speed.peak_memory(speed.lee_alregib_workload(name, model, x), device)))
"""


def measure_peak_memory(benchmark, name: str, device: str) -> None:
    """Run workload ``name`` once in a fresh process; record its peak memory increment."""
    if benchmark.disabled:
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, __file__, name, device],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        pytest.fail(f"peak-memory probe of '{name}' failed:\n{completed.stderr[-3000:]}")
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    increment = max(0, figures["peak"] - figures["before"])
    PEAK_MEMORY[name] = increment
    benchmark.extra_info["peak_memory_increment_MiB"] = round(increment / 2**20, 1)
    benchmark.extra_info["peak_memory_total_MiB"] = round(figures["peak"] / 2**20, 1)
    benchmark.extra_info["memory_measure"] = figures["method"]


@pytest.fixture(scope="module")
def setup(device):
    return make_inputs(device)


def test_forward_backward(benchmark, side_by_side, setup, device):
    work = lee_alregib_workload(FORWARD_BACKWARD, *setup)
    side_by_side.measure(benchmark, GROUP, FORWARD_BACKWARD, work, rounds=10)
    measure_peak_memory(benchmark, FORWARD_BACKWARD, device)


def test_gradient_features(benchmark, side_by_side, setup, device):
    model, x = setup
    work = lee_alregib_workload(FEATURES, model, x)
    features = side_by_side.measure(benchmark, GROUP, FEATURES, work, rounds=10)
    assert features.shape == (BATCH, len(list(model.parameters())))
    measure_peak_memory(benchmark, FEATURES, device)


def test_pytorch_ood_grad_uncertainty(benchmark, side_by_side, setup, device):
    model, x = setup
    work = lee_alregib_workload(GRAD_UNCERTAINTY, model, x)
    theirs = side_by_side.measure(benchmark, GROUP, GRAD_UNCERTAINTY, work, 1, warmup_rounds=0)
    # same cost, another loss: theirs is BCE(softmax(z), 1) summed over classes, GradNorm's
    # loss at T = 1, and minus the sum of the per-tensor squared norms
    ours = per_sample_squared_norms(model, lambda z: uniform_loss(z, 1.0), x).sum(dim=1)
    # float32 sums of 11.7 million squares, ordered differently
    torch.testing.assert_close(ours.cpu(), -theirs.double().cpu(), rtol=1e-4, atol=0)
    measure_peak_memory(benchmark, GRAD_UNCERTAINTY, device)


def test_speed_targets(side_by_side, device):
    """Features: <= 3x the time and <= 2x the peak memory of one batched forward + backward,
    and >= 20x faster than GradUncertainty."""
    vs_backward = 1 / side_by_side.speedup(GROUP, FORWARD_BACKWARD, FEATURES)
    vs_theirs = side_by_side.speedup(GROUP, GRAD_UNCERTAINTY, FEATURES)
    if not {FORWARD_BACKWARD, FEATURES} <= PEAK_MEMORY.keys():
        pytest.skip("peak memory was not measured in this run")
    memory_ratio = PEAK_MEMORY[FEATURES] / max(1, PEAK_MEMORY[FORWARD_BACKWARD])
    mib = {name: round(value / 2**20, 1) for name, value in PEAK_MEMORY.items()}
    print(
        f"\n{device}: features take {vs_backward:.2f}x the time of a batched forward + backward, "
        f"{vs_theirs:.1f}x faster than GradUncertainty; peak memory {memory_ratio:.2f}x "
        f"(increments in MiB: {mib})"
    )
    assert vs_backward <= 3.0
    assert vs_theirs >= 20.0
    assert memory_ratio <= 2.0
