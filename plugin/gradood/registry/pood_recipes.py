"""The recipes of pytorch-ood's detectors: the paper's baselines (MSP, ODIN, Energy,
Mahalanobis) with their presets, and every other pytorch-ood detector that applies to a plain
classifier, wired to the model by :mod:`gradood.wiring`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from pytorch_ood import detector as pood
from pytorch_ood.api import Detector
from torch import nn

from ..grad_mode import OutsideInferenceMode
from ..heads import penultimate_encoder
from ..models.preprocessing import CIFAR_RESNET20
from ..wiring import (
    feature_width,
    on_differentiable_features,
    on_features,
    on_features_and_head,
    on_features_and_weights,
    on_model,
    on_pooled_maps,
    wired,
)
from .spec import PAPER_PROTOCOLS, DetectorSpec

__all__ = ["PAPER_BASELINES", "PYTORCH_OOD"]


def _mahalanobis(model: nn.Module, *, head: Any = None, **settings: Any) -> Detector:
    """pytorch-ood's single-layer ``Mahalanobis`` on the penultimate features."""
    if settings:
        raise ValueError(
            f"{', '.join(sorted(settings))}: the single-layer 'mahalanobis' takes only head=; "
            "the paper's multi-layer Mahalanobis (with input preprocessing) is the registered "
            "name 'mahalanobis-paper'"
        )
    return pood.Mahalanobis(penultimate_encoder(model, head))


def _vim(model: nn.Module, *, head: Any = None, d: int | None = None, **settings: Any) -> Detector:
    """pytorch-ood's ``ViM``; ``d`` (no default there) defaults to half the feature width, the
    paper's ratio (1000 of BiT's 2048)."""
    d = feature_width(model, head) // 2 if d is None else d
    return on_features_and_weights(pood.ViM, model, head=head, d=d, **settings)


class GradUncertainty(OutsideInferenceMode, pood.GradUncertainty):
    """pytorch-ood's ``GradUncertainty``, scored outside inference mode: its ``torch.func.grad``
    returns zero gradients inside it on torch 2.1 to 2.8 (every score ``-0.``)."""


_PAPER_LOGIT_PRESETS = {name: {"t": 1.0} for name in PAPER_PROTOCOLS}

# epsilon in pixel units: the CIFAR ODIN code divides the gradient's sign by the std
_CIFAR_ODIN = {"temperature": 1000.0, "eps": 0.004, "norm_std": CIFAR_RESNET20.std}
_ODIN_PRESETS = {
    "imagenet": {"temperature": 1000.0, "eps": 0.0},
    **{name: _CIFAR_ODIN for name in ("cifar", "cifar10", "cifar100")},
}

#: the paper's baselines, with its settings as presets
PAPER_BASELINES = [
    DetectorSpec(
        "msp",
        wired(on_model, pood.MaxSoftmax),
        _PAPER_LOGIT_PRESETS,
        "pytorch-ood MaxSoftmax (Hendrycks & Gimpel): -max_c softmax(z / t)_c",
        "none",
        "logits",
    ),
    DetectorSpec(
        "odin",
        wired(on_model, pood.ODIN),
        _ODIN_PRESETS,
        "pytorch-ood ODIN (Liang et al.): MSP at temperature T of the input moved by "
        "eps * sign of the gradient; from the cached logits at eps = 0",
        "none",
        "inputs",
    ),
    DetectorSpec(
        "energy",
        wired(on_model, pood.EnergyBased),
        _PAPER_LOGIT_PRESETS,
        "pytorch-ood EnergyBased (Liu et al.): -t logsumexp(z / t)",
        "none",
        "logits",
    ),
    DetectorSpec(
        "mahalanobis",
        _mahalanobis,
        {},
        "pytorch-ood Mahalanobis (Lee et al.) on the penultimate features: min over classes "
        "of the distance to the class mean under the shared covariance",
        "train",
        "features",
    ),
]


def _pood(
    name: str,
    wiring: Callable[..., Detector],
    cls: type[Detector] | None,
    fit: str,
    scores_from: str,
    summary: str,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    fit_dtype: torch.dtype | None = None,
) -> DetectorSpec:
    """The spec of a pytorch-ood class ``cls`` connected by ``wiring`` (``cls=None``: ``wiring``
    is the factory already)."""
    factory = wiring if cls is None else wired(wiring, cls)
    summary = f"pytorch-ood {summary}"
    return DetectorSpec(name, factory, presets or {}, summary, fit, scores_from, fit_dtype)


