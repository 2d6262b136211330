"""GradNorm's two factors as detectors of their own: the feature norm U and the output-space norm V.

With penultimate features :math:`h \\in \\mathbb{R}^D`, logits :math:`z = W h + b \\in
\\mathbb{R}^C` and temperature :math:`T`, GradNorm's value is (:mod:`gradood.detectors.gradnorm`)

.. math::
    S(x) = U(x) \\, V(x), \\qquad U(x) = \\lVert h \\rVert_p, \\qquad
    V(x) = \\left\\lVert \\frac{C \\, \\mathrm{softmax}(z / T) - 1}{T} \\right\\rVert_p,

the split of the paper's analysis (Huang et al., Section 5: U carries the feature space, V the
output space). :math:`U` does not depend on :math:`T`. The outlier scores are :math:`-U` and
:math:`-V` (higher = more OOD, pytorch-ood's convention), so that with the same ``p`` and
``temperature``, ``GradNorm`` = :math:`-(-U)(-V)`: ``gradnorm = -(u * v)``, exact to float
rounding.

A factor whose AUROC falls below 50 % on an OOD set says which half of GradNorm ranks that set
as more in-distribution than the ID data (e.g. inputs whose features are larger than the ID
data's invert :math:`U`).
"""

from __future__ import annotations

from torch import Tensor, nn

from .gradnorm import HeadGradNorm, gradnorm_factor

__all__ = ["GradNormU", "GradNormV"]


class _GradNormFactor(HeadGradNorm):
    """A factor of GradNorm's head-weight score, from the same forward pass; ``p``,
    ``temperature`` and ``head`` as :class:`~gradood.detectors.gradnorm.GradNorm`'s."""

    #: 0: U, 1: V (the index of :func:`~gradood.detectors.gradnorm.gradnorm_factor`)
    _factor: int

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 1.0,
        *,
        p: float = 1.0,
        head: str | nn.Module | None = None,
    ):
        super().__init__(model, temperature=temperature, p=p, head=head)

    def _value(self, logits: Tensor, features: Tensor) -> Tensor:
        return gradnorm_factor(logits, features, self._factor, self.p, self.temperature)


class GradNormU(_GradNormFactor):
    """GradNorm's feature factor: outlier score :math:`-\\lVert h \\rVert_p` (the penultimate
    features' entrywise :math:`L_p` norm; ``temperature`` does not change it)."""

    _factor = 0


class GradNormV(_GradNormFactor):
    """GradNorm's output-space factor: outlier score
    :math:`-\\lVert (C \\, \\mathrm{softmax}(z / T) - 1) / T \\rVert_p`, the norm of the
    uniform loss's gradient with respect to the logits."""

    _factor = 1
