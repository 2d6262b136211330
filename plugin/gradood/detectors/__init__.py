"""gradood's detectors, one per module, all with pytorch-ood's API."""

from .gradnorm import GradNorm, gradnorm_score
from .lee_alregib import LeeAlRegib

__all__ = ["GradNorm", "LeeAlRegib", "gradnorm_score"]
