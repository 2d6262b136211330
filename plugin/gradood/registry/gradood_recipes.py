"""The recipes of gradood's own detectors: GradNorm, Lee & AlRegib and the paper's
multi-layer Mahalanobis, with the paper's settings as presets."""

from __future__ import annotations

from ..detectors.gradnorm import GradNorm
from ..detectors.gradnorm_factors import GradNormU, GradNormV
from ..detectors.lee_alregib import LeeAlRegib
from ..detectors.mahalanobis_ensemble import MahalanobisEnsemble
from ..models.preprocessing import CIFAR_RESNET20
from .spec import PAPER_PROTOCOLS, DetectorSpec

__all__ = ["FACTORS", "GRADOOD"]

# ImageNet: the official code steps in model-input units (no std) and clamps the normalized
# FGSM examples to [0, 1]. CIFAR (code unpublished): Lee et al.'s pixel units and pixel box.
_CIFAR_PIXELS = {
    "norm_mean": CIFAR_RESNET20.mean,
    "norm_std": CIFAR_RESNET20.std,
    "adversarial_clamp": (0.0, 1.0),
}
_MAHALANOBIS_PAPER_PRESETS = {
    "imagenet": {"magnitude": 0.001, "adversarial_clamp": (0.0, 1.0)},
    "cifar10": {"magnitude": 0.01, **_CIFAR_PIXELS},
    "cifar100": {"magnitude": 0.005, **_CIFAR_PIXELS},
}

_GRADNORM_PRESETS = {name: {"p": 1.0, "temperature": 1.0} for name in PAPER_PROTOCOLS}
#: detector -> the registered names of its factors (the paper's split of GradNorm, U V = S;
#: scored at the detector's settings), with what each factor measures
FACTORS: dict[str, dict[str, str]] = {
    "gradnorm": {"gradnorm-u": "U (feature norm)", "gradnorm-v": "V (output norm)"}
}


#: gradood's own detectors: GradNorm and its factors, Lee & AlRegib, the paper's Mahalanobis
GRADOOD = [
    DetectorSpec(
        "mahalanobis-paper",
        MahalanobisEnsemble,
        _MAHALANOBIS_PAPER_PRESETS,
        "gradood MahalanobisEnsemble, the paper's multi-layer Mahalanobis: per-layer scores "
        "after input preprocessing, combined by a logistic regression against FGSM examples",
        "train+tuning",
        "layers",
    ),
    DetectorSpec(
        "gradnorm",
        GradNorm,
        _GRADNORM_PRESETS,
        "gradood GradNorm (Huang et al.), exact, one forward pass: the L_p norm of the head's "
        "weight gradient of KL(uniform || softmax(z / T))",
        "none",
        "features",
    ),
    *(
        DetectorSpec(name, factory, _GRADNORM_PRESETS, summary, "none", "features")
        for name, factory, summary in [
            ("gradnorm-u", GradNormU, "gradood GradNorm's feature factor U = ||h||_p"),
            (
                "gradnorm-v",
                GradNormV,
                "gradood GradNorm's output factor V = "
                "||(C softmax(z / T) - 1) / T||_p; U V = GradNorm",
            ),
        ]
    ),
    DetectorSpec(
        "lee-alregib",
        LeeAlRegib,
        # the noise surrogate in BiT's input space: mean = std = 0.5 (see PROTOCOL.md)
        {
            "imagenet": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
            **{
                name: {"mean": CIFAR_RESNET20.mean, "std": CIFAR_RESNET20.std}
                for name in ("cifar", "cifar10", "cifar100")
            },
        },
        "gradood Lee & AlRegib: per-tensor gradient norms, 2-layer classifier vs uniform noise",
        "surrogate",
        "inputs",
    ),
]
