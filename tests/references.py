"""Slow, obviously-correct references that several test modules check against."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn


def official_gradients(
    model: nn.Module, params: Sequence[Tensor], x: Tensor, temperature: float
) -> list[Tensor]:
    """The official GradNorm code, per sample: batch of one, targets of ones, the loss summed
    over classes, its gradient w.r.t. ``params`` (flattened and concatenated)."""
    grads = []
    for sample in x:
        logits = model(sample[None]) / temperature
        loss = torch.sum(-torch.ones_like(logits) * torch.log_softmax(logits, dim=-1), dim=-1)
        parts = torch.autograd.grad(loss.mean(), list(params))
        grads.append(torch.cat([part.flatten() for part in parts]))
    return grads


def entrywise_norm(grad: Tensor, p: float) -> Tensor:
    """``(sum |g|^p)^(1/p)``, or ``max |g|`` for p = inf."""
    if math.isinf(p):
        return grad.abs().max()
    return (grad.abs() ** p).sum() ** (1 / p)


def reference_fpr95(id_scores_of_id: np.ndarray, id_scores_of_ood: np.ndarray) -> float:
    """Obviously-correct FPR95 of the official code, O(n^2): ID positive, higher = more ID.

    Thresholds are the distinct scores, from the highest down to the first one at which every
    ID sample is accepted; the chosen one has the ID recall closest to 0.95 (a tie in distance
    goes to the lower threshold, i.e. the higher recall).
    """
    thresholds = sorted(set(id_scores_of_id) | set(id_scores_of_ood), reverse=True)
    best = None
    for threshold in thresholds:
        recall = float(np.mean(id_scores_of_id >= threshold))
        distance = abs(recall - 0.95)
        if best is None or distance <= best[0]:
            best = (distance, threshold)
        if recall == 1.0:
            break
    return float(np.mean(id_scores_of_ood >= best[1]))


def reference_metrics(id_scores_of_id: np.ndarray, id_scores_of_ood: np.ndarray) -> dict:
    """The paper's FPR95 and AUROC in percent, from ID scores (higher = more ID)."""
    labels = np.r_[np.ones(len(id_scores_of_id)), np.zeros(len(id_scores_of_ood))]
    return {
        "FPR95": 100 * reference_fpr95(id_scores_of_id, id_scores_of_ood),
        "AUROC": 100 * roc_auc_score(labels, np.r_[id_scores_of_id, id_scores_of_ood]),
    }
