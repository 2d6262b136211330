"""Class-conditional Gaussians with one covariance shared by all classes, estimated in float64
(streaming), as sklearn's ``EmpiricalCovariance`` in the official code."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TiedGaussianAccumulator", "check_labels", "tied_gaussians"]


class TiedGaussianAccumulator:
    """Streaming float64 class sums and scatter matrix, shifted by the first batch's mean so
    that the one-pass formula does not cancel."""

    def __init__(self) -> None:
        self.shift: Tensor | None = None
        self.sums: Tensor | None = None
        self.counts: Tensor | None = None
        self.scatter: Tensor | None = None

    def add(self, z: Tensor, y: Tensor) -> None:
        z = z.detach().double()
        if self.shift is None:
            dim = z.shape[1]
            self.shift = z.mean(dim=0)
            self.sums = z.new_zeros(0, dim)
            self.counts = z.new_zeros(0)
            self.scatter = z.new_zeros(dim, dim)
        z = z - self.shift
        needed = int(y.max()) + 1
        if needed > self.sums.shape[0]:
            grow = needed - self.sums.shape[0]
            self.sums = torch.cat([self.sums, self.sums.new_zeros(grow, z.shape[1])])
            self.counts = torch.cat([self.counts, self.counts.new_zeros(grow)])
        self.sums.index_add_(0, y, z)
        self.counts.index_add_(0, y, torch.ones_like(y, dtype=z.dtype))
        self.scatter += z.T @ z

    def finish(self) -> tuple[Tensor, Tensor]:
        """Class means (C x D) and the tied maximum-likelihood covariance (D x D)."""
        missing = torch.nonzero(self.counts == 0).flatten().tolist()
        if missing:
            raise ValueError(
                f"classes {missing[:10]}{' ...' if len(missing) > 10 else ''} have no training "
                f"sample (labels must cover 0 ... {self.counts.numel() - 1})"
            )
        shifted_means = self.sums / self.counts[:, None]
        within = self.scatter - (shifted_means.T * self.counts) @ shifted_means
        covariance = within / self.counts.sum()
        return shifted_means + self.shift, (covariance + covariance.T) / 2


def tied_gaussians(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Class means and tied covariance (maximum likelihood, float64) of ``features`` (N x D).

    Not pytorch-ood's ``Mahalanobis.fit_features``, which gives the same means but accumulates
    and inverts in float32 (its buffers take the default dtype), keeps the unnormalized scatter
    plus a 1e-6 ridge (N times this covariance), and holds all features in memory; the
    official code normalizes by N (sklearn's ``EmpiricalCovariance``, float64).

    :return: means (C x D) and covariance (D x D), with C = ``labels.max() + 1``
    """
    accumulator = TiedGaussianAccumulator()
    accumulator.add(features, labels)
    return accumulator.finish()


def check_labels(labels: Tensor, n: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be a 1-D tensor of {n} class indices")
    if labels.is_floating_point() or bool((labels < 0).any()):
        raise ValueError("labels must be integer class indices >= 0 (ID training data)")
    return labels.long()
