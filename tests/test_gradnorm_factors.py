"""GradNorm's factors U and V against autograd and plain norms, and GradNorm = -(u * v)."""

from __future__ import annotations

import math

import pytest
import torch

import gradood
from gradood import GradNorm
from gradood.detectors import GradNormU, GradNormV
from gradood.testing import BigTransferStyleNet, SmallCNN

from references import entrywise_norm

NORMS = [0.3, 1.0, 2.0, math.inf]
TEMPERATURES = [0.0625, 1.0, 1024.0]
EPS = torch.finfo(torch.float64).eps
# V's reference and ours both compute C softmax(z / T) - 1, which cancels near 1 / C (see
# test_gradnorm.RTOL_FLOAT64); U's are two sums of the same D terms in other orders
RTOL_V = 1e-9
RTOL_U = 1e-12

MODELS = {
    "small-cnn": (lambda: SmallCNN(num_classes=6), "fc"),
    "bit-style": (lambda: BigTransferStyleNet(num_classes=7), "head.conv"),
}


def _model(name: str, seed: int):
    torch.manual_seed(seed)
    build, head = MODELS[name]
    model = build().double().eval()
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model, model.get_submodule(head)


def _inputs(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 + seed)
    return 2 * torch.randn(6, 3, 12, 12, generator=generator, dtype=torch.float64)


def _head_input_and_logit_gradient(model, head, x, temperature):
    """The head's input h (a forward hook) and d/dz of the official loss (autograd)."""
    captured = []
    handle = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        logits = model(x).detach().requires_grad_(True)
    finally:
        handle.remove()
    loss = -torch.log_softmax(logits / temperature, dim=1).sum()
    (gradient,) = torch.autograd.grad(loss, logits)
    return captured[0].flatten(1).detach(), gradient


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_factors_are_the_feature_norm_and_the_logit_gradient_norm(model_name, seed):
    model, head = _model(model_name, seed)
    x = _inputs(seed)
    for temperature in TEMPERATURES:
        h, g = _head_input_and_logit_gradient(model, head, x, temperature)
        for p in NORMS:
            u = GradNormU(model, p=p, temperature=temperature).predict(x)
            v = GradNormV(model, p=p, temperature=temperature).predict(x)
            expected_u = torch.stack([entrywise_norm(row, p) for row in h])
            expected_v = torch.stack([entrywise_norm(row, p) for row in g])
            torch.testing.assert_close(-u, expected_u, rtol=RTOL_U, atol=0)
            torch.testing.assert_close(-v, expected_v, rtol=RTOL_V, atol=0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_gradnorm_is_minus_u_times_v_in_float64(model_name, seed):
    """``GradNorm = exp(log U + log V)``, the product ``exp(log U) exp(log V)``: the sum's
    rounding moves the exponent by at most (|log U| + |log V|) eps / 2, and the three ``exp``
    and the product add about 1 eps each (relative); twice that bound is the tolerance."""
    model, _head = _model(model_name, seed)
    x = _inputs(seed)
    for p in NORMS:
        for temperature in TEMPERATURES:
            settings = {"p": p, "temperature": temperature}
            u = GradNormU(model, **settings).predict(x)
            v = GradNormV(model, **settings).predict(x)
            gradnorm = GradNorm(model, **settings).predict(x)
            assert u.dtype == v.dtype == gradnorm.dtype == torch.float64
            bound = 2 * ((u.abs().log() + v.abs().log()).abs() / 2 + 4) * EPS
            assert bool(((gradnorm + u * v).abs() <= bound * gradnorm.abs()).all()), settings


def test_u_does_not_depend_on_the_temperature():
    model, _head = _model("small-cnn", 0)
    x = _inputs(0)
    scores = [GradNormU(model, p=2, temperature=t).predict(x) for t in TEMPERATURES]
    for other in scores[1:]:
        assert torch.equal(other, scores[0])


@pytest.mark.parametrize("name", ["gradnorm-u", "gradnorm-v"])
def test_registered_with_gradnorms_presets_and_scored_from_features(name):
    model, _head = _model("bit-style", 1)
    x = _inputs(1)
    detector = gradood.create_detector(name, model, preset="imagenet", p=2, temperature=4.0)
    assert (detector.p, detector.temperature) == (2.0, 4.0)
    spec = gradood.registry.detector_spec(name)
    assert (spec.fit, spec.scores_from) == ("none", "features")
    assert spec.presets == gradood.registry.detector_spec("gradnorm").presets
    features = detector.encoder(x)
    torch.testing.assert_close(detector.predict_features(features), detector.predict(x))


def test_a_factor_that_overflows_float64_is_an_error():
    model, _head = _model("small-cnn", 0)
    huge = 1e300 * torch.ones(2, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="feature norms exceed float64"):
        GradNormU(model, p=0.1).predict_features(huge)  # 16^10 * 1e300
