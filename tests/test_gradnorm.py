"""GradNorm against the official algorithm written out per sample, and inside pytorch-ood."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.detector import GradNorm as PoodGradNorm
from pytorch_ood.detector import MaxSoftmax
from pytorch_ood.metrics import OODMetrics
from pytorch_ood.utils import GridSearch
from torch.utils.data import DataLoader, TensorDataset

from gradood import GradNorm, paper_metrics
from gradood.detectors.gradnorm import PAPER_NORMS, PAPER_TEMPERATURES
from gradood.testing import BigTransferStyleNet, SmallCNN

from references import entrywise_norm, official_gradients

# float64 models: the factorized score and the autograd reference agree to rounding, except
# that both compute C * softmax(z / T) - 1, which cancels when softmax(z / T) ~ 1 / C: the
# relative error is about eps * T / |z_c - mean(z)| <= 2.2e-16 * 1024 / 1e-3 ~ 2e-10.
RTOL_FLOAT64 = 1e-9


def _resnet18():
    return torchvision.models.resnet18(num_classes=10)


MODELS = {
    "resnet18": (_resnet18, "fc.weight"),
    "bit-style": (lambda: BigTransferStyleNet(num_classes=7), "head.conv.weight"),
}


def _parameters(model, names):
    named = dict(model.named_parameters())
    return [named[name] for name in names]


def _model(name: str, seed: int, dtype=torch.float64):
    torch.manual_seed(seed)
    build, weight_name = MODELS[name]
    model = build().to(dtype).eval()
    # non-trivial BatchNorm statistics, so that evaluation mode matters
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model, dict(model.named_parameters())[weight_name]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_matches_official_algorithm_for_every_norm_and_temperature(model_name, seed):
    model, weight = _model(model_name, seed)
    x = torch.randn(5, 3, 16 + 8 * seed, 16 + 8 * seed, dtype=torch.float64)
    detector = GradNorm(model)
    for temperature in PAPER_TEMPERATURES:
        grads = official_gradients(model, [weight], x, temperature)
        for p in PAPER_NORMS:
            detector.set_hyperparameters(p=p, temperature=temperature)
            expected = torch.stack([entrywise_norm(g, p) for g in grads])
            torch.testing.assert_close(detector.predict(x), -expected, rtol=RTOL_FLOAT64, atol=0.0)


@pytest.mark.parametrize("p", [0.05, 0.7, 1.5, 10.0])
def test_norms_beyond_the_paper(p):
    model, weight = _model("bit-style", seed=3)
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    expected = torch.stack(
        [entrywise_norm(g, p) for g in official_gradients(model, [weight], x, 1.0)]
    )
    torch.testing.assert_close(
        GradNorm(model, p=p).predict(x), -expected, rtol=RTOL_FLOAT64, atol=0
    )


def test_float32_model_matches_reference():
    model, weight = _model("resnet18", seed=4, dtype=torch.float32)
    x = torch.randn(6, 3, 24, 24)
    expected = torch.stack([g.abs().sum() for g in official_gradients(model, [weight], x, 1.0)])
    # float32 forward passes of a batch and of single samples round differently (~1e-6)
    torch.testing.assert_close(GradNorm(model).predict(x).float(), -expected, rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("temperature", [0.25, 1.0, 8.0])
def test_is_pytorch_ood_gradnorm_on_the_head_weight_times_minus_num_classes(temperature):
    model, _ = _model("resnet18", seed=5)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    theirs = PoodGradNorm(
        model, param_filter=lambda name: name == "fc.weight", temperature=temperature
    ).predict(x)
    ours = GradNorm(model, temperature=temperature).predict(x)
    # theirs: -(1/C) * official L1 (mean instead of sum over classes); ours: -official
    torch.testing.assert_close(ours, 10 * theirs, rtol=RTOL_FLOAT64, atol=0.0)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_predict_features_equals_predict(model_name):
    model, _ = _model(model_name, seed=6)
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    detector = GradNorm(model, p=2.0, temperature=4.0)
    features = detector.encoder(x)
    torch.testing.assert_close(detector.predict_features(features), detector.predict(x))
    if model_name == "bit-style":  # a 1x1-conv head also takes B x D x 1 x 1
        torch.testing.assert_close(
            detector.predict_features(features[:, :, None, None]), detector.predict(x)
        )


def test_scores_do_not_depend_on_the_batch():
    model, _ = _model("bit-style", seed=7)
    x = torch.randn(7, 3, 16, 16, dtype=torch.float64)
    detector = GradNorm(model)
    together = detector.predict(x)
    one_by_one = torch.cat([detector.predict(x[i : i + 1]) for i in range(7)])
    torch.testing.assert_close(together, one_by_one, rtol=1e-12, atol=0)


def test_uniform_prediction_has_zero_gradient():
    model = BigTransferStyleNet(num_classes=4).double().eval()
    torch.nn.init.zeros_(model.head.conv.weight)
    torch.nn.init.zeros_(model.head.conv.bias)
    with pytest.warns(RuntimeWarning, match=r"temperature=1\): all 3 gradient norms .* are 0"):
        scores = GradNorm(model).predict(torch.randn(3, 3, 8, 8, dtype=torch.float64))
    assert torch.equal(scores, torch.zeros(3, dtype=torch.float64))


# -- the params= mode: exact per-sample gradients of other parameters ------------------------


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_params_mode_on_the_head_weight_is_the_head_mode(model_name):
    model, _ = _model(model_name, seed=11)
    weight_name = MODELS[model_name][1]
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    for p in [0.3, 1.0, 2.0, math.inf]:
        for temperature in [0.5, 1.0, 16.0]:
            head = GradNorm(model, p=p, temperature=temperature)
            chosen = GradNorm(model, p=p, temperature=temperature, params=[weight_name])
            assert chosen.params == [weight_name]
            torch.testing.assert_close(chosen.predict(x), head.predict(x), rtol=1e-9, atol=0)


@pytest.mark.parametrize(("seed", "temperature"), [(0, 0.25), (1, 1.0), (2, 8.0)])
def test_params_mode_matches_per_sample_autograd_on_layer4(seed, temperature):
    model, _ = _model("resnet18", seed=seed)
    names = [n for n, _ in model.named_parameters() if n.startswith("layer4.")]
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    grads = official_gradients(model, _parameters(model, names), x, temperature)
    for p in [0.5, 1.0, 2.0, 3.0, math.inf]:
        detector = GradNorm(model, p=p, temperature=temperature, params=["layer4"])
        assert detector.params == names
        expected = torch.stack([entrywise_norm(g, p) for g in grads])
        # float64: the exact per-sample gradients, summed in another order (see RTOL_FLOAT64)
        torch.testing.assert_close(detector.predict(x), -expected, rtol=RTOL_FLOAT64, atol=0)


def test_params_mode_micro_batch_size_does_not_change_scores():
    model, _ = _model("bit-style", seed=12)
    x = torch.randn(7, 3, 12, 12, dtype=torch.float64)
    scores = [
        GradNorm(model, p=2.0, params=["body", "head"], micro_batch_size=size).predict(x)
        for size in (1, 3, 32)
    ]
    torch.testing.assert_close(scores[0], scores[2], rtol=1e-12, atol=0)
    torch.testing.assert_close(scores[1], scores[2], rtol=1e-12, atol=0)


def test_params_mode_rejects_non_finite_logits():
    model = SmallCNN().eval()
    with torch.no_grad():
        model.fc.bias[1] = float("nan")
    with pytest.raises(ValueError, match="logits contain 4 non-finite values"):
        GradNorm(model, params=["features.0"]).predict(torch.randn(4, 3, 8, 8))


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0, -1.0, float("nan"), -math.inf])
def test_rejects_invalid_norm(p):
    with pytest.raises(ValueError, match="p must be > 0"):
        GradNorm(SmallCNN(), p=p)


@pytest.mark.parametrize("temperature", [0, -2.0, float("nan"), math.inf])
def test_rejects_invalid_temperature(temperature):
    detector = GradNorm(SmallCNN())
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        detector.temperature = temperature
    assert detector.temperature == 1.0


def test_rejects_non_numeric_norm():
    with pytest.raises(TypeError, match="p must be a real number"):
        GradNorm(SmallCNN(), p="1")


def test_rejects_non_finite_inputs():
    x = torch.randn(4, 3, 8, 8)
    x[1, 0, 2, 2] = float("nan")
    x[3, 1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="inputs contain 2 non-finite values"):
        GradNorm(SmallCNN().eval()).predict(x)


def test_rejects_non_finite_logits():
    model = SmallCNN().eval()
    with torch.no_grad():
        model.fc.bias[0] = float("inf")
    with pytest.raises(ValueError, match="logits contain 4 non-finite values"):
        GradNorm(model).predict(torch.randn(4, 3, 8, 8))


@pytest.mark.parametrize("shape", [(4, 15), (4, 16, 2, 2), (16,)])
def test_predict_features_rejects_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"features must have shape B x 16 .*'fc'"):
        GradNorm(SmallCNN(width=8)).predict_features(torch.randn(shape))


def test_predict_features_rejects_non_finite_features():
    features = torch.randn(3, 16)
    features[0, 0] = float("nan")
    with pytest.raises(ValueError, match="features contain 1 non-finite values"):
        GradNorm(SmallCNN(width=8)).predict_features(features)


def test_inputs_without_a_batch_axis_are_named():
    detector = GradNorm(SmallCNN().eval())
    with pytest.raises(ValueError, match=r"GradNorm takes a tensor of inputs with a batch axis"):
        detector.predict(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"GradNorm takes a tensor of .*, got \[\[0\.5\]\]"):
        detector.predict([[0.5]])


def test_empty_batch_gives_empty_scores():
    detector = GradNorm(SmallCNN().eval())
    assert detector.predict(torch.empty(0, 3, 8, 8)).shape == (0,)
    assert detector.predict_features(torch.empty(0, 16)).shape == (0,)


def test_rejects_model_whose_output_is_not_the_head_output():
    class Rescaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = SmallCNN()

        def forward(self, x):
            return 2 * self.net(x)

    with pytest.raises(ValueError, match=r"not the output of its head 'net\.fc'"):
        GradNorm(Rescaled().eval()).predict(torch.randn(2, 3, 8, 8))


class _InPlaceRescaled(torch.nn.Module):
    """Rescales the head's output in place: the storage stays the head's, the values do not."""

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.net = SmallCNN()
        self.temperature = temperature

    def forward(self, x):
        out = self.net(x)
        out /= self.temperature
        return out


def test_in_place_change_after_the_head_is_an_error_on_inputs_and_features():
    torch.manual_seed(8)
    model = _InPlaceRescaled().double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    detector = GradNorm(model)
    with pytest.raises(
        ValueError, match=r"output of its head 'net\.fc' \(a layer or an in-place operation"
    ):
        detector.predict(x)
    with pytest.raises(
        ValueError, match=r"output of its head 'net\.fc' \(a layer or an in-place operation"
    ):
        detector.predict_features(detector.encoder(x))


def test_in_place_change_after_the_head_is_followed_in_params_mode():
    torch.manual_seed(9)
    model = _InPlaceRescaled().double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    expected = torch.stack(
        [g.abs().sum() for g in official_gradients(model, [model.net.fc.weight], x, 1.0)]
    )
    scores = GradNorm(model, params=["net.fc.weight"]).predict(x)
    torch.testing.assert_close(scores, -expected, rtol=RTOL_FLOAT64, atol=0)


def test_wrongly_guessed_head_is_a_clear_error():
    class ProjectionRegisteredLast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 10)
            self.proj = torch.nn.Linear(32, 16)  # registered after fc, applied before it

        def forward(self, x):
            return self.fc(self.proj(x))

    detector = GradNorm(ProjectionRegisteredLast().eval())
    assert detector.head.name == "proj"
    with pytest.raises(ValueError, match=r"output \(shape \(4, 10\)\).*'proj' \(shape \(4, 16\)\)"):
        detector.predict(torch.randn(4, 32))
    fixed = GradNorm(ProjectionRegisteredLast().eval(), head="fc")
    assert fixed.predict(torch.randn(4, 32)).shape == (4,)


def test_scores_carry_no_autograd_graph():
    model, _ = _model("resnet18", seed=10)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    detector = GradNorm(model)
    features = detector.encoder(x)
    assert features.grad_fn is None
    with_graph = features.clone().requires_grad_()
    for scores in (
        detector.predict(x),
        detector.predict_features(features),
        detector.predict_features(with_graph * 1.0),
        GradNorm(model, params=["layer4.1.conv2"]).predict(x),
    ):
        assert scores.grad_fn is None and not scores.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_rejects_unknown_params():
    with pytest.raises(ValueError, match="'layer9' names no parameter or module of SmallCNN"):
        GradNorm(SmallCNN(), params=["layer9"])


def test_warns_about_training_mode():
    with pytest.warns(UserWarning, match=r"training mode .* model.eval\(\)"):
        GradNorm(SmallCNN().train()).predict(torch.randn(2, 3, 8, 8))


# -- inside pytorch-ood ----------------------------------------------------------------------


class _CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = BigTransferStyleNet(num_classes=5)
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        return self.net(x)


class _TinyBenchmark(Benchmark):
    ood_names = ["noise", "bright"]

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.id = TensorDataset(torch.randn(24, 3, 8, 8, generator=generator), torch.arange(24) % 5)
        self.ood = [
            TensorDataset(
                offset + 2 * torch.randn(12, 3, 8, 8, generator=generator),
                -torch.ones(12, dtype=torch.long),
            )
            for offset in (0.0, 3.0)
        ]

    def train_set(self):
        return self.id

    def test_sets(self, known=True, unknown=True):
        return [torch.utils.data.ConcatDataset([self.id, ood]) for ood in self.ood]


def _direct_metrics(detector, dataset):
    x, y = (torch.stack(t) for t in zip(*[dataset[i] for i in range(len(dataset))], strict=True))
    return OODMetrics().update(detector.predict(x), y).compute()


def test_benchmark_evaluate_runs_the_model_once_for_all_settings():
    model = _CountingModel().eval()
    benchmark = _TinyBenchmark()
    detectors = [GradNorm(model, p=1.0), GradNorm(model, p=2.0, temperature=4.0)]
    results = benchmark.evaluate(detectors, loader_kwargs={"batch_size": 10})
    samples = sum(len(d) for d in benchmark.test_sets())
    assert model.calls == samples  # one pass over each test set, shared by both detectors
    for row, (detector, dataset) in zip(
        results, [(d, s) for s in benchmark.test_sets() for d in detectors], strict=True
    ):
        expected = _direct_metrics(detector, dataset)
        assert row["AUROC"] == pytest.approx(expected["AUROC"], abs=1e-12)
        assert row["FPR95TPR"] == pytest.approx(expected["FPR95TPR"], abs=1e-12)


def test_grid_search_over_norm_and_temperature_reuses_one_forward_pass():
    model = _CountingModel().eval()
    val = _TinyBenchmark(seed=1).test_sets()[1]
    detector = GradNorm(model)
    space = {"p": [0.5, 1.0, 2.0, math.inf], "temperature": [0.5, 1.0, 16.0]}
    search = GridSearch(detector, None, DataLoader(val, batch_size=16), space)
    best = search.run()
    assert model.calls == len(val)
    scored = {}
    for p in space["p"]:
        for temperature in space["temperature"]:
            probe = GradNorm(model, p=p, temperature=temperature)
            scored[(p, temperature)] = _direct_metrics(probe, val)["AUROC"]
    assert scored[(best["p"], best["temperature"])] == pytest.approx(max(scored.values()))
    assert (detector.p, detector.temperature) == (best["p"], best["temperature"])


@pytest.mark.parametrize("detector_class", [GradNorm, MaxSoftmax])
def test_ood_metrics_and_paper_metrics_agree_where_their_conventions_do(detector_class):
    model = BigTransferStyleNet(num_classes=5).eval()
    dataset = _TinyBenchmark().test_sets()[1]
    x, y = (torch.stack(t) for t in zip(*[dataset[i] for i in range(len(dataset))], strict=True))
    scores = detector_class(model).predict(x)
    ours = paper_metrics(scores, y)
    theirs = OODMetrics().update(scores, y).compute()
    assert ours["AUROC"] == pytest.approx(theirs["AUROC"], abs=1e-12)
    assert ours["FPR95TPR"] == pytest.approx(theirs["FPR95TPR"], abs=1e-12)
