"""gradood's detectors, one per module, all with pytorch-ood's API."""

from .gaia import GAIA
from .gradnorm import GradNorm, HeadGradNorm, ParameterGradNorm, gradnorm_factors, gradnorm_score
from .gradnorm_factors import GradNormU, GradNormV
from .lee_alregib import LeeAlRegib
from .mahalanobis_ensemble import MahalanobisEnsemble

__all__ = [
    "GAIA",
    "GradNorm",
    "GradNormU",
    "GradNormV",
    "HeadGradNorm",
    "LeeAlRegib",
    "MahalanobisEnsemble",
    "ParameterGradNorm",
    "gradnorm_factors",
    "gradnorm_score",
]
