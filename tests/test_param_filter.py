"""pytorch-ood's selection by name (``param_filter``) in GradNorm and LeeAlRegib: the behaviours
pytorch-ood's own GradNorm tests check, against pytorch-ood's GradNorm and per-sample autograd."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from pytorch_ood.api import FeaturesDetector, GradientDetector
from pytorch_ood.detector import GradNorm as PoodGradNorm
from pytorch_ood.model import WideResNet
from torch import nn

import gradood.gradients.api as gradients_api
from gradood import GradNorm, LeeAlRegib
from gradood.detectors import HeadGradNorm, ParameterGradNorm
from gradood.gradients import per_sample_gradient_powers
from gradood.testing import SmallCNN

from references import entrywise_norm, official_gradients

# float64: the same per-sample gradients summed in another order; relative differences are a
# few ulps per summed term (~1e-15); see tests/test_gradnorm.py for the softmax cancellation
# that bounds the relative error by ~2e-10 at worst
RTOL_FLOAT64 = 1e-9

FILTERS = {
    "fc.weight": lambda name: name == "fc.weight",
    "block1 and fc": lambda name: name.startswith(("block1", "fc")),
    "all": lambda name: True,
}


def _wide_resnet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = WideResNet(num_classes=10, depth=10, widen_factor=1, drop_rate=0.0).double()
    for module in model.modules():  # non-trivial statistics, so that evaluation mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _selected(model, param_filter):
    return [(n, p) for n, p in model.named_parameters() if param_filter(n)]


@pytest.mark.parametrize("label", sorted(FILTERS))
def test_is_num_classes_times_pytorch_ood_on_a_conv_model(label):
    model = _wide_resnet(seed=0)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    param_filter = FILTERS[label]
    for temperature in (0.5, 4.0):
        theirs = PoodGradNorm(model, param_filter=param_filter, temperature=temperature)
        ours = GradNorm(model, param_filter, micro_batch_size=2, temperature=temperature)
        assert ours.params == [n for n, _ in _selected(model, param_filter)]
        # pytorch-ood's loss averages over the 10 classes, the official code's sums
        torch.testing.assert_close(
            ours.predict(x), 10 * theirs.predict(x), rtol=RTOL_FLOAT64, atol=0
        )


@pytest.mark.parametrize(("seed", "p"), [(1, 2.0), (2, 0.5), (3, math.inf)])
def test_other_norms_match_per_sample_autograd(seed, p):
    model = _wide_resnet(seed)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    param_filter = FILTERS["block1 and fc"]
    params = [t for _, t in _selected(model, param_filter)]
    expected = [entrywise_norm(g, p) for g in official_gradients(model, params, x, 2.0)]
    scores = GradNorm(model, param_filter, temperature=2.0, p=p).predict(x)
    torch.testing.assert_close(scores, -torch.stack(expected), rtol=RTOL_FLOAT64, atol=0)


def test_batched_and_one_by_one_agree():
    model = _wide_resnet(seed=4)
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    detector = GradNorm(model, FILTERS["block1 and fc"], micro_batch_size=2)
    one_by_one = torch.cat([detector.predict(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(detector.predict(x), one_by_one, rtol=1e-12, atol=0)


def test_filter_selects_the_head_weight_as_the_default_does():
    torch.manual_seed(5)
    model = SmallCNN().double().eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(
        GradNorm(model, FILTERS["fc.weight"]).predict(x),
        GradNorm(model).predict(x),
        rtol=RTOL_FLOAT64,
        atol=0,
    )


def test_filter_within_params_keeps_both_conditions():
    model = _wide_resnet(seed=6)
    detector = GradNorm(model, lambda name: name.endswith("weight"), params=["block1"])
    expected = [n for n, _ in model.named_parameters() if n.startswith("block1.")]
    assert detector.params == [n for n in expected if n.endswith("weight")]


def test_gradients_only_for_the_selected_parameters(monkeypatch):
    model = _wide_resnet(seed=7)
    seen = []
    original = gradients_api._targets

    def spy(model, selected):
        seen.append(sorted(selected))
        return original(model, selected)

    monkeypatch.setattr(gradients_api, "_targets", spy)
    GradNorm(model, FILTERS["fc.weight"]).predict(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert seen == [["fc.weight"]]


def test_frozen_model_same_scores_nothing_in_grad_and_no_graph():
    model = _wide_resnet(seed=8)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    detector = GradNorm(model, FILTERS["block1 and fc"])
    expected = detector.predict(x)
    model.requires_grad_(False)
    frozen = detector.predict(x)
    torch.testing.assert_close(frozen, expected, rtol=0, atol=0)
    assert not frozen.requires_grad and frozen.grad_fn is None
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"param_filter": lambda name: False},
        {"params": []},
        {"params": ["fc"], "param_filter": str.isupper},
    ],
    ids=["filter", "empty-params", "both"],
)
@pytest.mark.parametrize("detector_class", [GradNorm, LeeAlRegib])
def test_an_empty_selection_is_an_error(detector_class, kwargs):
    with pytest.raises(ValueError, match="holds no parameter"):
        detector_class(SmallCNN(), **kwargs)


def test_lee_alregib_features_of_the_filtered_parameters():
    torch.manual_seed(9)
    model = SmallCNN(num_classes=4).double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    param_filter = lambda name: name.endswith("bias")  # noqa: E731
    detector = LeeAlRegib(model, param_filter)
    named = _selected(model, param_filter)
    assert detector.feature_names == [n for n, _ in named]
    rows = []
    for sample in x:
        logits = model(sample[None])
        loss = torch.nn.functional.softplus(-logits).sum()  # BCE(sigmoid(z), 1) over classes
        grads = torch.autograd.grad(loss, [t for _, t in named])
        rows.append(torch.stack([g.square().sum() for g in grads]))
    torch.testing.assert_close(
        detector.gradient_features(x), torch.stack(rows), rtol=RTOL_FLOAT64, atol=0
    )


def test_an_empty_selection_is_an_error_for_the_gradient_engine():
    model = SmallCNN().eval()
    with pytest.raises(ValueError, match="holds no parameter"):
        per_sample_gradient_powers(model, lambda z: z.sum(1), torch.randn(2, 3, 8, 8), [], p=1.0)


def test_selected_parameters_need_no_head():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    model = model.double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    detector = GradNorm(model, lambda name: name == "0.weight")
    assert detector.head is None and detector.encoder is None
    expected = [g.abs().sum() for g in official_gradients(model, [model[0].weight], x, 1.0)]
    torch.testing.assert_close(
        detector.predict(x), -torch.stack(expected), rtol=RTOL_FLOAT64, atol=0
    )
    with pytest.raises(ValueError, match="head= is for the head-weight score"):
        GradNorm(model, params=["0"], head="0")


# -- the mode decides the type in pytorch-ood's taxonomy ---------------------------------------


@pytest.mark.parametrize(
    ("settings", "cls"),
    [
        ({}, "HeadGradNorm"),
        ({"param_filter": lambda name: name.startswith("fc.")}, "ParameterGradNorm"),
        ({"params": ["fc"]}, "ParameterGradNorm"),
    ],
)
def test_each_mode_is_a_gradnorm_of_its_own_type(settings, cls):
    """The head mode scores pooled features (a FeaturesDetector); a parameter mode needs the
    inputs (a GradientDetector, as pytorch-ood's GradNorm); positional ``param_filter`` too."""
    model = SmallCNN().eval()
    detector = GradNorm(model, **settings)
    assert type(detector).__name__ == cls and isinstance(detector, GradNorm)
    assert isinstance(detector, FeaturesDetector) == (cls == "HeadGradNorm")
    assert isinstance(detector, GradientDetector) == (cls == "ParameterGradNorm")
    positional = GradNorm(model, settings.get("param_filter"), params=settings.get("params"))
    assert type(positional) is type(detector)


def test_a_mode_class_built_directly_must_match_its_arguments():
    model = SmallCNN().eval()
    with pytest.raises(ValueError, match=r"head mode; make the detector with GradNorm\(\.\.\.\)"):
        HeadGradNorm(model, params=["fc"])
    with pytest.raises(ValueError, match="parameter mode; make the detector with GradNorm"):
        ParameterGradNorm(model)
    assert type(ParameterGradNorm(model, params=["fc"])) is ParameterGradNorm


@pytest.mark.parametrize("settings", [{}, {"params": ["features.4", "fc"]}])
def test_a_detector_survives_pickling_with_its_type_and_scores(settings):
    torch.manual_seed(11)
    model = SmallCNN().double().eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    detector = GradNorm(model, p=2.0, temperature=0.5, **settings)
    restored = pickle.loads(pickle.dumps(detector))
    assert type(restored) is type(detector)
    torch.testing.assert_close(restored.predict(x), detector.predict(x), rtol=1e-12, atol=0)
