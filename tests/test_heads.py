"""Finding the classification layer of common architectures, and the errors when there is none."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from gradood.heads import check_deferred, find_head, forward_with_features, penultimate_encoder
from gradood.testing import BigTransferStyleNet, SmallCNN


def _on_meta(build):
    def built():
        with torch.device("meta"):  # architecture only: no memory, no initialization cost
            return build()

    return built


def _timm_resnetv2():
    # built for real (0.2 s): timm 0.9's ResNetV2 cannot be built on the meta device (it calls
    # .tolist() on a tensor while building)
    return timm.create_model("resnetv2_50x1_bit", pretrained=False)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (_on_meta(torchvision.models.resnet50), "fc"),
        (_on_meta(torchvision.models.vgg11), "classifier.6"),
        (_on_meta(torchvision.models.densenet121), "classifier"),
        (_timm_resnetv2, "head.fc"),
        (_on_meta(BigTransferStyleNet), "head.conv"),
        (_on_meta(SmallCNN), "fc"),
    ],
    ids=["torchvision-resnet50", "vgg11", "densenet121", "timm-resnetv2", "big-transfer", "cnn"],
)
def test_finds_the_head(build, expected):
    model = build()
    head = find_head(model)
    assert head.name == expected
    assert head.module is model.get_submodule(expected)


def test_head_by_name_and_by_module():
    model = SmallCNN()
    assert find_head(model, "fc").module is model.fc
    assert find_head(model, model.fc).name == "fc"


def test_no_head_lists_candidates():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(
        ValueError,
        match=r"no classification head found in Sequential.*0 \(Conv2d\), 1 \(BatchNorm2d\)",
    ):
        find_head(model)


def test_given_head_must_be_a_head_layer_of_the_model():
    model = SmallCNN()
    with pytest.raises(ValueError, match=r"'features.1' is a BatchNorm2d"):
        find_head(model, "features.1")
    with pytest.raises(ValueError, match="the head 'classifier' is not a module of SmallCNN"):
        find_head(model, "classifier")
    with pytest.raises(ValueError, match=r"the head given \(Linear\) is not a module of SmallCNN"):
        find_head(model, nn.Linear(16, 10))
    with pytest.raises(TypeError, match="the head must be a module of the model or its qualified"):
        find_head(model, 3)


def test_conv_head_on_feature_maps_is_rejected():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.Flatten())
    head = find_head(model)
    with pytest.raises(ValueError, match=r"receives input of shape \(2, 8, 6, 6\).*params=\['2'\]"):
        forward_with_features(model, head, torch.randn(2, 3, 8, 8))


def test_forward_with_features_returns_logits_and_head_input():
    model = BigTransferStyleNet(num_classes=6).eval()
    x = torch.randn(3, 3, 8, 8)
    logits, features = forward_with_features(model, find_head(model), x)
    torch.testing.assert_close(logits, model(x))
    assert features.shape == (3, 32)
    torch.testing.assert_close(model.head.conv(features[:, :, None, None]).flatten(1), logits)


def test_penultimate_encoder_is_shared_per_model_and_head():
    model, other = SmallCNN(), SmallCNN()
    assert penultimate_encoder(model) is penultimate_encoder(model, "fc")
    assert penultimate_encoder(model) is not penultimate_encoder(other)


def test_a_cast_after_the_head_keeps_its_values():
    class Upcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = SmallCNN().eval()

        def forward(self, x):
            return self.net(x).double()

    model = Upcast()
    x = torch.randn(2, 3, 8, 8)
    logits, features = forward_with_features(model, find_head(model), x)
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
    torch.testing.assert_close(features, model.net.features(x), rtol=0, atol=0)


class _ScaledSometimes(SmallCNN):
    """Scales its logits in place on the calls listed in ``scaled`` (0-based)."""

    def __init__(self, scaled: set[int]):
        super().__init__(num_classes=4)
        self.scaled, self.calls = scaled, 0

    def forward(self, x):
        out = super().forward(x)
        if self.calls in self.scaled:
            out *= 1.5
        self.calls += 1
        return out


@pytest.mark.parametrize("scaled", [set(), {0}, {2}])
def test_deferred_head_checks_raise_once_for_all_batches(scaled):
    torch.manual_seed(0)
    model = _ScaledSometimes(scaled).eval()
    head = find_head(model)
    deferred: list[torch.Tensor] = []
    with torch.no_grad():
        for _ in range(3):  # no batch raises while deferred
            forward_with_features(model, head, torch.randn(2, 3, 8, 8), deferred)
    assert len(deferred) == 3
    if scaled:
        with pytest.raises(ValueError, match="not the output of its head 'fc'"):
            check_deferred(model, head, deferred, 4)
    else:
        check_deferred(model, head, deferred, 4)
    assert deferred == []
    model.calls = min(scaled, default=0)  # and undeferred, the same batch raises at once
    if scaled:
        with pytest.raises(ValueError, match="not the output of its head 'fc'"):
            forward_with_features(model, head, torch.randn(2, 3, 8, 8))
