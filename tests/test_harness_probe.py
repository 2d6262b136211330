"""The plan's timed probe: rates of a copy of the model; the model itself is left alone."""

from __future__ import annotations

import torch

from gradood.harness.probe import probe
from gradood.testing import SmallCNN


def test_the_probe_times_a_copy_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3).eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    speed = probe(model, (8, 8), "cpu")
    assert speed.forward > 0 and speed.training > 0
    assert not model.training
    for name, value in model.state_dict().items():  # BatchNorm statistics included
        assert torch.equal(value, before[name]), name
