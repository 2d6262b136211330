"""The bundled offline benchmark: every registered detector on scikit-learn's digits.

ID = the digits test split; OOD = letters (near), photo crops and uniform noise (far); the
classifier is the shipped digits CNN (:mod:`gradood.harness.bundled`). The table goes into the
run's report (summary, CSV, Markdown) with plots of GradNorm against p and T beside the other
detectors. It needs no data, no download and no GPU, and gives the same table on every machine
up to swapped near-ties.
"""

from __future__ import annotations

import pytest
import torch

from gradood import available_detectors, paper_metrics
from gradood.detectors.gradnorm import PAPER_NORMS, PAPER_TEMPERATURES
from gradood.evaluate import AVERAGE
from gradood.harness.bundled import (
    NEAR_TIE_TOLERANCE,
    PAPER_DETECTORS,
    TITLE,
    BundledRun,
    run_bundled,
    torch_threads,
)
from gradood.harness.session import say
from gradood.protocols.digits import DigitsBenchmark


@pytest.fixture(scope="module")
def bundled(request, gradood_report) -> BundledRun:
    """The benchmark, its classifier, the fitted detectors and their table (one torch thread:
    tiny tensors, where intra-op threads only add waits on a busy machine)."""
    run = run_bundled(threads=1, progress=lambda message: say(request.config, message))
    gradood_report.tables[TITLE] = run.table
    gradood_report.captions[TITLE] = f"DigitsCNN, {100 * run.accuracy():.1f} % accurate"
    gradood_report.defaults[TITLE] = PAPER_DETECTORS
    return run


def _id_and_ood(benchmark: DigitsBenchmark, ood_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    (id_set,) = benchmark.test_sets(known=True, unknown=False)
    ood_set = benchmark.test_sets(known=False, unknown=True)[ood_index]
    return (
        torch.cat([id_set.tensors[0], ood_set.tensors[0]]),
        torch.cat([id_set.tensors[1], ood_set.tensors[1]]),
    )


def test_the_classifier_learned_the_digits(bundled):
    assert bundled.accuracy() >= 0.95


def test_every_registered_detector_is_in_the_table(bundled):
    table = bundled.table
    assert set(available_detectors()) <= set(table["method"])
    settings = table[table["method"] == "gradnorm"][["p", "temperature"]].drop_duplicates()
    assert len(settings) == len(PAPER_NORMS) + len(PAPER_TEMPERATURES) - 1
    assert set(table["ood_data"]) == {*DigitsBenchmark.ood_names, AVERAGE}


def test_rows_equal_the_metrics_of_direct_scores(bundled):
    """The harness's rows (cached forward pass, raw-input scoring) against each detector's
    own ``predict`` on the tensors, through ``paper_metrics``; batches of other sizes may
    round differently in the last bit and swap near-ties (:data:`NEAR_TIE_TOLERANCE`)."""
    table = bundled.table
    for method, settings, detector in bundled.entries:
        for index, ood_name in enumerate(bundled.benchmark.ood_names):
            x, y = _id_and_ood(bundled.benchmark, index)
            with torch_threads(1):
                expected = paper_metrics(detector.predict(x), y)
            row = table[(table["method"] == method) & (table["ood_data"] == ood_name)]
            for name, value in settings.items():
                row = row[row[name] == value]
            assert len(row) == 1, (method, settings, ood_name)
            for metric, value in expected.items():
                tolerance = NEAR_TIE_TOLERANCE[metric]
                assert row[metric].item() == pytest.approx(value, abs=tolerance), (
                    method,
                    settings,
                    ood_name,
                    metric,
                )


def test_lee_alregib_learns_to_reject_noise(bundled):
    """Its classifier is trained against uniform noise: on noise it must excel, whatever it
    does on the other sets (a real effect of the fit, not of the classifier)."""
    detector = next(d for method, _, d in bundled.entries if method == "lee-alregib")
    assert detector.heldout_auroc_ > 0.9
    table = bundled.table
    noise = table[(table["method"] == "lee-alregib") & (table["ood_data"] == "Uniform noise")]
    assert noise["AUROC"].item() > 0.9
