"""The logistic regression that combines the per-layer confidences: sklearn's
``LogisticRegressionCV`` with the official code's settings, and its log-odds."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch
from torch import Tensor

__all__ = ["fit_logistic_regression", "log_odds", "logistic_regression_cv"]


def logistic_regression_cv():
    """sklearn's ``LogisticRegressionCV()`` with the defaults of the official code's sklearn:
    L2, 10 values of C, 5-fold stratified CV, accuracy, lbfgs. Newer sklearn versions warn
    that these defaults change; they are pinned here."""
    from sklearn.linear_model import LogisticRegressionCV

    params = inspect.signature(LogisticRegressionCV).parameters
    settings: dict = {"Cs": 10, "cv": 5, "scoring": "accuracy"}
    if params["penalty"].default == "deprecated":  # sklearn >= 1.8: L2 is l1_ratio 0
        settings["l1_ratios"] = (0.0,)
    if "use_legacy_attributes" in params:
        settings["use_legacy_attributes"] = False
    return LogisticRegressionCV(**settings)


def fit_logistic_regression(scores: Tensor, is_adversarial: np.ndarray) -> tuple[Tensor, Tensor]:
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        regression = logistic_regression_cv().fit(scores.cpu().numpy(), is_adversarial)
    not_converged = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for other in caught:
        if other not in not_converged:
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if not_converged:
        warnings.warn(
            f"MahalanobisEnsemble: lbfgs did not converge in {len(not_converged)} of the "
            "logistic regression's cross-validation fits (as in the official code, the "
            "per-layer scores are not standardized)",
            stacklevel=4,
        )
    coef = torch.as_tensor(regression.coef_[0], dtype=torch.float64)
    return coef, torch.as_tensor(float(regression.intercept_[0]), dtype=torch.float64)


def log_odds(scores: Tensor, coef: Tensor, intercept: Tensor) -> Tensor:
    return scores @ coef.to(scores.device) + intercept.to(scores.device)
