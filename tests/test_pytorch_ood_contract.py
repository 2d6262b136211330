"""pytorch-ood's documented usage patterns, run on every registered detector name and every
mode of gradood's own detectors: each gives ``predict``'s scores whichever way the pattern
reaches them.

The patterns, as pytorch-ood's examples and tests use detectors:

- the evaluation loop of ``examples/benchmarks/manual/cifar10_baseline.py``: ``detector(x)``
  under ``torch.no_grad()`` into ``OODMetrics``; the same under ``torch.inference_mode()``;
- ``Benchmark.evaluate`` (``pytorch_ood.benchmark``), which serves ``LogitsDetector`` s from
  cached logits, ``FeaturesDetector`` s that are not ``GradientDetector`` s from their
  ``encoder``'s cached features, and runs the rest on the inputs;
- ``GridSearch`` (``pytorch_ood.utils``, ``examples/hpo``), cached the same way;
- the type-dispatching cached loop of ``examples/benchmarks/manual/cifar10_cached_baseline.py``:
  a ``LogitsDetector`` is fitted with ``fit_logits`` and scored with ``predict_logits`` on the
  model's logits, a ``FeaturesDetector`` with ``fit_features`` / ``predict_features`` on the
  model's pooled penultimate features (``model.features(x)``, B x D), anything else with
  ``fit(loader)`` and ``detector(x)``;
- the API contract of ``pytorch_ood.api.Detector`` and its tests: ``.to(device)`` returns the
  detector, ``fit`` returns it, ``predict`` before a needed ``fit`` raises
  ``RequiresFittingException``, a missing model ``ModelNotSetException``.

The cases come from :func:`gradood.available_detectors` (a name registered later is checked
too) plus GradNorm's parameter modes (``params=``, ``param_filter=``) and LeeAlRegib's
selection by name. Tolerance: both sides of each comparison run the same float32 operations on
the same values, except where a per-sample gradient form is chosen by time
(:mod:`gradood.gradients`: the forms agree to ~1e-6 relative); 1e-5 relative covers that and
no real difference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_ood.api import (
    Detector,
    FeaturesDetector,
    GradientDetector,
    LogitsDetector,
    ModelNotSetException,
    RequiresFittingException,
)
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.detector import graduncertainty
from pytorch_ood.metrics import OODMetrics
from pytorch_ood.utils import GridSearch
from test_registry_detectors import make_model, predicted
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import gradood
from gradood import GradNorm, registry

RTOL, ATOL = 1e-5, 1e-6

#: settings that keep a registered detector small and quiet on the 8 x 8 test model
SMALL = {
    "lee-alregib": {"epochs": 3, "hidden_width": 8, "progress": False},
    "mahalanobis-paper": {
        "layers": ["features.2", "features.5"],
        "magnitude": 0.001,  # fixed: no search over the paper's candidates
        "samples": 10,
        "progress": False,
    },
}
#: search spaces that fit the test model (pytorch-ood's spaces are for real networks: k >= 50
#: neighbours, d >= 16 of its 16 features); else the first two values of each hyperparameter
SPACES = {"knn": {"k": [1, 5]}, "vim": {"d": [4, 8]}}


def _registered(name: str) -> Callable[[nn.Module], Detector]:
    return lambda model: gradood.create_detector(name, model, **SMALL.get(name, {}))


#: case -> (model -> unfitted detector, its registry name: how it is fitted)
CASES: dict[str, tuple[Callable[[nn.Module], Detector], str]] = {
    **{name: (_registered(name), name) for name in gradood.available_detectors()},
    "gradnorm[params=]": (lambda model: GradNorm(model, params=["features.4", "fc"]), "gradnorm"),
    "gradnorm[param_filter=]": (
        lambda model: GradNorm(model, param_filter=lambda n: n.startswith("fc.")),
        "gradnorm",
    ),
    "lee-alregib[param_filter=]": (
        lambda model: gradood.create_detector(
            "lee-alregib",
            model,
            param_filter=lambda n: n.startswith("features."),
            **SMALL["lee-alregib"],
        ),
        "lee-alregib",
    ),
}


@pytest.fixture(scope="module")
def data() -> dict[str, TensorDataset]:
    generator = torch.Generator().manual_seed(3)
    ood = torch.randn(24, 3, 8, 8, generator=generator) * 3
    test = predicted(torch.randn(24, 3, 8, 8, generator=generator))
    return {
        "train": predicted(torch.randn(60, 3, 8, 8, generator=generator)),
        "tuning": predicted(torch.randn(21, 3, 8, 8, generator=generator)),
        "test": TensorDataset(
            torch.cat([test.tensors[0], ood]), torch.cat([test.tensors[1], torch.full((24,), -1)])
        ),
    }


def _loader(dataset: TensorDataset) -> DataLoader:
    return DataLoader(dataset, batch_size=16)


def _unfitted(case: str) -> tuple[Detector, nn.Module]:
    model = make_model()
    return CASES[case][0](model), model


def _fit(detector: Detector, case: str, data: dict[str, TensorDataset]) -> Any:
    """``fit`` as the detector's recipe says; returns what ``fit`` returned."""
    kind = registry.detector_spec(CASES[case][1]).fit
    if kind == "auto":
        kind = "train" if detector.requires_fit else "none"
    train, tuning = _loader(data["train"]), _loader(data["tuning"])
    if kind == "none":
        return detector.fit(train)
    if kind == "tuning":
        return detector.fit(tuning)
    if kind == "train+tuning":
        return detector.fit(train, tuning_loader=tuning)
    return detector.fit(train)


