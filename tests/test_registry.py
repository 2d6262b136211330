"""The detector registry: built-in names, paper presets, entry-point plugins, errors."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from pytorch_ood.detector import ODIN, EnergyBased, Mahalanobis, MaxSoftmax

import gradood
from gradood import registry
from gradood.testing import SmallCNN


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry that reloads entry points, undone after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


def test_builtin_names():
    assert gradood.available_detectors() == [
        "energy",
        "gradnorm",
        "lee-alregib",
        "mahalanobis",
        "msp",
        "odin",
    ]


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
    assert (imagenet.temperature, imagenet.eps) == (1000.0, 0.0)
    cifar = gradood.create_detector("odin", SmallCNN(), preset="cifar")
    assert (cifar.temperature, cifar.eps) == (1000.0, 0.004)


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
        ValueError, match="unknown detector 'gradnorn'; known detectors: energy, gradnorm"
    ):
        gradood.create_detector("gradnorn", SmallCNN())


def test_unknown_preset_lists_known_ones():
    with pytest.raises(
        ValueError, match="'odin' has no preset 'cifar10'; its presets: cifar, imagenet"
    ):
        gradood.create_detector("odin", SmallCNN(), preset="cifar10")


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
