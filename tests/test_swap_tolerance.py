"""``gradood.metrics.swap_tolerance``: the bound holds for every swap of an adjacent ID/OOD
pair of scores, and AUROC moves by exactly one pair."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gradood.metrics import paper_metrics, swap_tolerance

N_ID, N_OOD = 60, 40


def _labels() -> np.ndarray:
    return np.concatenate([np.arange(N_ID) % 10, -np.ones(N_OOD, dtype=int)])


def _adjacent_mixed_pairs(scores: np.ndarray, labels: np.ndarray) -> list[tuple[int, int]]:
    """Samples next to each other in the order of scores, one ID and one OOD."""
    order = np.argsort(scores)
    return [
        (int(a), int(b)) for a, b in itertools.pairwise(order) if (labels[a] < 0) != (labels[b] < 0)
    ]


@pytest.mark.parametrize("seed", range(3))
def test_one_swap_moves_each_metric_within_its_bound(seed):
    rng = np.random.default_rng(seed)
    labels = _labels()
    # overlapping ID and OOD scores, so that swaps happen everywhere, the FPR95 threshold too
    scores = np.concatenate([rng.normal(0, 1, N_ID), rng.normal(1, 1, N_OOD)])
    before = paper_metrics(scores, labels)
    bound = swap_tolerance(N_ID, N_OOD, 1)
    pairs = _adjacent_mixed_pairs(scores, labels)
    moved = dict.fromkeys(bound, 0.0)
    for a, b in pairs:
        swapped = scores.copy()
        swapped[[a, b]] = swapped[[b, a]]
        after = paper_metrics(swapped, labels)
        assert abs(after["AUROC"] - before["AUROC"]) == pytest.approx(bound["AUROC"])
        for metric, limit in bound.items():
            change = abs(after[metric] - before[metric])
            assert change <= limit + 1e-12, (metric, change, limit)
            moved[metric] = max(moved[metric], change)
    assert len(pairs) > 20
    # the paper's FPR95 bound is reached (a swap at the threshold): not vacuous
    assert moved["FPR95"] == pytest.approx(bound["FPR95"])


def test_a_broken_tie_moves_auroc_by_half_a_pair():
    labels = _labels()
    scores = np.linspace(0, 1, N_ID + N_OOD)
    a, b = _adjacent_mixed_pairs(scores, labels)[0]
    tied = scores.copy()
    tied[b] = tied[a]
    change = paper_metrics(tied, labels)["AUROC"] - paper_metrics(scores, labels)["AUROC"]
    assert abs(change) == pytest.approx(swap_tolerance(N_ID, N_OOD, 1)["AUROC"] / 2)


def test_swaps_scale_the_bound_and_bad_sizes_are_refused():
    assert swap_tolerance(10, 20, 3) == {
        "FPR95": 3 / 20,
        "AUROC": 3 / 200,
        "AUPR-IN": 3 / 20,
        "AUPR-OUT": 3 / 40,
        "FPR95TPR": 3 / 10,
    }
    with pytest.raises(ValueError, match="n_id, n_ood >= 1"):
        swap_tolerance(0, 5, 1)