_FITTED: dict[str, tuple[Detector, nn.Module]] = {}


def _fitted(case: str, data: dict[str, TensorDataset]) -> tuple[Detector, nn.Module]:
    """A fitted detector of ``case`` and its model: a copy of one fitted once per case."""
    if case not in _FITTED:
        detector, model = _unfitted(case)
        _fit(detector, case, data)
        _FITTED[case] = (detector, model)
    return copy.deepcopy(_FITTED[case])


def _metrics(scores: Tensor, labels: Tensor) -> dict[str, float]:
    metrics = OODMetrics()
    metrics.update(scores, labels)
    return metrics.compute()


def _loop(detector: Detector, dataset: TensorDataset, mode: Callable[[], Any]) -> Tensor:
    """The evaluation loop of pytorch-ood's manual benchmark examples, scores kept."""
    scores = []
    with mode():
        for x, _y in _loader(dataset):
            scores.append(detector(x))
    return torch.cat(scores).detach().cpu()


def _close(actual: Tensor, expected: Tensor) -> None:
    assert actual.shape == expected.shape and bool(torch.isfinite(expected).all())
    torch.testing.assert_close(actual.double(), expected.double(), rtol=RTOL, atol=ATOL)


def _metrics_close(actual: dict[str, float], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-6), name


@pytest.fixture(params=sorted(CASES))
def case(request) -> str:
    return request.param


def test_inference_mode_scores_as_no_grad(case, data):
    detector, _model = _fitted(case, data)
    test = data["test"]
    expected = _loop(detector, test, torch.no_grad)
    _close(_loop(detector, test, torch.inference_mode), expected)
    labels = test.tensors[1]
    assert 0.0 <= _metrics(expected, labels)["AUROC"] <= 1.0


#: autograd's entry points that the registered detectors call; pytorch-ood's GradUncertainty
#: holds torch.func.grad under a name of its own
_GRADIENT_CALLS = [
    (torch.autograd, "grad"),
    (torch.autograd, "backward"),
    (torch.func, "grad"),
    (torch.func, "vjp"),
    (graduncertainty, "_func_grad"),
]


#: the cases known to take gradients (gradood's registered GradNorm and its factors are closed
#: forms of one forward pass); a third party's detectors, not listed, are checked for the mode
#: alone
_TAKE_GRADIENTS = {
    "gaia-a",
    "gaia-z",
    "gradnorm[param_filter=]",
    "gradnorm[params=]",
    "graduncertainty",
    "lee-alregib",
    "lee-alregib[param_filter=]",
    "mahalanobis-odin",
    "mahalanobis-paper",
    "odin",
}


