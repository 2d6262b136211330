"""The bundled offline benchmark: every registered detector on scikit-learn's digits.

ID = the digits test split; OOD = letters (near), photo crops and uniform noise (far); the
classifier is the shipped digits CNN (:mod:`gradood.harness.bundled`). The table goes into the
run's report (summary, CSV, Markdown) with plots of GradNorm against p and T beside the other
detectors. It needs no data, no download and no GPU, and gives the same table on every machine
up to swapped near-ties.

The tests are parametrized by detector, so that ``-k`` selects detectors: ``pytest benchmarks
-k gradnorm`` fits and scores GradNorm (with its factors U and V, which its summary lines name)
and puts their rows and figures into the report.
"""

from __future__ import annotations

import pytest
import torch

from gradood import available_detectors, paper_metrics
from gradood.detectors.gradnorm import PAPER_NORMS, PAPER_TEMPERATURES
from gradood.evaluate import AVERAGE
from gradood.harness.bundled import (
    LISTED_DETECTORS,
    NEAR_TIE_TOLERANCE,
    TITLE,
    BundledRun,
    run_bundled,
    torch_threads,
    with_companions,
)
from gradood.harness.session import status_line
from gradood.protocols.digits import DigitsBenchmark
from gradood.registry import FACTORS

DETECTORS = available_detectors()


def _selected_detectors(session: pytest.Session) -> list[str]:
    """The detectors of this module's selected tests (``-k`` and node ids narrow them)."""
    here = __name__.rsplit(".", 1)[-1]
    names = []
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module.__name__.rsplit(".", 1)[-1] == here and "detector" in params:
            names.append(params["detector"])
    return list(dict.fromkeys(names))


@pytest.fixture(scope="module")
def bundled(request, gradood_report) -> BundledRun:
    """The benchmark, its classifier, the selected detectors (and those their summary lines
    need) fitted, and their table (one torch thread: tiny tensors, where intra-op threads only
    add waits on a busy machine)."""
    names = with_companions(_selected_detectors(request.session))
    with status_line(request.config) as show:
        run = run_bundled(threads=1, progress=show, names=names)
    if run.table is not None:
        gradood_report.tables[TITLE] = run.table
        gradood_report.captions[TITLE] = f"DigitsCNN, {100 * run.accuracy():.1f} % accurate"
        gradood_report.defaults[TITLE] = LISTED_DETECTORS
    return run


def _entries_of(bundled: BundledRun, detector: str) -> list:
    entries = [entry for entry in bundled.entries if entry[0] == detector]
    assert entries, f"{detector} was not fitted"
    return entries


def test_the_classifier_learned_the_digits(bundled):
    assert bundled.accuracy() >= 0.95


@pytest.mark.parametrize("detector", DETECTORS)
def test_the_detector_is_in_the_table(bundled, detector):
    table = bundled.table
    rows = table[table["method"] == detector]
    assert set(rows["ood_data"]) == {*DigitsBenchmark.ood_names, AVERAGE}
    settings = rows[["p", "temperature"]].drop_duplicates() if "p" in rows else rows[[]]
    if detector in ("gradnorm", *FACTORS["gradnorm"]):
        assert len(settings) == len(PAPER_NORMS) + len(PAPER_TEMPERATURES) - 1
    assert len(rows) == len(_entries_of(bundled, detector)) * (len(DigitsBenchmark.ood_names) + 1)


@pytest.mark.parametrize("detector", DETECTORS)
def test_rows_equal_the_metrics_of_direct_scores(bundled, detector):
    """The harness's rows (cached forward pass, raw-input scoring) against each detector's
    own ``predict`` on the tensors (the ID set scored once, each OOD set once), through
    ``paper_metrics``; batches of other sizes may round differently in the last bit and swap
    near-ties (:data:`NEAR_TIE_TOLERANCE`)."""
    table = bundled.table
    (id_set,) = bundled.benchmark.test_sets(known=True, unknown=False)
    ood_sets = bundled.benchmark.test_sets(known=False, unknown=True)
    for method, settings, scorer in _entries_of(bundled, detector):
        with torch_threads(1):
            id_scores = scorer.predict(id_set.tensors[0])
            ood_scores = [scorer.predict(ood.tensors[0]) for ood in ood_sets]
        for ood_name, ood, scores in zip(
            bundled.benchmark.ood_names, ood_sets, ood_scores, strict=True
        ):
            labels = torch.cat([id_set.tensors[1], ood.tensors[1]])
            expected = paper_metrics(torch.cat([id_scores, scores]), labels)
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


@pytest.mark.parametrize("detector", ["lee-alregib"])
def test_lee_alregib_learns_to_reject_noise(bundled, detector):
    """Its classifier is trained against uniform noise: on noise it must excel, whatever it
    does on the other sets (a real effect of the fit, not of the classifier)."""
    ((_, _, fitted),) = _entries_of(bundled, detector)
    assert fitted.heldout_auroc_ > 0.9
    table = bundled.table
    noise = table[(table["method"] == detector) & (table["ood_data"] == "Uniform noise")]
    assert noise["AUROC"].item() > 0.9
