"""The bundled offline benchmark: every registered detector on scikit-learn's digits.

ID = the digits test split, OOD = crops of scikit-learn's sample photographs and uniform noise
(:class:`gradood.protocols.DigitsBenchmark`); the classifier is a small CNN trained
deterministically in seconds (:func:`gradood.models.train_digits_cnn`). Every detector of the
registry (third-party plugins included) is built, fitted on the ID training split where it
needs it, and scored by :func:`gradood.evaluate`; GradNorm at every norm of Table 7 and every
temperature of Table 8. The table goes into the run's report (terminal, CSV, Markdown) with
plots of GradNorm against p and T. It needs no data, no download and no GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from pytorch_ood.api import Detector
from torch import nn
from torch.utils.data import DataLoader

from gradood import GradNorm, LeeAlRegib, available_detectors, create_detector, paper_metrics
from gradood.detectors.gradnorm import PAPER_NORMS, PAPER_TEMPERATURES
from gradood.evaluate import AVERAGE, evaluate
from gradood.models.digits import train_digits_cnn
from gradood.protocols.digits import DigitsBenchmark

SEED = 0
TITLE = "bundled digits benchmark"
#: the outputs of the CNN's two convolution blocks, for the paper's Mahalanobis ensemble
MAHALANOBIS_LAYERS = ["body.2", "body.5"]


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add synchronization (and, on a busy machine, waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


Entry = tuple[str, dict, Detector]


def _entries(name: str, model: nn.Module, benchmark: DigitsBenchmark) -> list[Entry]:
    """The bundled benchmark's settings of detector ``name``, fitted where needed."""
    train = DataLoader(benchmark.train_set(), batch_size=256)
    if name == "gradnorm":  # Table 7's norms at T = 1, Table 8's temperatures with L1
        settings = [(p, 1.0) for p in PAPER_NORMS]
        settings += [(1.0, t) for t in PAPER_TEMPERATURES if t != 1.0]
        return [
            (name, {"p": p, "temperature": t}, GradNorm(model, p=p, temperature=t))
            for p, t in settings
        ]
    if name == "mahalanobis":
        single = create_detector(name, model).fit(train)
        ensemble = create_detector(
            name,
            model,
            paper=True,
            layers=MAHALANOBIS_LAYERS,
            norm_mean=[benchmark.mean],
            norm_std=[benchmark.std],
        ).fit(train)
        return [(name, {}, single), (f"{name} (paper ensemble)", {}, ensemble)]
    if name == "lee-alregib":
        detector = LeeAlRegib(model, mean=benchmark.mean, std=benchmark.std, seed=SEED)
        return [(name, {}, detector.fit(train))]
    detector = create_detector(name, model)
    if detector.requires_fit:
        detector.fit(train)
    return [(name, {}, detector)]


@pytest.fixture(scope="module")
def bundled(gradood_report):
    """The benchmark, its trained classifier, and the table of every registered detector."""
    with one_thread():
        benchmark = DigitsBenchmark(seed=SEED)
        model = train_digits_cnn(*benchmark.train_set().tensors, seed=SEED)
        entries = [e for name in available_detectors() for e in _entries(name, model, benchmark)]
        table = evaluate(benchmark, entries, batch_size=256, progress=False)
    gradood_report.tables[TITLE] = table
    return benchmark, model, entries, table


def _id_and_ood(benchmark: DigitsBenchmark, ood_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    (id_set,) = benchmark.test_sets(known=True, unknown=False)
    ood_set = benchmark.test_sets(known=False, unknown=True)[ood_index]
    return (
        torch.cat([id_set.tensors[0], ood_set.tensors[0]]),
        torch.cat([id_set.tensors[1], ood_set.tensors[1]]),
    )


def test_the_classifier_learned_the_digits(bundled):
    benchmark, model, _, _ = bundled
    (id_set,) = benchmark.test_sets(known=True, unknown=False)
    images, labels = id_set.tensors
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean()
    assert accuracy >= 0.9


def test_every_registered_detector_is_in_the_table(bundled):
    _, _, _, table = bundled
    assert set(available_detectors()) <= set(table["method"])
    settings = table[table["method"] == "gradnorm"][["p", "temperature"]].drop_duplicates()
    assert len(settings) == len(PAPER_NORMS) + len(PAPER_TEMPERATURES) - 1
    assert set(table["ood_data"]) == {"Photo crops", "Uniform noise", AVERAGE}


# float32 forward passes of batches of other sizes may round differently in the last bit and
# swap nearly tied scores: a swapped ID/OOD pair moves AUROC by 1 / (719 * 719) (allowed: five),
# and an average precision or an FPR by at most about 1 / 719 (one sample)
_ONE_SAMPLE = 1 / 719 + 1e-12
_TOLERANCE = {"AUROC": 5 / 719**2, "AUPR-IN": _ONE_SAMPLE, "AUPR-OUT": _ONE_SAMPLE}
_TOLERANCE |= {"FPR95": _ONE_SAMPLE, "FPR95TPR": _ONE_SAMPLE}


def test_rows_equal_the_metrics_of_direct_scores(bundled):
    """The harness's rows (cached forward pass, raw-input scoring) against each detector's
    own ``predict`` on the tensors, through ``paper_metrics``."""
    benchmark, _, entries, table = bundled
    for method, settings, detector in entries:
        for index, ood_name in enumerate(benchmark.ood_names):
            x, y = _id_and_ood(benchmark, index)
            with one_thread():
                expected = paper_metrics(detector.predict(x), y)
            row = table[(table["method"] == method) & (table["ood_data"] == ood_name)]
            for name, value in settings.items():
                row = row[row[name] == value]
            assert len(row) == 1, (method, settings, ood_name)
            for metric, value in expected.items():
                assert row[metric].item() == pytest.approx(value, abs=_TOLERANCE[metric]), (
                    method,
                    settings,
                    ood_name,
                    metric,
                )


def test_lee_alregib_learns_to_reject_noise(bundled):
    """Its classifier is trained against uniform noise: on noise it must excel, whatever it
    does on the photo crops (a real effect of the fit, not of the classifier)."""
    _, _, entries, table = bundled
    detector = next(d for method, _, d in entries if method == "lee-alregib")
    assert detector.heldout_auroc_ > 0.9
    noise = table[(table["method"] == "lee-alregib") & (table["ood_data"] == "Uniform noise")]
    assert noise["AUROC"].item() > 0.9
