"""The metric conventions of the GradNorm paper and its official code.

Inputs follow pytorch-ood: outlier scores (higher = more OOD) and labels, where a label
``< 0`` marks an OOD sample. The paper's own convention is the opposite (in-distribution is the
positive class and scores are "higher = more ID"), so the ID score is ``-score``.

- ``FPR95``: the paper's false positive rate. Thresholds sit only at distinct ID scores (tied
  samples are counted together); among the thresholds down to the first one that reaches ID
  recall 1, take the one whose ID recall is closest to 0.95 (on a tie in distance, the one with
  the higher recall, as the official code's reversed ``argmin`` does) and report the fraction of
  OOD samples with an ID score at or above it.
- ``AUROC``: area under the ROC curve, ties counting half (sklearn's ``roc_auc_score``).
- ``AUPR-IN`` / ``AUPR-OUT``: average precision (sklearn's ``average_precision_score``, as the
  official code reports it) with ID, respectively OOD, as the positive class.
- ``FPR95TPR``: pytorch-ood's own, OOD positive: the fraction of ID samples flagged at 95 % OOD
  recall. It is not comparable with the paper's FPR95; it is given for comparison only.

All values are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pytorch_ood.metrics import functional as pood_metrics
from torch import Tensor

__all__ = ["average_precision", "fpr_at_recall", "paper_metrics", "swap_tolerance"]


def _as_1d_tensor(values: Any, name: str) -> Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, Tensor) else values)
    tensor = tensor.detach().cpu()
    if tensor.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(tensor.shape)}")
    return tensor


def _check_inputs(scores: Any, labels: Any) -> tuple[Tensor, Tensor]:
    scores = _as_1d_tensor(scores, "scores").double()
    labels = _as_1d_tensor(labels, "labels")
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must have the same length, got {scores.numel()} and "
            f"{labels.numel()}"
        )
    n_nan = int(torch.isnan(scores).sum())
    if n_nan:
        raise ValueError(f"scores contain {n_nan} NaN values (of {scores.numel()})")
    n_ood = int((labels < 0).sum())
    if n_ood == 0:
        raise ValueError("there is no OOD sample (label < 0); the metrics need ID and OOD")
    if n_ood == labels.numel():
        raise ValueError("there is no ID sample (label >= 0); the metrics need ID and OOD")
    return scores, labels


def _counts_at_distinct_thresholds(scores: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """Positives and negatives scored at or above each distinct score, highest score first."""
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores = scores[order]
    is_last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_last_of_tie[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    ends = torch.nonzero(is_last_of_tie).flatten()
    tps = torch.cumsum(positive[order].long(), 0)[ends]
    return tps, ends + 1 - tps


def fpr_at_recall(positive_scores: Tensor, positive: Tensor, recall_level: float = 0.95) -> float:
    """FPR at the distinct threshold whose recall is closest to ``recall_level`` (official code).

    :param positive_scores: scores where higher means more likely positive
    :param positive: boolean mask of the positive samples
    """
    tps, fps = _counts_at_distinct_thresholds(positive_scores, positive)
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    first_full_recall = int(torch.searchsorted(tps, tps[-1]))
    recall = tps[: first_full_recall + 1].double() / n_pos
    distance = (recall - recall_level).abs()
    # the highest recall among equally close thresholds
    closest = int(torch.nonzero(distance == distance.min()).max())
    return float(fps[closest]) / n_neg


def average_precision(positive_scores: Tensor, positive: Tensor) -> float:
    """sum_k (R_k - R_{k-1}) P_k over the distinct thresholds, as sklearn's average precision."""
    tps, fps = _counts_at_distinct_thresholds(positive_scores, positive)
    tps, fps = tps.double(), fps.double()
    precision = tps / (tps + fps)
    recall_gain = torch.diff(tps, prepend=tps.new_zeros(1)) / tps[-1]
    return float((recall_gain * precision).sum())


def paper_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """The paper's metrics from pytorch-ood outlier scores and labels (label < 0 = OOD).

    :param scores: outlier scores, one per sample, higher = more OOD (tensor or array)
    :param labels: class labels for ID samples, negative values for OOD samples
    :return: ``{"FPR95", "AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR"}``, fractions in [0, 1]
    :raises ValueError: on NaN scores, mismatched or non-1-D inputs, or if there is no ID or
        no OOD sample
    """
    scores, labels = _check_inputs(scores, labels)
    is_id = labels >= 0
    id_scores = -scores
    ood_labels = torch.where(is_id, 0, -1)
    return {
        "FPR95": fpr_at_recall(id_scores, is_id, 0.95),
        "AUROC": float(pood_metrics.auroc(scores, ood_labels)),
        "AUPR-IN": average_precision(id_scores, is_id),
        "AUPR-OUT": average_precision(scores, ~is_id),
        "FPR95TPR": float(pood_metrics.fpr_at_tpr(scores, ood_labels, 0.95)),
    }


def swap_tolerance(n_id: int, n_ood: int, swaps: int) -> dict[str, float]:
    """How far each metric of :func:`paper_metrics` can move when ``swaps`` pairs of an ID and
    an OOD sample, adjacent in the ranking of scores, trade places (or a tie of such a pair is
    broken), on a test of ``n_id`` ID and ``n_ood`` OOD samples; the ID scores' own order and
    ties are kept. Per swap:

    - AUROC counts ordered ID/OOD pairs: one swap moves it by exactly :math:`1/(n_{id} n_{ood})`
      (a broken tie, which counted half, by half of that);
    - FPR95 is the fraction of OOD samples at or above a threshold chosen among the ID scores
      by ID recall alone, which no swap changes: at most one OOD sample crosses it,
      :math:`1/n_{ood}`; pytorch-ood's FPR95TPR likewise :math:`1/n_{id}`;
    - average precision with :math:`P` positives: only the swapped positive's precision term
      changes, from :math:`k/(r+1)` to :math:`k/r` (rank :math:`r \\geq k`), by
      :math:`k/(r(r+1)) \\leq 1/2`, weighted :math:`1/P`: at most :math:`1/(2P)` (AUPR-IN:
      :math:`P = n_{id}`, AUPR-OUT: :math:`P = n_{ood}`).

    ``swaps`` times these bounds the difference (an ``Average`` over OOD sets moves no more
    than its worst set). FPR's bound is loose: a swap moves it only at the threshold.
    """
    if n_id < 1 or n_ood < 1 or swaps < 0:
        raise ValueError(f"need n_id, n_ood >= 1 and swaps >= 0, got {n_id}, {n_ood}, {swaps}")
    return {
        "FPR95": swaps / n_ood,
        "AUROC": swaps / (n_id * n_ood),
        "AUPR-IN": swaps / (2 * n_id),
        "AUPR-OUT": swaps / (2 * n_ood),
        "FPR95TPR": swaps / n_id,
    }