def _recording(call: Callable, in_inference_mode: list[bool]) -> Callable:
    """``call``, appending whether inference mode is on to ``in_inference_mode`` first."""

    def recorded(*args: Any, **kwargs: Any) -> Any:
        in_inference_mode.append(torch.is_inference_mode_enabled())
        return call(*args, **kwargs)

    return recorded


def test_gradients_are_taken_outside_inference_mode(case, data, monkeypatch):
    """In a loop under ``torch.inference_mode()``, a detector takes every gradient with
    inference mode off: ``torch.enable_grad()`` alone leaves it on, where ``torch.func.grad``
    returns zero gradients on torch 2.1 to 2.8 (pytorch-ood's ``GradUncertainty``: every score
    ``-0.``). The mode is recorded at each call of autograd, so this holds on a torch where
    the scores happen to come out right inside inference mode."""
    detector, _model = _fitted(case, data)
    in_inference_mode = []
    for owner, name in _GRADIENT_CALLS:
        monkeypatch.setattr(owner, name, _recording(getattr(owner, name), in_inference_mode))
    with torch.inference_mode():
        detector(data["test"].tensors[0][:16])
    assert True not in in_inference_mode, "a gradient taken inside inference mode"
    if case in _TAKE_GRADIENTS:  # none recorded: the patches missed its path
        assert in_inference_mode, "no gradient recorded for a detector that takes them"


class _Benchmark(Benchmark):
    """The test data as a pytorch-ood ``Benchmark`` of one OOD set."""

    ood_names = ["noise"]

    def __init__(self, test: TensorDataset):
        self.test = test

    def train_set(self):
        raise NotImplementedError

    def test_sets(self, known: bool = True, unknown: bool = True) -> list[TensorDataset]:
        return [self.test]


def test_benchmark_evaluate_gives_predicts_metrics(case, data):
    detector, _model = _fitted(case, data)
    x, y = data["test"].tensors
    with torch.no_grad():
        expected = _metrics(detector.predict(x).detach(), y)
    (row,) = _Benchmark(data["test"]).evaluate(detector, loader_kwargs={"batch_size": 16})
    _metrics_close(row, expected)


def test_grid_search_scores_as_predict(case, data):
    detector, _model = _unfitted(case)
    space = SPACES.get(case) or {
        name: list(values[:2]) for name, values in detector.hyperparameter_space.items()
    }
    if not space:
        pytest.skip("no hyperparameter_space: GridSearch needs one")
    validation = _loader(data["test"])
    search = GridSearch(detector, _loader(data["train"]), validation, space)
    best = search.run()
    assert detector.get_hyperparameters() == best
    x, y = data["test"].tensors
    with torch.no_grad():
        expected = _metrics(detector.predict(x).detach(), y)["AUROC"]
    assert search.best_score_ == pytest.approx(expected, abs=1e-6)


def _dispatching_fit(detector: Detector, model: nn.Module, data: dict) -> None:
    """``fit_detector`` of pytorch-ood's cached baseline example."""
    train = _loader(data["train"])
    x, y = data["train"].tensors
    with torch.no_grad():
        logits, features = model(x), model.features(x)
    if detector.requires_fit and isinstance(detector, LogitsDetector):
        detector.fit_logits(logits, y)
    elif detector.requires_fit and isinstance(detector, FeaturesDetector):
        detector.fit_features(features, y)
    elif detector.requires_fit:
        detector.fit(train)


def _dispatching_scores(detector: Detector, model: nn.Module, test: TensorDataset) -> Tensor:
    """``evaluate_detector`` of pytorch-ood's cached baseline example, scores kept."""
    x, _y = test.tensors
    with torch.no_grad():
        logits, features = model(x), model.features(x)
        if isinstance(detector, LogitsDetector):
            return detector.predict_logits(logits).detach()
        if isinstance(detector, FeaturesDetector):
            return detector.predict_features(features).detach()
    return _loop(detector, test, torch.no_grad)