#: the rest of pytorch-ood's detectors that apply to a plain classifier; the settings are
#: pytorch-ood's defaults, which follow the papers, unless stated
PYTORCH_OOD = [
    _pood("maxlogit", on_model, pood.MaxLogit, "none", "logits", "MaxLogit: -max_c z_c"),
    _pood("entropy", on_model, pood.Entropy, "none", "logits", "Entropy of softmax(z)"),
    _pood(
        "gen",
        on_model,
        pood.GEN,
        "none",
        "logits",
        "GEN (Liu et al.): generalized entropy sum_c p_c^g (1 - p_c)^g, g = 0.1, over the "
        "top-M probabilities (M: all classes)",
    ),
    _pood(
        "klmatching",
        on_model,
        pood.KLMatching,
        "train",
        "logits",
        "KLMatching (Hendrycks et al.): KL divergence of softmax(z) to the mean ID softmax of "
        "the predicted class",
    ),
    _pood(
        "temperature-scaling",
        on_model,
        pood.TemperatureScaling,
        "tuning",
        "logits",
        "TemperatureScaling (Guo et al.): MSP at the temperature that minimizes the NLL on "
        "held-out ID data (L-BFGS)",
    ),
    _pood(
        "rmd",
        on_features,
        pood.RMD,
        "train",
        "features",
        "RMD (Ren et al.): Mahalanobis score minus that of one Gaussian of all ID features",
    ),
    _pood(
        "gmm",
        on_features,
        pood.GMM,
        "train",
        "features",
        "GMM: -log sum_k pi_k N(h | mu_k, Sigma_k), one Gaussian per class",
    ),
    _pood(
        "knn",
        on_features,
        pood.KNN,
        "train",
        "features",
        "KNN (Sun et al.): distance to the k-th (k = 50) nearest normalized ID feature",
        {"imagenet": {"k": 1000}, **{name: {"k": 50} for name in ("cifar", "cifar10", "cifar100")}},
    ),
    DetectorSpec(
        "vim",
        _vim,
        {"imagenet": {"d": 1000}},
        "pytorch-ood ViM (Wang et al.): alpha times the norm of the feature's residual outside "
        "the top-d principal subspace of the ID features, minus the energy; d = D / 2 (the "
        "paper: 1000 of 2048)",
        "train",
        "features",
    ),
    _pood(
        "dice",
        wired(on_features_and_weights, pood.DICE, p=0.9),
        None,
        "train",
        "features",
        "DICE (Sun & Li): energy of the head with the fraction p of smallest weight "
        "contributions masked, p = 0.9 (the paper's CIFAR setting; 0.7 for ImageNet)",
        {"imagenet": {"p": 0.7}, **{name: {"p": 0.9} for name in ("cifar", "cifar10", "cifar100")}},
        torch.float32,
    ),
    _pood(
        "she",
        on_features_and_head,
        pood.SHE,
        "train",
        "features",
        "SHE (Zhang et al.): -<h, mean feature of the correctly classified ID samples of the "
        "predicted class>",
    ),
    _pood(
        "nnguide",
        on_features_and_head,
        pood.NNGuide,
        "train",
        "features",
        "NNGuide (Park et al.): energy times the mean similarity to the k = 10 nearest "
        "energy-scaled ID features",
    ),
    _pood(
        "pnml",
        on_features_and_head,
        pood.PNML,
        "train",
        "features",
        "pNML (Bibas et al.): regret of the predictive normalized maximum likelihood of the "
        "normalized features against the pseudo-inverse of the ID training features",
    ),
    _pood(
        "nci",
        on_features_and_head,
        pood.NCI,
        "train",
        "features",
        "NCI (Liu & Qin): -(h - mean) . w_pred / ||h - mean|| - alpha ||h||_1, alpha = 0",
    ),
    _pood(
        "fdbd",
        on_features_and_head,
        pood.fDBD,
        "train",
        "features",
        "fDBD (Liu & Qin): minus the mean over other classes c of |z_pred - z_c| / "
        "||w_pred - w_c||, divided by ||h - mean ID feature||",
    ),
    _pood(
        "lts",
        on_features_and_head,
        pood.LTS,
        "none",
        "features",
        "LTS: energy of the logits times (sum of relu(h) / sum of its top p = 5 %)^2",
    ),
    _pood(
        "react",
        on_pooled_maps,
        pood.ReAct,
        "train",
        "inputs",
        "ReAct (Sun et al.): energy after clipping the penultimate activations at their 90th "
        "ID percentile",
    ),
    _pood(
        "vra",
        on_pooled_maps,
        pood.VRA,
        "train",
        "inputs",
        "VRA (Xu et al.): energy after clipping each penultimate activation between its 1st "
        "and 99th ID percentile",
    ),
    _pood(
        "ash",
        on_pooled_maps,
        pood.ASH,
        "none",
        "inputs",
        "ASH-S (Djurisic et al.): energy after pruning the 65 % smallest penultimate "
        "activations and rescaling the rest by exp(sum ratio)",
    ),
    _pood(
        "scale",
        on_pooled_maps,
        pood.SCALE,
        "none",
        "inputs",
        "SCALE (Xu et al.): energy after scaling the penultimate activations by exp(s1 / s2), "
        "s1 their sum, s2 the sum of those above their 65th percentile",
    ),
    _pood(
        "mahalanobis-odin",
        on_differentiable_features,
        pood.MahalanobisODIN,
        "train",
        "inputs",
        "MahalanobisODIN (Lee et al.): single-layer Mahalanobis after an input step of "
        "eps = 0.002 against the score's gradient",
    ),
    _pood(
        "graduncertainty",
        on_model,
        GradUncertainty,
        "none",
        "inputs",
        "GradUncertainty (Lee & AlRegib): minus the sum over all parameters of the squared L2 "
        "norms of the gradients of the BCE between softmax(z) and the all-ones label",
    ),
]
