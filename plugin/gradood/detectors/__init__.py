"""gradood's detectors, one per module, all with pytorch-ood's API."""

from .gradnorm import GradNorm, gradnorm_score

__all__ = ["GradNorm", "gradnorm_score"]
