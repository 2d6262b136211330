"""What gradood's detectors show of themselves: the constructor's parameters as the class's
signature (``inspect.signature``, ``help()``), their settings in ``repr``, a ``ValueError``
saying what was expected for inputs of the wrong shape, and no progress bar unless asked."""

from __future__ import annotations

import inspect
import math
import pydoc

import pytest
import torch
from pytorch_ood.api import Detector
from torch.utils.data import DataLoader, TensorDataset

import gradood
import gradood.detectors
from gradood.detectors import GradNormU, GradNormV, LeeAlRegib, MahalanobisEnsemble
from gradood.detectors.settings import ShowsSettings, settings_repr
from gradood.testing import SmallCNN


@pytest.fixture(scope="module")
def model() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=2, width=4).eval()


def _loader(count: int = 10, shape: tuple[int, ...] = (3, 8, 8)) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(count, *shape), torch.arange(count) % 2), 5)


def _parameters(cls: type) -> list[str]:
    return list(inspect.signature(cls).parameters)


def test_gradnorm_signature_is_its_constructors():
    assert _parameters(gradood.GradNorm) == [
        "model",
        "param_filter",
        "micro_batch_size",
        "temperature",
        "p",
        "head",
        "params",
    ]
    signature = inspect.signature(gradood.GradNorm)
    assert signature.parameters["p"].default == 1.0
    assert signature.parameters["p"].kind is inspect.Parameter.KEYWORD_ONLY


def test_an_instance_keeps_the_signature_of_its_call(model):
    detector = gradood.GradNorm(model)
    assert inspect.signature(detector) == inspect.signature(detector.__call__)


def test_every_detector_class_shows_its_own_constructor():
    for cls in (GradNormU, GradNormV):
        assert _parameters(cls) == ["model", "temperature", "p", "head"]
    assert _parameters(LeeAlRegib)[:2] == ["model", "param_filter"]
    assert "layers" in _parameters(MahalanobisEnsemble)


def test_help_names_gradnorms_parameters():
    text = pydoc.render_doc(gradood.GradNorm, renderer=pydoc.plaintext)
    assert "GradNorm(model: 'nn.Module', param_filter" in text
    assert "*args" not in text.split("|  Methods defined here")[0]


def test_gradnorm_repr_shows_its_settings(model):
    assert repr(gradood.GradNorm(model, p=2, temperature=4)) == (
        "GradNorm(p=2, temperature=4, head='fc')"
    )
    assert repr(gradood.GradNorm(model, p=math.inf, temperature=0.5)) == (
        "GradNorm(p=inf, temperature=0.5, head='fc')"
    )
    assert repr(gradood.GradNorm(model, params=["fc"], micro_batch_size=8)) == (
        "GradNorm(p=1, temperature=1, params=['fc.weight', 'fc.bias'], micro_batch_size=8)"
    )


def test_factor_reprs_name_the_factor(model):
    assert repr(GradNormU(model, p=3)) == "GradNormU(p=3, temperature=1, head='fc')"
    assert repr(GradNormV(model, temperature=2)) == "GradNormV(p=1, temperature=2, head='fc')"


def test_lee_alregib_repr_shows_its_settings(model):
    shown = repr(LeeAlRegib(model, params=["fc"], epochs=7, lr=0.01, seed=3))
    assert shown.startswith("LeeAlRegib(mean=(0,), std=(1,), input_shape=None, hidden_width=128")
    for part in ("epochs=7", "lr=0.01", "seed=3", "params=['fc.weight', 'fc.bias']"):
        assert part in shown


def test_mahalanobis_repr_shows_its_settings(model):
    shown = repr(MahalanobisEnsemble(model, ["features"], magnitude=0.0, samples=20))
    assert shown.startswith("MahalanobisEnsemble(layers=['features'], magnitude=0, ")
    assert "samples=20" in shown and "adversarial_step=0.05" in shown


def test_every_exported_detector_shows_its_settings():
    detectors = [
        getattr(gradood.detectors, name)
        for name in gradood.detectors.__all__
        if isinstance(getattr(gradood.detectors, name), type)
        and issubclass(getattr(gradood.detectors, name), Detector)
    ]
    # every exported class is a detector found here: the filter drops none
    exported_classes = {name for name in gradood.detectors.__all__ if name[0].isupper()}
    assert exported_classes and {d.__name__ for d in detectors} == exported_classes
    assert [d.__name__ for d in detectors if not issubclass(d, ShowsSettings)] == []


def test_long_lists_are_shortened_to_their_ends_and_length():
    shown = settings_repr("D", {"xs": list(range(10)), "t": (1.5,), "s": "a"})
    assert shown == "D(xs=[0, 1, ... (10 in all), 9], t=(1.5,), s='a')"


# -- inputs of the wrong shape ---------------------------------------------------------------


@pytest.mark.parametrize("make", [LeeAlRegib, lambda m: MahalanobisEnsemble(m, ["features"])])
def test_fit_on_a_tensor_says_it_takes_a_loader(model, make):
    with pytest.raises(ValueError, match=r"loader of \(x, y\) batches .* B x C x H x W.*tensor"):
        make(model).fit(torch.randn(4, 3, 8, 8))


@pytest.mark.parametrize("make", [LeeAlRegib, lambda m: MahalanobisEnsemble(m, ["features"])])
def test_fit_on_batches_without_labels_says_what_it_got(model, make):
    unlabelled = DataLoader(TensorDataset(torch.randn(10, 3, 8, 8)), 5)
    with pytest.raises(ValueError, match=r"\(x, y\) batches .*got a batch that is a list of 1"):
        make(model).fit(unlabelled)


def test_fit_on_labels_that_do_not_match_the_inputs(model):
    mismatched = [(torch.randn(5, 3, 8, 8), torch.zeros(4))]
    with pytest.raises(ValueError, match=r"got inputs \(5, 3, 8, 8\) and labels of shape \(4,\)"):
        LeeAlRegib(model).fit(mismatched)


def test_lee_alregib_predict_on_one_sample_says_to_add_the_batch_axis(model):
    detector = LeeAlRegib(model, params=["fc"], epochs=2).fit(_loader())
    with pytest.raises(ValueError, match=r"B x 3 x 8 x 8 .*got shape \(3, 8, 8\).*unsqueeze"):
        detector.predict(torch.randn(3, 8, 8))
    assert detector.predict(torch.randn(2, 3, 8, 8)).shape == (2,)


# -- progress bars ---------------------------------------------------------------------------


def test_lee_alregib_shows_progress_only_when_asked(model, capsys):
    LeeAlRegib(model, epochs=2, params=["fc"]).fit(_loader())
    assert capsys.readouterr().err == ""
    LeeAlRegib(model, epochs=2, params=["fc"], progress=True).fit(_loader())
    shown = capsys.readouterr().err
    for bar in ("ID features", "noise features", "classifier"):
        assert f"LeeAlRegib: {bar}" in shown
    assert "OOD features" not in shown  # no OOD loader: no empty bar


def test_gaia_shows_its_variant_and_layers(model):
    assert _parameters(gradood.GAIA)[:2] == ["model", "variant"]
    detector = gradood.GAIA(model, variant="Z")
    shown = repr(detector)
    assert shown.startswith("GAIA(variant='Z', layers=[")
    assert f"head='{detector.head.name}'" in shown
