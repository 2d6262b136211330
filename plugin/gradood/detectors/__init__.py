"""gradood's detectors, one per module, all with pytorch-ood's API."""

from .gradnorm import GradNorm, gradnorm_score
from .mahalanobis_ensemble import MahalanobisEnsemble

__all__ = ["GradNorm", "MahalanobisEnsemble", "gradnorm_score"]
