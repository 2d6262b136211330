"""Every registered pytorch-ood detector, built and fitted through its registry recipe, scores
as the pytorch-ood detector used directly (built from the model's own modules and fitted as its
documentation says) on the same seeded model and data; and ``gradood.evaluate`` serves those
that score logits or penultimate features from its one cached forward pass.

Float32, as several pytorch-ood detectors (DICE, fDBD, NCI, ...) cast features to float32
whatever the model's dtype. Tolerance: both sides run the same float32 operations on the same
values (the registry's encoder hooks the head's input, the direct one calls
``model.features``: the same layers), so scores agree to the last bit unless a kernel reorders
a reduction for other shapes; 1e-5 relative (~100 float32 ulps) covers that and no real
difference. Fits that sort or select (percentiles, nearest neighbours) see identical values,
hence make identical choices. The training labels are the model's own predictions, so that
every class has correctly classified samples (SHE needs them).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from pytorch_ood import detector as pood
from pytorch_ood.api import Detector
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import gradood
from gradood import registry
from gradood.testing import SmallCNN

CLASSES = 3
RTOL, ATOL = 1e-5, 1e-6


def make_model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(num_classes=CLASSES, width=4)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    with torch.no_grad():  # centre the logits, so that every class is predicted
        calibration = images(64, torch.Generator().manual_seed(seed + 1))
        logits = model(calibration)
        mean, std = logits.mean(0), logits.std(0)
        model.fc.weight /= std[:, None]
        model.fc.bias.sub_(mean).div_(std)
    return model


def images(count: int, generator: torch.Generator, scale: float = 1.0) -> Tensor:
    return torch.randn(count, 3, 8, 8, generator=generator) * scale


def predicted(x: Tensor) -> TensorDataset:
    """``x`` labelled with the model's predictions, which must cover every class."""
    with torch.no_grad():
        labels = make_model()(x).argmax(1)
    assert set(labels.tolist()) == set(range(CLASSES))
    return TensorDataset(x, labels)


@pytest.fixture(scope="module")
def data() -> dict[str, TensorDataset]:
    generator = torch.Generator().manual_seed(0)
    return {
        "train": predicted(images(60, generator)),
        "tuning": predicted(images(21, generator)),
        "test": TensorDataset(
            torch.cat([images(20, generator), images(20, generator, scale=3.0)]),
            torch.cat([torch.arange(20) % CLASSES, torch.full((20,), -1)]),
        ),
    }


# -- pytorch-ood used directly, from the model's own modules ---------------------------------


def _maps(model: SmallCNN) -> Callable[[Tensor], Tensor]:
    return lambda x: model.features(x)[:, :, None, None]


def _head_on_maps(model: SmallCNN) -> Callable[[Tensor], Tensor]:
    return lambda maps: model.fc(maps.flatten(1))


#: name -> (``model -> detector`` as pytorch-ood's docs build it, what ``fit`` takes)
DIRECT: dict[str, tuple[Callable[[SmallCNN], Detector], str | None]] = {
    "msp": (lambda m: pood.MaxSoftmax(m), None),
    "energy": (lambda m: pood.EnergyBased(m), None),
    "odin": (lambda m: pood.ODIN(m), None),
    "maxlogit": (lambda m: pood.MaxLogit(m), None),
    "entropy": (lambda m: pood.Entropy(m), None),
    "gen": (lambda m: pood.GEN(m), None),
    "klmatching": (lambda m: pood.KLMatching(m), "train"),
    "temperature-scaling": (lambda m: pood.TemperatureScaling(m), "tuning"),
    "mahalanobis": (lambda m: pood.Mahalanobis(m.features), "train"),
    "rmd": (lambda m: pood.RMD(m.features), "train"),
    "gmm": (lambda m: pood.GMM(m.features), "train"),
    "knn": (lambda m: pood.KNN(m.features), "train"),
    "vim": (lambda m: pood.ViM(m.features, d=4, w=m.fc.weight, b=m.fc.bias), "train"),
    "dice": (lambda m: pood.DICE(m.features, w=m.fc.weight, b=m.fc.bias, p=0.9), "train"),
    "she": (lambda m: pood.SHE(m.features, m.fc), "train"),
    "nnguide": (lambda m: pood.NNGuide(m.features, m.fc), "train"),
    "pnml": (lambda m: pood.PNML(m.features, m.fc), "train"),
    "nci": (lambda m: pood.NCI(m.features, m.fc), "train"),
    "fdbd": (lambda m: pood.fDBD(m.features, m.fc), "train"),
    "lts": (lambda m: pood.LTS(m.features, m.fc), None),
    "react": (lambda m: pood.ReAct(_maps(m), _head_on_maps(m)), "train"),
    "vra": (lambda m: pood.VRA(_maps(m), _head_on_maps(m)), "train"),
    "ash": (lambda m: pood.ASH(_maps(m), _head_on_maps(m)), None),
    "scale": (lambda m: pood.SCALE(_maps(m), _head_on_maps(m)), None),
    "mahalanobis-odin": (lambda m: pood.MahalanobisODIN(m.features), "train"),
    "graduncertainty": (lambda m: pood.GradUncertainty(m), None),
}