def test_the_type_dispatching_cached_loop_gives_predicts_scores(case, data):
    detector, model = _unfitted(case)
    if registry.detector_spec(CASES[case][1]).fit in ("tuning", "train+tuning"):
        _fit(detector, case, data)  # the example fits on the training set only
    else:
        _dispatching_fit(detector, model, data)
    scores = _dispatching_scores(detector, model, data["test"])
    with torch.no_grad():
        _close(scores.cpu(), detector.predict(data["test"].tensors[0]).detach().cpu())


def test_a_gradient_detector_is_no_features_detector_and_features_mean_pooled_features(case):
    """The cached loop tests ``FeaturesDetector`` first and gives it the model's pooled
    penultimate features: a detector that needs gradients beyond the head must not be one, and
    a ``FeaturesDetector``'s ``encoder`` makes those features."""
    detector, model = _unfitted(case)
    assert not (isinstance(detector, FeaturesDetector) and isinstance(detector, GradientDetector))
    encoder = getattr(detector, "encoder", None)
    if not isinstance(detector, FeaturesDetector) or encoder is None:
        return
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        _close(encoder(x).flatten(1), model.features(x))


def test_to_device_returns_the_detector_and_keeps_the_scores(case, data):
    detector, _model = _fitted(case, data)
    x = data["test"].tensors[0]
    with torch.no_grad():
        before = detector.predict(x).detach()
        assert detector.to("cpu") is detector
        _close(detector.predict(x).detach(), before)


def test_fit_returns_the_detector(case, data):
    detector, _model = _unfitted(case)
    assert _fit(detector, case, data) is detector


def test_predict_before_a_needed_fit_raises_requires_fitting(case, data):
    detector, _model = _unfitted(case)
    if not detector.requires_fit:
        pytest.skip("needs no fit")
    with pytest.raises(RequiresFittingException):
        detector.predict(data["test"].tensors[0])


def test_a_missing_model_raises_model_not_set(case, data):
    with pytest.raises(ModelNotSetException):  # when built or when used
        CASES[case][0](None).predict(data["test"].tensors[0])


# -- the checks can fail -------------------------------------------------------------------

#: detectors registered in a project of their own, each breaking one pattern
BROKEN = '''
import torch
from pytorch_ood.api import FeaturesDetector

from gradood.detectors.gradnorm import HeadGradNorm, ParameterGradNorm
from gradood.registry import register_detector


class RaisesUnderInferenceMode(HeadGradNorm):
    def predict(self, x):
        if torch.is_inference_mode_enabled():
            raise ValueError("per-sample gradients cannot be computed under inference mode")
        return super().predict(x)


class ClaimsFeatures(ParameterGradNorm, FeaturesDetector):
    """gradood's parameter-mode GradNorm before: a FeaturesDetector that needs the inputs."""

    def predict_features(self, x):
        raise ValueError("predict_features gives the head-weight score only")


class FitReturnsNone(HeadGradNorm):
    def fit(self, loader, **kwargs):
        super().fit(loader)


register_detector("broken-inference-mode", RaisesUnderInferenceMode, fit="none")
register_detector(
    "broken-type", lambda model: ClaimsFeatures(model, param_filter=bool), fit="none"
)
register_detector("broken-fit", FitReturnsNone, fit="none")
'''


def test_a_broken_detector_fails_the_contract(pytester):
    """Registered by a third party, each broken detector is picked up from the registry and
    fails the check of the pattern it breaks."""
    tests = Path(__file__).parent
    for module in (Path(__file__), tests / "test_registry_detectors.py"):
        pytester.path.joinpath(module.name).write_text(module.read_text())
    pytester.makeconftest(BROKEN)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-k", "broken and not a_broken", Path(__file__).name
    )  # fmt: skip
    failed = {
        line.split("::", 1)[1].split(" ")[0]
        for line in result.outlines
        if line.startswith("FAILED")
    }
    assert failed == {
        "test_inference_mode_scores_as_no_grad[broken-inference-mode]",
        "test_gradients_are_taken_outside_inference_mode[broken-inference-mode]",
        "test_the_type_dispatching_cached_loop_gives_predicts_scores[broken-type]",
        "test_a_gradient_detector_is_no_features_detector_and_features_mean_pooled_features"
        "[broken-type]",
        "test_fit_returns_the_detector[broken-fit]",
    }, result.stdout.str()[-3000:]
