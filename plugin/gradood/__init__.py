"""gradood: gradient-based OOD detectors for pytorch-ood, and the GradNorm paper's protocols."""

from .detectors import GradNorm, LeeAlRegib, MahalanobisEnsemble
from .evaluate import evaluate
from .metrics import paper_metrics
from .registry import available_detectors, build_and_fit, create_detector

__all__ = [
    "GradNorm",
    "LeeAlRegib",
    "MahalanobisEnsemble",
    "available_detectors",
    "build_and_fit",
    "create_detector",
    "evaluate",
    "paper_metrics",
]
__version__ = "0.1.0"