#: the registered pytorch-ood detectors (gradood's own are tested in their own files)
POOD_NAMES = [
    name
    for name in gradood.available_detectors()
    if registry.detector_spec(name).summary.startswith("pytorch-ood ")
]


def test_every_registered_pytorch_ood_detector_has_a_direct_reference():
    assert len(gradood.available_detectors()) >= 25
    assert sorted(POOD_NAMES) == sorted(DIRECT)


def _loader(dataset: TensorDataset) -> DataLoader:
    return DataLoader(dataset, batch_size=16)


def _scores(detector: Detector, x: Tensor) -> Tensor:
    return detector.predict(x).detach()


@pytest.mark.parametrize("name", POOD_NAMES)
def test_recipe_scores_equal_pytorch_ood_used_directly(name, data):
    model = make_model()
    build, fit_on = DIRECT[name]
    direct = build(model)
    assert direct.requires_fit == (fit_on is not None), name
    assert registry.detector_spec(name).fit == (fit_on or "none"), name
    if fit_on is not None:
        direct.fit(_loader(data[fit_on]))
    ours = gradood.build_and_fit(
        name,
        model,
        train_loader=_loader(data["train"]),
        tuning_loader=_loader(data["tuning"]),
    )
    # pytorch-ood's own class, or a subclass of it that only changes where it scores
    # (graduncertainty: outside inference mode, gradood.grad_mode)
    assert isinstance(ours, type(direct))
    x = data["test"].tensors[0]
    expected = _scores(direct, x)
    assert expected.shape == (len(x),) and bool(expected.isfinite().all())
    torch.testing.assert_close(_scores(ours, x), expected, rtol=RTOL, atol=ATOL)


def test_a_recipe_that_needs_data_says_which():
    with pytest.raises(ValueError, match="'knn' is fitted on the ID training data: pass train_lo"):
        gradood.build_and_fit("knn", make_model())
    with pytest.raises(ValueError, match="held-out ID data: pass tuning_loader="):
        gradood.build_and_fit("temperature-scaling", make_model(), train_loader=[])


class TinyBenchmark:
    """The test data as a pytorch-ood style benchmark: ID test set and one OOD set."""

    ood_names = ["noise"]

    def __init__(self, test: TensorDataset):
        x, y = test.tensors
        known = y >= 0
        self.id_test = TensorDataset(x[known], y[known])
        self.ood = TensorDataset(x[~known], y[~known])

    def test_sets(self, known: bool = True, unknown: bool = True) -> list[TensorDataset]:
        if known and unknown:
            return [self.id_test + self.ood]
        return [self.id_test] if known else [self.ood]


class CountingModel(nn.Module):
    """A model wrapper that counts the samples of its forward passes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model
        self.samples = 0

    def forward(self, x: Tensor) -> Tensor:
        self.samples += x.shape[0]
        return self.inner(x)


def test_logits_and_features_detectors_are_scored_from_the_cached_pass(data):
    model = CountingModel(make_model()).eval()
    cached = [
        name
        for name in gradood.available_detectors()
        if registry.detector_spec(name).scores_from in ("logits", "features")
    ]
    train, tuning = _loader(data["train"]), _loader(data["tuning"])
    entries = [
        (name, {}, gradood.build_and_fit(name, model, train_loader=train, tuning_loader=tuning))
        for name in cached
    ]
    benchmark = TinyBenchmark(data["test"])
    model.samples = 0
    table = gradood.evaluate(benchmark, entries, batch_size=64, progress=False)
    assert model.samples == len(data["test"])  # one forward pass over ID and OOD, for all
    x, y = data["test"].tensors
    for name, _settings, detector in entries:
        expected = gradood.paper_metrics(detector.predict(x).detach(), y)
        row = table[(table["method"] == name) & (table["ood_data"] == "noise")]
        for metric, value in expected.items():
            # the same scores up to rounding; the metrics then agree but for near-ties
            assert row[metric].item() == pytest.approx(value, abs=1e-12), (name, metric)
