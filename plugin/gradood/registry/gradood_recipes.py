"""The recipes of gradood's own detectors: GradNorm, Lee & AlRegib, the paper's multi-layer
Mahalanobis and GAIA's two detectors, with the papers' settings as presets."""

from __future__ import annotations

from typing import Any

from ..detectors.gaia import GAIA
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


def gaia_a(model: Any, **settings: Any) -> GAIA:
    """GAIA-A: ``GAIA(model, "A", ...)``."""
    return GAIA(model, "A", **settings)


def gaia_z(model: Any, **settings: Any) -> GAIA:
    """GAIA-Z: ``GAIA(model, "Z", ...)``."""
    return GAIA(model, "Z", **settings)


# the official ImageNet layers (BiT: block4's GroupNorms and the pooled feature) for every OOD
# set; the official code's own choice for GAIA-Z on Textures only is a preset of its own
_GAIA_IMAGENET = {"imagenet": {"layers": "before_head"}}
_GAIA_Z_PRESETS = {**_GAIA_IMAGENET, "imagenet-textures": {"layers": "textures"}}


#: gradood's own detectors: GradNorm and its factors, Lee & AlRegib, the paper's Mahalanobis,
#: GAIA-A and GAIA-Z
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
    DetectorSpec(
        "gaia-a",
        gaia_a,
        _GAIA_IMAGENET,
        "gradood GAIA-A (Chen et al.), channel-wise average abnormality: mean over inner-layer "
        "channels of (|spatial mean of d sum(f) / dA| / u)^2, u^2 = channel mean of |spatial "
        "mean of d sum(log softmax(z)) / dA_out|; f the head's input",
        "none",
        "inputs",
    ),
    DetectorSpec(
        "gaia-z",
        gaia_z,
        _GAIA_Z_PRESETS,
        "gradood GAIA-Z (Chen et al.), zero-deflation abnormality: mean over the inspected "
        "layers' channels of the squared fraction of non-zero entries of d max_c z_c / dA",
        "none",
        "inputs",
    ),
]
