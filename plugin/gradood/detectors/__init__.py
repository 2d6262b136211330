"""gradood's detectors, one per module, all with pytorch-ood's API."""

from .gradnorm import GradNorm, HeadGradNorm, ParameterGradNorm, gradnorm_score
from .lee_alregib import LeeAlRegib
from .mahalanobis_ensemble import MahalanobisEnsemble

__all__ = [
    "GradNorm",
    "HeadGradNorm",
    "LeeAlRegib",
    "MahalanobisEnsemble",
    "ParameterGradNorm",
    "gradnorm_score",
]
