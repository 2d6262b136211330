"""The detector registry: built-in names, paper presets, entry-point plugins, errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pytorch_ood.detector import ODIN, EnergyBased, Mahalanobis, MaxSoftmax

import gradood
from gradood import registry
from gradood.detectors import MahalanobisEnsemble
from gradood.models import CIFAR_RESNET20
from gradood.testing import SmallCNN


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry that reloads entry points, undone after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


def test_builtin_names():
    names = gradood.available_detectors()
    assert len(names) >= 25
    assert {"gradnorm", "lee-alregib", "mahalanobis", "mahalanobis-paper", "msp", "odin"} <= set(
        names
    )


def test_every_builtin_recipe_is_complete():
    for name in gradood.available_detectors():
        spec = registry.detector_spec(name)
        assert spec.fit in registry.FIT_KINDS and spec.fit != "auto", name
        assert spec.scores_from in registry.REPRESENTATIONS, name
        assert spec.summary, name


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("msp", MaxSoftmax),
        ("odin", ODIN),
        ("energy", EnergyBased),
        ("mahalanobis", Mahalanobis),
        ("gradnorm", gradood.GradNorm),
        ("lee-alregib", gradood.LeeAlRegib),
    ],
)
def test_creates_each_builtin(name, cls):
    assert type(gradood.create_detector(name, SmallCNN())) is cls


def test_odin_presets_are_the_papers():
    imagenet = gradood.create_detector("odin", SmallCNN(), preset="imagenet")
    assert (imagenet.temperature, imagenet.eps, imagenet.norm_std) == (1000.0, 0.0, None)
    for preset in ("cifar", "cifar10", "cifar100"):
        cifar = gradood.create_detector("odin", SmallCNN(), preset=preset)
        assert (cifar.temperature, cifar.eps) == (1000.0, 0.004)
        # epsilon in pixel units: the sign step is divided by the normalization's std
        assert tuple(cifar.norm_std) == CIFAR_RESNET20.std


def test_odin_cifar_preset_steps_in_pixel_units():
    model = SmallCNN().double().eval()
    detector = gradood.create_detector("odin", model, preset="cifar10")
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    expected = x.clone().requires_grad_()
    logits = model(expected) / 1000.0
    loss = torch.nn.functional.cross_entropy(logits, logits.argmax(dim=1))
    (gradient,) = torch.autograd.grad(loss, expected)
    std = torch.tensor(CIFAR_RESNET20.std, dtype=torch.float64).view(1, 3, 1, 1)
    perturbed = x - 0.004 * gradient.sign() / std
    reference = -torch.softmax(model(perturbed) / 1000.0, dim=1).amax(dim=1)
    torch.testing.assert_close(detector(x).detach(), reference.detach())


@pytest.mark.parametrize(
    ("preset", "magnitude", "norm_std", "norm_mean"),
    [
        ("imagenet", 0.001, None, None),
        ("cifar10", 0.01, CIFAR_RESNET20.std, CIFAR_RESNET20.mean),
        ("cifar100", 0.005, CIFAR_RESNET20.std, CIFAR_RESNET20.mean),
    ],
)
def test_mahalanobis_paper_presets(preset, magnitude, norm_std, norm_mean):
    layers = ["features.2", "features.5"]  # SmallCNN has no default feature layers
    detector = gradood.create_detector(
        "mahalanobis-paper", SmallCNN(), preset=preset, layers=layers
    )
    assert type(detector) is MahalanobisEnsemble
    assert (detector.magnitude, detector.layers) == (magnitude, layers)
    assert detector.norm_std == (None if norm_std is None else tuple(norm_std))
    assert detector.norm_mean == (None if norm_mean is None else list(norm_mean))
    assert (detector.adversarial_step, detector.adversarial_clamp) == (0.05, (0.0, 1.0))
    assert detector.samples == 500


@pytest.mark.parametrize("settings", [{"paper": True}, {"magnitude": 0.01}, {"preset": "cifar10"}])
def test_the_paper_variant_is_its_own_name(settings):
    with pytest.raises(ValueError, match="registered name 'mahalanobis-paper'"):
        gradood.create_detector("mahalanobis", SmallCNN(), **settings)


def test_lee_alregib_preset_is_bits_input_normalization():
    detector = gradood.create_detector("lee-alregib", SmallCNN(), preset="imagenet")
    assert (detector.mean, detector.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_keyword_arguments_override_a_preset():
    detector = gradood.create_detector("gradnorm", SmallCNN(), preset="imagenet", p=2)
    assert (detector.p, detector.temperature) == (2.0, 1.0)


def test_mahalanobis_uses_the_penultimate_features():
    model = SmallCNN().eval()
    detector = gradood.create_detector("mahalanobis", model)
    assert detector.encoder(torch.randn(2, 3, 8, 8)).shape == (2, 16)


def test_unknown_name_lists_known_ones():
    with pytest.raises(
        ValueError, match="unknown detector 'gradnorn'; known detectors: ash, dice, energy"
    ):
        gradood.create_detector("gradnorn", SmallCNN())


def test_unknown_preset_lists_known_ones():
    with pytest.raises(
        ValueError,
        match="'odin' has no preset 'svhn'; its presets: cifar, cifar10, cifar100, imagenet",
    ):
        gradood.create_detector("odin", SmallCNN(), preset="svhn")


def test_every_preset_is_documented():
    doc = gradood.available_detectors.__doc__
    for name in gradood.available_detectors():
        spec = registry.detector_spec(name)
        assert f"``{name}``" in doc
        for preset in spec.presets:
            assert f"``{preset}``" in doc


def test_register_detector(fresh_registry):
    registry.register_detector("max-logit", lambda model: EnergyBased(model, t=1e-3))
    assert "max-logit" in gradood.available_detectors()
    with pytest.raises(ValueError, match="already registered"):
        registry.register_detector("msp", MaxSoftmax)


class _Recorder(EnergyBased):
    """Records what ``fit`` was given."""

    def __init__(self, model, requires_fit=False):
        super().__init__(model)
        self.requires_fit = requires_fit
        self.fitted_on = None

    def fit(self, loader, **kwargs):
        self.fitted_on = (loader, kwargs)
        return self


@pytest.mark.parametrize(
    ("fit", "requires_fit", "expected"),
    [
        ("none", True, None),
        ("train", False, ("train", {})),
        ("surrogate", False, ("train", {})),
        ("tuning", False, ("tuning", {})),
        ("train+tuning", False, ("train", {"tuning_loader": "tuning"})),
        ("auto", True, ("train", {})),
        ("auto", False, None),
    ],
)
def test_build_and_fit_follows_the_fit_kind(fresh_registry, fit, requires_fit, expected):
    registry.register_detector("recorder", _Recorder, fit=fit)
    detector = gradood.build_and_fit(
        "recorder",
        SmallCNN(),
        train_loader="train",
        tuning_loader="tuning",
        requires_fit=requires_fit,
    )
    assert detector.fitted_on == expected


def test_an_unknown_fit_kind_is_refused(fresh_registry):
    with pytest.raises(ValueError, match="fit must be one of none, train"):
        registry.register_detector("recorder", _Recorder, fit="always")


def _write_plugin(tmp_path, entry_points):
    (tmp_path / "toy_plugin.py").write_text(
        textwrap.dedent(
            """
            from pytorch_ood.detector import EnergyBased

            class Toy(EnergyBased):
                gradood_presets = {"cold": {"t": 0.5}}

            NOT_CALLABLE = 3
            """
        )
    )
    dist = tmp_path / "toy_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[gradood.detectors]\n" + entry_points)


def test_entry_point_plugins(tmp_path, monkeypatch, fresh_registry):
    _write_plugin(
        tmp_path,
        "toy = toy_plugin:Toy\n"
        "broken = toy_plugin_missing_module:Thing\n"
        "constant = toy_plugin:NOT_CALLABLE\n"
        "msp = toy_plugin:Toy\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_plugin", raising=False)
    with pytest.warns(UserWarning) as caught:
        names = gradood.available_detectors()
    messages = " | ".join(str(w.message) for w in caught)
    assert "'broken' (toy_plugin_missing_module:Thing) failed to load" in messages
    assert "ModuleNotFoundError" in messages
    assert "'constant' (toy_plugin:NOT_CALLABLE) is not callable" in messages
    assert "'msp' (toy_plugin:Toy) is ignored" in messages
    assert "toy" in names and "broken" not in names and "constant" not in names
    toy = gradood.create_detector("toy", SmallCNN(), preset="cold")
    assert type(toy).__name__ == "Toy" and toy.t == 0.5
    assert type(gradood.create_detector("msp", SmallCNN())) is MaxSoftmax


def test_every_preset_is_in_the_readme():
    """In the README's table of detectors, or a table of the docs (``docs/**/*.md``)."""
    root = Path(__file__).parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]
    lines = [line for page in pages if page.exists() for line in page.read_text().splitlines()]
    for name in gradood.available_detectors():
        row = next(line for line in lines if line.startswith(f"| `{name}` |"))
        for preset in registry.detector_spec(name).presets:
            assert f"`{preset}`" in row, (name, preset)
