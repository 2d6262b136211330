"""Lee & AlRegib: features against per-sample autograd, training, noise, saving, pytorch-ood."""

from __future__ import annotations

import io
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from pytorch_ood.api import RequiresFittingException
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.utils import GridSearch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from gradood import LeeAlRegib, paper_metrics
from gradood.detectors.lee_alregib import _default_linear_init, confounding_label_loss
from gradood.testing import BigTransferStyleNet, SmallCNN

# float64 models: exact per-sample gradients summed in another order than autograd's (see
# tests/test_gradients.py); relative differences observed ~1e-15
RTOL_FLOAT64 = 1e-11


def per_sample_squared_norms(model, x):
    """Per sample (batch of one): BCE(sigmoid(z), 1) summed over classes, autograd per tensor."""
    params = list(model.parameters())
    rows = []
    for sample in x:
        logits = model(sample[None])
        loss = F.binary_cross_entropy(
            torch.sigmoid(logits), torch.ones_like(logits), reduction="sum"
        )
        rows.append(torch.stack([g.square().sum() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def _float64_model(kind, seed):
    torch.manual_seed(seed)
    model = (
        SmallCNN(num_classes=4) if kind == "cnn" else BigTransferStyleNet(num_classes=4)
    ).double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["cnn", "bit-style"])
def test_features_are_per_sample_squared_gradient_norms(kind, seed):
    model = _float64_model(kind, seed)
    x = torch.randn(5, 3, 10, 10, dtype=torch.float64)
    detector = LeeAlRegib(model, micro_batch_size=2)
    assert detector.feature_names == [name for name, _ in model.named_parameters()]
    features = detector.gradient_features(x)
    assert features.dtype == torch.float64
    torch.testing.assert_close(
        features, per_sample_squared_norms(model, x), rtol=RTOL_FLOAT64, atol=0
    )
    for mode in (torch.no_grad, torch.inference_mode):  # gradients are enabled inside
        with mode():
            torch.testing.assert_close(detector.gradient_features(x), features, rtol=1e-12, atol=0)


def test_loss_is_sigmoid_bce_against_ones_not_softmax():
    logits = torch.randn(6, 5, dtype=torch.float64)
    sigmoid_bce = F.binary_cross_entropy_with_logits(
        logits, torch.ones_like(logits), reduction="none"
    )
    torch.testing.assert_close(confounding_label_loss(logits), sigmoid_bce.sum(dim=1))
    softmax_bce = F.binary_cross_entropy(
        logits.softmax(dim=1), torch.ones_like(logits), reduction="none"
    )
    assert not torch.allclose(confounding_label_loss(logits), softmax_bce.sum(dim=1))


def test_bit_s_r101x1_has_306_features():
    model = timm.create_model("resnetv2_101x1_bit", pretrained=False)
    assert len(LeeAlRegib(model).feature_names) == 306


# -- a small trained classifier on synthetic images ------------------------------------------

MEAN, STD = 0.5, 0.25


def synthetic_images(n, seed):
    """Three classes of oriented waves in [0, 1], normalized with MEAN and STD."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    grid = torch.linspace(0, 1, 8)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    angle = labels.float()[:, None, None] * math.pi / 3
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=generator)
    wave = torch.sin(6 * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
    pixels = 0.5 + 0.3 * wave[:, None].expand(n, 3, 8, 8)
    pixels = pixels + 0.05 * torch.randn(n, 3, 8, 8, generator=generator)
    return (pixels.clamp(0, 1) - MEAN) / STD, labels


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x, y = synthetic_images(300, seed=0)
    model = SmallCNN(num_classes=3, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    assert (model(x).argmax(dim=1) == y).float().mean() > 0.9
    return model, DataLoader(TensorDataset(x[:150], y[:150]), batch_size=64)


def test_separates_id_from_noise(trained):
    model, loader = trained
    detector = LeeAlRegib(model, mean=MEAN, std=STD, epochs=50).fit(loader)
    assert detector.heldout_auroc_ > 0.9
    assert 0 <= detector.best_epoch_ < 50
    x, y = synthetic_images(60, seed=1)
    noise = (torch.rand(60, 3, 8, 8, generator=torch.Generator().manual_seed(2)) - MEAN) / STD
    scores = torch.cat([detector.predict(x), detector.predict(noise)])
    labels = torch.cat([y, -torch.ones(60, dtype=torch.long)])
    assert scores.dtype == torch.float64
    assert paper_metrics(scores, labels)["AUROC"] > 0.9


def test_fitting_is_reproducible(trained):
    model, loader = trained
    x, _ = synthetic_images(20, seed=3)
    first = LeeAlRegib(model, mean=MEAN, std=STD, epochs=5, seed=7).fit(loader)
    again = LeeAlRegib(model, mean=MEAN, std=STD, epochs=5, seed=7).fit(loader)
    other = LeeAlRegib(model, mean=MEAN, std=STD, epochs=5, seed=8).fit(loader)
    assert torch.equal(first.predict(x), again.predict(x))
    assert first.heldout_auroc_ == again.heldout_auroc_
    assert not torch.equal(first.predict(x), other.predict(x))


@pytest.mark.parametrize(("fan_in", "seed"), [(1, 0), (7, 1), (306, 2)])
def test_classifier_starts_from_nn_linears_default_initialization(fan_in, seed):
    layer = nn.Linear(fan_in, 5, dtype=torch.float64)
    _default_linear_init(layer, torch.Generator().manual_seed(seed))
    with torch.random.fork_rng():  # reference: nn.Linear's own initialization, same seed
        torch.manual_seed(seed)
        reference = nn.Linear(fan_in, 5, dtype=torch.float64)
    assert torch.equal(layer.weight, reference.weight)
    assert torch.equal(layer.bias, reference.bias)


def test_noise_range_and_reproducibility_per_sample():
    detector = LeeAlRegib(
        SmallCNN(), mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.1), input_shape=(3, 6, 5)
    )
    noise = detector.noise(400).double()
    assert noise.shape == (400, 3, 6, 5)
    for c, (m, s) in enumerate([(0.5, 0.5), (0.4, 0.25), (0.3, 0.1)]):
        low, high = (0 - m) / s, (1 - m) / s  # pixel values in [0, 1], normalized
        channel = noise[:, c]
        assert low <= float(channel.min()) < low + 0.01 * (high - low)
        assert high - 0.01 * (high - low) < float(channel.max()) <= high
        assert float(channel.mean()) == pytest.approx((low + high) / 2, abs=0.01 * (high - low))
    assert torch.equal(detector.noise(7)[5], noise[5])  # image i depends only on seed and i
    bit = LeeAlRegib(SmallCNN(), mean=0.5, std=0.5, input_shape=(3, 4, 4)).noise(50)
    assert float(bit.min()) >= -1 and float(bit.max()) <= 1  # BiT: [-1, 1]


def test_state_dict_round_trip_without_the_model(trained):
    model, loader = trained
    detector = LeeAlRegib(model, mean=MEAN, std=STD, epochs=5, hidden_width=16).fit(loader)
    buffer = io.BytesIO()
    torch.save(detector.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    model_size = sum(p.numel() for p in model.parameters())
    saved_size = sum(v.numel() for v in state["classifier"].values())
    assert saved_size != model_size and "model" not in state
    restored = LeeAlRegib(model).load_state_dict(state)
    x, _ = synthetic_images(10, seed=4)
    assert torch.equal(restored.predict(x), detector.predict(x))
    assert restored.heldout_auroc_ == detector.heldout_auroc_
    assert restored.hidden_width == 16
    with pytest.raises(ValueError, match=r"first difference: 'features.0.weight' vs 'root.conv"):
        LeeAlRegib(BigTransferStyleNet()).load_state_dict(state)


def test_given_ood_data_replace_the_noise(trained):
    model, loader = trained
    generator = torch.Generator().manual_seed(5)
    flat = 0.9 + 0.05 * torch.randn(60, 3, 8, 8, generator=generator)  # bright, no pattern
    shifted = TensorDataset((flat - MEAN) / STD, torch.zeros(60, dtype=torch.long))
    detector = LeeAlRegib(model, epochs=20)
    detector.fit(loader, DataLoader(shifted, batch_size=32))
    assert detector._noise_cache is None
    assert detector.heldout_auroc_ > 0.9


def test_fit_gradient_features_without_ood_rows_needs_the_input_shape(trained):
    model, _ = trained
    x, y = synthetic_images(30, seed=6)
    detector = LeeAlRegib(model, epochs=2)
    features = detector.gradient_features(x)
    with pytest.raises(ValueError, match=r"no OOD sample .* pass input_shape="):
        detector.fit_gradient_features(features, y)
    LeeAlRegib(model, epochs=2, input_shape=(3, 8, 8)).fit_gradient_features(features, y)


# -- inside pytorch-ood ----------------------------------------------------------------------


class _Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.samples = 0

    def forward(self, x):
        self.samples += x.shape[0]
        return self.model(x)


class _TinyBenchmark(Benchmark):
    ood_names = ["noise", "flipped"]

    def __init__(self):
        x, y = synthetic_images(30, seed=7)
        self.id = TensorDataset(x, y)
        noise = (torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(8)) - MEAN) / STD
        flipped = synthetic_images(20, seed=9)[0].transpose(-1, -2) * 2
        self.ood = [TensorDataset(t, -torch.ones(20, dtype=torch.long)) for t in (noise, flipped)]

    def train_set(self):
        return self.id

    def test_sets(self, known=True, unknown=True):
        return [ConcatDataset([self.id, ood]) for ood in self.ood]


def test_benchmark_evaluate_scores_the_inputs_as_predict(trained):
    """A ``GradientDetector``: pytorch-ood's ``Benchmark.evaluate`` runs each detector on the
    inputs (no cached representation fits gradient features)."""
    model, loader = trained
    counting = _Counting(model)
    detectors = [
        LeeAlRegib(counting, mean=MEAN, std=STD, epochs=5, seed=s).fit(loader) for s in (0, 1)
    ]
    counting.samples = 0
    benchmark = _TinyBenchmark()
    results = benchmark.evaluate(detectors, loader_kwargs={"batch_size": 16})
    assert counting.samples == len(detectors) * sum(len(d) for d in benchmark.test_sets())
    for row, (detector, dataset) in zip(
        results, [(d, s) for s in benchmark.test_sets() for d in detectors], strict=True
    ):
        x, y = (
            torch.stack(t) for t in zip(*[dataset[i] for i in range(len(dataset))], strict=True)
        )
        assert row["AUROC"] == pytest.approx(
            paper_metrics(detector.predict(x), y)["AUROC"], abs=1e-9
        )


def test_grid_search_refits_on_the_inputs_and_computes_the_noise_once(trained):
    """A ``GradientDetector``: ``GridSearch`` fits each candidate (and the best again) on the
    inputs and scores the validation inputs; the noise's features are computed once."""
    model, loader = trained
    counting = _Counting(model)
    detector = LeeAlRegib(counting, mean=MEAN, std=STD, epochs=3, input_shape=(3, 8, 8))
    validation = _TinyBenchmark().test_sets()[0]
    fit_loader = DataLoader(loader.dataset, batch_size=64)
    space = {"hidden_width": [4, 8, 16]}
    search = GridSearch(detector, fit_loader, DataLoader(validation, batch_size=16), space)
    best = search.run()
    n_id = len(loader.dataset)
    fits, candidates = len(space["hidden_width"]) + 1, len(space["hidden_width"])
    assert counting.samples == fits * n_id + n_id + candidates * len(validation)
    assert detector.hidden_width == best["hidden_width"]


# -- errors ----------------------------------------------------------------------------------


def test_predict_before_fit_raises():
    detector = LeeAlRegib(SmallCNN().eval())
    with pytest.raises(RequiresFittingException):
        detector.predict(torch.randn(2, 3, 8, 8))
    with pytest.raises(RequiresFittingException):
        detector.state_dict()


def test_predict_gradient_features_rejects_wrong_shape_and_values(trained):
    model, loader = trained
    detector = LeeAlRegib(model, mean=MEAN, std=STD, epochs=2).fit(loader)
    with pytest.raises(ValueError, match=r"features must have shape B x 10 .* got \(3, 9\)"):
        detector.predict_gradient_features(torch.rand(3, 9))
    with pytest.raises(ValueError, match="features contain 1 non-finite values"):
        detector.predict_gradient_features(torch.tensor([[float("nan")] + [1.0] * 9]))
    with pytest.raises(ValueError, match="must be >= 0"):
        detector.predict_gradient_features(-torch.ones(1, 10))


def test_too_few_samples_for_the_split():
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    loader = DataLoader(TensorDataset(x, torch.zeros(2, dtype=torch.long)), batch_size=4)
    with pytest.raises(
        ValueError,
        match=r"needs at least one ID and one OOD sample in each part; got 2 ID and 2 OOD",
    ):
        LeeAlRegib(model, epochs=1).fit(loader)


def test_mean_and_std_must_match_the_channels():
    model = SmallCNN().eval()
    loader = DataLoader(TensorDataset(torch.randn(6, 3, 8, 8), torch.zeros(6, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"mean and std need 1 or 3 values"):
        LeeAlRegib(model, mean=(0.5, 0.5), epochs=1).fit(loader)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": (0.5, 0.5)}, "split must be three fractions"),
        ({"split": (0.4, 0.4, 0.3)}, "split must be three fractions"),
        ({"hidden_width": 0}, "hidden_width must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be a finite number > 0"),
        ({"std": (0.5, 0.0, 0.5)}, "std must be a positive number"),
        ({"log_epsilon": 0.0}, "log_epsilon must be a finite number > 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"params": ["nope"]}, "'nope' names no parameter or module of SmallCNN"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LeeAlRegib(SmallCNN(), **kwargs)
