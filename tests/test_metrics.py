"""paper_metrics against sklearn and a brute-force reading of the paper's FPR95 convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from gradood import paper_metrics

from references import reference_fpr95


def _sample(seed, n_id, n_ood, ties):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(0, 1, n_id), rng.normal(0.8, 1.3, n_ood)])
    if ties:  # few distinct values: every threshold groups many samples
        scores = np.round(scores * ties) / ties
    labels = np.concatenate([rng.integers(0, 10, n_id), -rng.integers(1, 3, n_ood)])
    return scores, labels


CASES = [
    (seed, n_id, n_ood, ties)
    for seed in range(3)
    for n_id, n_ood in [(100, 100), (57, 203), (1000, 40), (20, 3)]
    for ties in [0, 1, 4]
]


@pytest.mark.parametrize(("seed", "n_id", "n_ood", "ties"), CASES)
def test_against_sklearn_and_reference(seed, n_id, n_ood, ties):
    scores, labels = _sample(seed, n_id, n_ood, ties)
    result = paper_metrics(torch.from_numpy(scores), torch.from_numpy(labels))
    is_id = labels >= 0
    assert result["AUROC"] == pytest.approx(roc_auc_score(is_id, -scores), abs=1e-12)
    assert result["AUPR-IN"] == pytest.approx(average_precision_score(is_id, -scores), abs=1e-12)
    assert result["AUPR-OUT"] == pytest.approx(average_precision_score(~is_id, scores), abs=1e-12)
    assert result["FPR95"] == reference_fpr95(-scores[is_id], -scores[~is_id])


def test_fpr95_tie_in_distance_takes_the_higher_recall():
    # 50 distinct ID scores: recall 0.95 is unreachable and 0.94 (47/50) and 0.96 (48/50) are
    # exactly equally far from it in float64; two OOD samples lie between the 47th and the
    # 48th highest ID score, so only the threshold at recall 0.96 counts them
    id_scores = np.arange(50, 0, -1.0)  # higher = more ID
    assert abs(47 / 50 - 0.95) == abs(48 / 50 - 0.95)
    ood_scores = np.array([3.5, 3.4, 100.0, -7.0])
    scores = -np.concatenate([id_scores, ood_scores])
    labels = np.array([0] * 50 + [-1] * 4)
    assert paper_metrics(scores, labels)["FPR95"] == 3 / 4
    assert reference_fpr95(id_scores, ood_scores) == 3 / 4


def test_fpr95_differs_from_pytorch_ood_fpr95tpr():
    scores, labels = _sample(0, 500, 500, 0)
    result = paper_metrics(scores, labels)
    is_id = labels >= 0
    # pytorch-ood's: fraction of ID flagged when 95 % of OOD are caught (OOD positive)
    threshold = np.sort(scores[~is_id])[::-1][int(np.ceil(0.95 * (~is_id).sum())) - 1]
    assert result["FPR95TPR"] == pytest.approx(np.mean(scores[is_id] >= threshold))
    assert abs(result["FPR95"] - result["FPR95TPR"]) > 0.01


def test_perfect_separation():
    scores = np.array([0.1, 0.2, 0.3, 5.0, 6.0])
    labels = np.array([1, 2, 3, -1, -1])
    result = paper_metrics(scores, labels)
    assert result == {"FPR95": 0.0, "AUROC": 1.0, "AUPR-IN": 1.0, "AUPR-OUT": 1.0, "FPR95TPR": 0.0}


def test_accepts_lists_and_arrays():
    assert paper_metrics([0.0, 1.0], [0, -1]) == paper_metrics(np.array([0.0, 1.0]), [0, -1])


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [0, 1], "no OOD sample"),
        ([0.1, 0.2], [-1, -1], "no ID sample"),
        ([0.1, float("nan"), 0.3], [0, -1, 1], "1 NaN values"),
        ([0.1, 0.2], [0, -1, 1], "same length"),
        ([[0.1, 0.2]], [[0, -1]], "one-dimensional"),
    ],
)
def test_errors(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        paper_metrics(scores, labels)
