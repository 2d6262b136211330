"""Detectors under faults: no silent non-finite score in any mode (large p with selected
parameters is computed stably; what still overflows is an error naming the detector, its
setting and the count, in the detector and in evaluate), a temperature that underflows says
so, one under which every score is 0 warns naming it, a one-class model is an error, and
every detector says what model output it expects."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from pytorch_ood.api import Detector
from pytorch_ood.benchmark import Benchmark
from torch import nn
from torch.utils.data import TensorDataset

import gradood
from gradood import GradNorm, LeeAlRegib
from gradood.detectors import GradNormU, GradNormV
from gradood.detectors.gradnorm import gradnorm_score

from references import official_gradients

mpmath.mp.dps = 60  # no power of a float64 under- or overflows at 60 digits and any exponent


class Net(nn.Module):
    def __init__(self, seed: int, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(5, 8)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x):
        return self.fc(torch.relu(self.body(x)))


def _inputs(seed: int, count: int = 6) -> torch.Tensor:
    return torch.randn(count, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference_norm(gradient: torch.Tensor, p: float) -> float:
    """``(sum |g|^p)^(1/p)`` in 60-digit arithmetic (no scaling needed there)."""
    total = mpmath.fsum(mpmath.mpf(abs(float(g))) ** p for g in gradient)
    return float(total ** (mpmath.mpf(1) / p))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("p", "scale"), [(50.0, 1.0), (500.0, 1.0), (5000.0, 1.0), (500.0, 40.0)])
def test_selected_parameters_at_large_p_equal_head_mode_and_the_reference(seed, p, scale):
    """``fc.weight`` selected is head mode's gradient: both and a 60-digit reference agree.
    (scale 40: gradients above 1, whose powers overflow instead of underflowing.)"""
    model = Net(seed, scale).double().eval()
    x = _inputs(seed)
    selected = GradNorm(model, params=["fc.weight"], p=p).predict(x)
    head = GradNorm(model, p=p).predict(x)
    reference = [
        -_reference_norm(g, p) for g in official_gradients(model, [model.fc.weight], x, 1.0)
    ]
    assert bool(torch.isfinite(selected).all())
    # float64 rounding of gradients (~1e-15 relative) enters a p-th root unscaled: 1e-12
    torch.testing.assert_close(
        selected, torch.tensor(reference, dtype=torch.float64), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(head, selected, rtol=1e-12, atol=0)


def test_several_selected_tensors_at_large_p_equal_the_reference():
    model = Net(3).double().eval()
    x = _inputs(3)
    params = [model.body.weight, model.fc.weight, model.fc.bias]
    scores = GradNorm(model, params=["body.weight", "fc"], p=700).predict(x)
    reference = [-_reference_norm(g, 700) for g in official_gradients(model, params, x, 1.0)]
    torch.testing.assert_close(
        scores, torch.tensor(reference, dtype=torch.float64), rtol=1e-12, atol=0
    )


def test_a_score_that_overflows_is_an_error_naming_the_setting():
    model = Net(0, scale=1e3).double().eval()
    with pytest.raises(
        ValueError,
        match=r"GradNorm \(p=0\.001, temperature=1\): 6 of 6 gradient norms exceed float64"
        r".*use a larger p",
    ):
        GradNorm(model, p=0.001).predict(_inputs(0))


@pytest.mark.parametrize("params", [None, ["fc.weight"]])
def test_a_temperature_that_underflows_says_so(params):
    model = Net(0).double().eval()
    with pytest.raises(
        ValueError,
        match=r"the temperature T = 1e-320 underflows: z / T overflows float64 for 6 of 6 "
        "samples; use a larger temperature",
    ):
        GradNorm(model, params=params, temperature=1e-320).predict(_inputs(0))


@pytest.mark.parametrize("params", [None, ["fc.weight"]])
def test_a_temperature_under_which_every_score_is_zero_warns_naming_it(params):
    """At T = 1e300, z / T is below float64's resolution: softmax(z / T) is exactly uniform,
    V = 0 and every score is 0, a constant that ranks nothing."""
    model = Net(0).double().eval()
    with pytest.warns(
        RuntimeWarning,
        match=r"GradNorm \(p=1, temperature=1e\+300\): all 6 gradient norms of this batch are "
        r"0 in float64.*a smaller temperature",
    ):
        scores = GradNorm(model, params=params, temperature=1e300).predict(_inputs(0))
    assert not bool(scores.any())


@pytest.mark.parametrize("factor", [GradNormU, GradNormV])
def test_a_zero_factor_warns_with_its_cause(factor):
    """V is 0 at T = 1e300 (the temperature named); U is 0 for features that are 0."""
    model = Net(0).double().eval()
    if factor is GradNormU:
        with torch.no_grad():
            model.body.weight.zero_()
            model.body.bias.fill_(-1.0)  # ReLU: h = 0 for every input
    cause = "features h are 0" if factor is GradNormU else "a smaller temperature"
    with pytest.warns(RuntimeWarning, match=rf"temperature=1e\+300\): all 6 .*{cause}"):
        factor(model, temperature=1e300).predict(_inputs(0))


@pytest.mark.parametrize("params", [None, ["fc.weight"]])
def test_a_model_with_one_output_class_is_an_error_saying_why(params):
    model = Net(0).double().eval()
    model.fc = nn.Linear(8, 1).double()
    with pytest.raises(
        ValueError, match=r"at least 2 output classes, got 1: .*V = 0 for every input"
    ):
        GradNorm(model, params=params).predict(_inputs(0))


def test_one_output_class_is_an_error_for_the_factors_and_the_function():
    model = Net(0).double().eval()
    model.fc = nn.Linear(8, 1).double()
    with pytest.raises(ValueError, match="at least 2 output classes, got 1"):
        GradNormV(model).predict(_inputs(0))
    with pytest.raises(ValueError, match="at least 2 output classes, got 1"):
        gradnorm_score(torch.zeros(3, 1), torch.ones(3, 2))


def test_the_feature_norm_u_of_a_one_class_model_is_defined():
    """U = ||h||_p needs no second class: GradNormU scores it, -U (V and the score refuse it)."""
    model = Net(0).double().eval()
    model.fc = nn.Linear(8, 1).double()
    x = _inputs(0)
    with torch.no_grad():
        features = torch.relu(model.body(x))
    torch.testing.assert_close(GradNormU(model, p=2).predict(x), -features.norm(p=2, dim=1))


class PairNet(Net):
    """Returns ``(logits, features)``, as many research models do."""

    def forward(self, x):
        features = torch.relu(self.body(x))
        return self.fc(features), features


class DictNet(Net):
    def forward(self, x):
        return {"logits": super().forward(x)}


@pytest.mark.parametrize(
    ("model", "returned"), [(PairNet(0), "a tuple of 2"), (DictNet(0), "a dict with keys logits")]
)
def test_every_detector_says_what_model_output_it_expects(model, returned):
    message = f"the model must return a logits tensor with one row per input, got {returned}"
    x = _inputs(0).float()
    loader = torch.utils.data.DataLoader(TensorDataset(x, torch.zeros(6, dtype=torch.long)))
    for predict in (
        lambda: GradNorm(model.eval()).predict(x),
        lambda: GradNorm(model.eval(), params=["fc"]).predict(x),
        lambda: LeeAlRegib(model.eval(), epochs=1).fit(loader),
    ):
        with pytest.raises(ValueError, match=message):
            predict()


class NanScores(Detector):
    def fit(self, *args, **kwargs):
        return self

    def fit_features(self, *args, **kwargs):
        return self

    def predict(self, x):
        scores = torch.zeros(len(x), dtype=torch.float64)
        scores[0] = math.nan
        return scores

    def predict_features(self, x):
        return self.predict(x)


class Tiny(Benchmark):
    """An ID set of 8 and one OOD set of 8 samples."""

    ood_names = ["noise"]

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.id_set = TensorDataset(torch.randn(8, 5, generator=generator), torch.arange(8) % 4)
        self.ood = TensorDataset(torch.randn(8, 5, generator=generator), torch.full((8,), -1))

    def train_set(self):
        return self.id_set

    def test_sets(self, known=True, unknown=True):
        return [self.id_set + self.ood]

    def evaluate(self, detector, *args, **kwargs):
        raise NotImplementedError


def test_evaluate_refuses_non_finite_scores_with_the_same_message():
    with pytest.raises(
        ValueError,
        match=r"NanScores \(\): 1 of \d+ scores are not finite \(NaN or inf\); the metrics "
        "need finite scores",
    ):
        gradood.evaluate(Tiny(), {"NanScores": NanScores()}, progress=False)
    model = Net(0, scale=1e3).eval()
    gradnorm = GradNorm(model, p=0.001)
    with pytest.raises(
        ValueError,
        match=r"GradNorm \(p=0\.001, temperature=1\): \d+ of \d+ gradient norms exceed float64",
    ):
        gradood.evaluate(Tiny(), {"GradNorm": gradnorm}, progress=False)
