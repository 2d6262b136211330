"""GradNorm's cost beside MSP, pytorch-ood's GradNorm and the official per-sample loop.

Same model, same batch, one run: torchvision ResNet-18 (10 classes, random weights: the cost
does not depend on them) on a batch of 256 images of 32 x 32, on the CPU (``--gpu``: CUDA).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from pytorch_ood.detector import GradNorm as PoodGradNorm
from pytorch_ood.detector import MaxSoftmax
from speed import model_and_batch, official_per_sample

from gradood import GradNorm

GROUP = "gradnorm resnet18 32px b256"


@pytest.fixture(scope="module")
def setup(device):
    return model_and_batch(lambda: torchvision.models.resnet18(num_classes=10), 256, 32, device)


def test_forward_only(benchmark, side_by_side, setup):
    model, x = setup

    def forward():
        with torch.no_grad():
            return model(x)

    side_by_side.measure(benchmark, GROUP, "forward (no_grad)", forward, rounds=10)


def test_msp(benchmark, side_by_side, setup):
    model, x = setup
    detector = MaxSoftmax(model)

    def msp():
        with torch.no_grad():
            return detector.predict(x)

    side_by_side.measure(benchmark, GROUP, "MSP", msp, rounds=10)


def test_gradnorm(benchmark, side_by_side, setup):
    model, x = setup
    detector = GradNorm(model)
    side_by_side.measure(benchmark, GROUP, "gradood GradNorm", lambda: detector.predict(x), 10)


def test_pytorch_ood_gradnorm(benchmark, side_by_side, setup):
    model, x = setup
    detector = PoodGradNorm(model, param_filter=lambda name: name == "fc.weight")
    theirs = side_by_side.measure(
        benchmark, GROUP, "pytorch-ood GradNorm", lambda: detector.predict(x), rounds=3
    )
    ours = GradNorm(model).predict(x)
    # theirs is -(1/C) times the official L1 value, computed in float32
    torch.testing.assert_close(ours, 10 * theirs.double().cpu(), rtol=1e-4, atol=0)


def test_official_per_sample(benchmark, side_by_side, setup):
    model, x = setup
    official = side_by_side.measure(
        benchmark, GROUP, "official per-sample", lambda: official_per_sample(model, x), 2
    )
    # float32: single-sample and batched forward passes round differently
    torch.testing.assert_close(GradNorm(model).predict(x).cpu(), -official, rtol=1e-4, atol=0)


def test_speed_targets(side_by_side, device):
    """GradNorm costs a forward pass: >= 0.95x MSP's throughput, faster than pytorch-ood's."""
    vs_msp = side_by_side.speedup(GROUP, "MSP", "gradood GradNorm")
    vs_pood = side_by_side.speedup(GROUP, "pytorch-ood GradNorm", "gradood GradNorm")
    vs_official = side_by_side.speedup(GROUP, "official per-sample", "gradood GradNorm")
    print(
        f"\n{device}: GradNorm throughput {vs_msp:.3f}x MSP's, {vs_pood:.1f}x pytorch-ood's, "
        f"{vs_official:.1f}x the official per-sample loop's"
    )
    assert vs_msp >= 0.95
    assert vs_pood > 1.0
