"""Detector registry: one recipe per detector name (:class:`DetectorSpec`).

A recipe says how to build the detector (a factory ``(model, **settings) -> Detector`` and
*presets*, the settings a paper fixes for a protocol), what it is fitted on and which
representation it scores from. :func:`build_and_fit` follows it; every caller (the bundled
benchmark, the paper checks, the throughput suite) builds detectors through it.

Built in: gradood's ``gradnorm``, ``lee-alregib`` and ``mahalanobis-paper`` (the paper's
multi-layer Mahalanobis), and every pytorch-ood detector that applies to a plain classifier
(:func:`available_detectors`), wired to the model by :mod:`gradood.wiring`.

Third-party packages add detectors through the entry-point group ``gradood.detectors``: each
entry point's name is the detector's name and its object a factory (e.g. a detector class whose
first argument is the model). A plugin that fails to load is skipped with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import torch
from pytorch_ood import detector as pood
from pytorch_ood.api import Detector, ModelNotSetException
from torch import nn
from torch.utils.data import DataLoader

from .detectors.gradnorm import GradNorm
from .detectors.gradnorm_factors import GradNormU, GradNormV
from .detectors.lee_alregib import LeeAlRegib
from .detectors.mahalanobis_ensemble import MahalanobisEnsemble
from .heads import penultimate_encoder
from .models.preprocessing import CIFAR_RESNET20
from .wiring import (
    feature_width,
    on_differentiable_features,
    on_features,
    on_features_and_head,
    on_features_and_weights,
    on_model,
    on_pooled_maps,
    wired,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "FACTORS",
    "FIT_KINDS",
    "REPRESENTATIONS",
    "DetectorSpec",
    "available_detectors",
    "build_and_fit",
    "create_detector",
    "detector_spec",
    "register_detector",
]

ENTRY_POINT_GROUP = "gradood.detectors"

Factory = Callable[..., Detector]

#: what a detector is fitted on: ``none``; ``train`` (the ID training loader); ``tuning`` (a
#: held-out ID loader); ``train+tuning`` (``fit(train, tuning_loader=tuning)``, the tuning loader
#: defaulting to the training one); ``surrogate`` (the ID training loader, with OOD data the
#: detector makes itself, e.g. noise); ``auto`` (plugins: the training loader if the detector
#: says ``requires_fit``)
FIT_KINDS = ("none", "train", "tuning", "train+tuning", "surrogate", "auto")
#: what a detector scores from: ``logits`` and ``features`` (penultimate) are served from
#: :func:`gradood.evaluate`'s cached pass, ``layers`` (cached layer outputs) where the
#: detector's settings allow, ``inputs`` always take the raw inputs
REPRESENTATIONS = ("logits", "features", "layers", "inputs")


@dataclass(frozen=True)
class DetectorSpec:
    """A registered detector's recipe: its ``factory`` ``(model, **settings) -> detector``,
    named ``presets`` of settings, what it is ``fit`` on (:data:`FIT_KINDS`) and what it
    ``scores_from`` (:data:`REPRESENTATIONS`)."""

    name: str
    factory: Factory
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    summary: str = ""
    fit: str = "auto"
    scores_from: str = "inputs"
    #: the default dtype the fit must run under, if it needs one (pytorch-ood's DICE computes
    #: in float32 and makes its quantile's level in the default dtype)
    fit_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.fit not in FIT_KINDS:
            raise ValueError(f"fit must be one of {', '.join(FIT_KINDS)}, got '{self.fit}'")
        if self.scores_from not in REPRESENTATIONS:
            raise ValueError(
                f"scores_from must be one of {', '.join(REPRESENTATIONS)}, got '{self.scores_from}'"
            )


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


_PAPER_PROTOCOLS = ("imagenet", "cifar", "cifar10", "cifar100")
_PAPER_LOGIT_PRESETS = {name: {"t": 1.0} for name in _PAPER_PROTOCOLS}

# epsilon in pixel units: the CIFAR ODIN code divides the gradient's sign by the std
_CIFAR_ODIN = {"temperature": 1000.0, "eps": 0.004, "norm_std": CIFAR_RESNET20.std}
_ODIN_PRESETS = {
    "imagenet": {"temperature": 1000.0, "eps": 0.0},
    **{name: _CIFAR_ODIN for name in ("cifar", "cifar10", "cifar100")},
}

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

_GRADNORM_PRESETS = {name: {"p": 1.0, "temperature": 1.0} for name in _PAPER_PROTOCOLS}
#: detector -> the registered names of its factors (the paper's split of GradNorm, U V = S;
#: scored at the detector's settings), with what each factor measures
FACTORS: dict[str, dict[str, str]] = {
    "gradnorm": {"gradnorm-u": "U (feature norm)", "gradnorm-v": "V (output norm)"}
}

_GRADOOD = [
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


# the settings are pytorch-ood's defaults, which follow the papers, unless stated
_PYTORCH_OOD = [
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
        pood.GradUncertainty,
        "none",
        "inputs",
        "GradUncertainty (Lee & AlRegib): minus the sum over all parameters of the squared L2 "
        "norms of the gradients of the BCE between softmax(z) and the all-ones label",
    ),
]

_BUILTINS = [*_GRADOOD, *_PYTORCH_OOD]

#: where the presets of a name went when its paper variant got a name of its own
_MOVED_PRESETS = {
    "mahalanobis": "; the paper's multi-layer Mahalanobis and its presets are the registered "
    "name 'mahalanobis-paper'"
}

_REGISTRY: dict[str, DetectorSpec] = {spec.name: spec for spec in _BUILTINS}
_entry_points_loaded = False


def register_detector(
    name: str,
    factory: Factory,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    summary: str = "",
    *,
    fit: str = "auto",
    scores_from: str = "inputs",
    replace: bool = False,
) -> DetectorSpec:
    """Register ``factory`` under ``name``, fitted as ``fit`` says (:data:`FIT_KINDS`).

    :raises ValueError: if ``name`` is taken and ``replace`` is false, or on an unknown ``fit``
        or ``scores_from``
    """
    _load_entry_points()
    if name in _REGISTRY and not replace:
        raise ValueError(f"a detector named '{name}' is already registered")
    spec = DetectorSpec(name, factory, dict(presets or {}), summary, fit, scores_from)
    _REGISTRY[name] = spec
    return spec


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in _REGISTRY:
            warnings.warn(
                f"gradood: the plugin detector '{point.name}' ({point.value}) is ignored: "
                "the name is already registered",
                stacklevel=3,
            )
            continue
        try:
            factory = point.load()
        except Exception as error:
            warnings.warn(
                f"gradood: the plugin detector '{point.name}' ({point.value}) failed to load "
                f"and is skipped: {type(error).__name__}: {error}",
                stacklevel=3,
            )
            continue
        if not callable(factory):
            warnings.warn(
                f"gradood: the plugin detector '{point.name}' ({point.value}) is not callable "
                "and is skipped",
                stacklevel=3,
            )
            continue
        presets = getattr(factory, "gradood_presets", {})
        fit = getattr(factory, "gradood_fit", "auto")
        scores_from = getattr(factory, "gradood_scores_from", "inputs")
        _REGISTRY[point.name] = DetectorSpec(
            point.name, factory, presets, point.value, fit, scores_from
        )


def available_detectors() -> list[str]:
    """The sorted names that :func:`create_detector` and :func:`build_and_fit` accept.

    Presets (``preset=``) of the GradNorm paper's detectors (``cifar10`` and ``cifar100`` name
    the CIFAR protocols, ``cifar`` is the same setting where both agree):

    - ``msp``, ``energy``: T = 1 (``imagenet``, ``cifar``, ``cifar10``, ``cifar100``)
    - ``odin``: ODIN at T = 1000; ``imagenet``: epsilon 0; ``cifar``, ``cifar10``,
      ``cifar100``: epsilon 0.004 in pixel units (``norm_std`` = the CIFAR ResNet-20's std, as
      the CIFAR ODIN code divides the sign by it). pytorch-ood takes ``torch.sign`` (0 -> 0)
      where the official codes take ``torch.ge`` (0 -> +1); irrelevant at epsilon 0
    - ``mahalanobis``: pytorch-ood's single-layer Mahalanobis on the penultimate features (no
      presets; the paper's variant is ``mahalanobis-paper``)
    - ``mahalanobis-paper``: :class:`~gradood.detectors.MahalanobisEnsemble`, the paper's
      variant (layer scores with input preprocessing, combined by a logistic regression
      against FGSM examples), with the paper's magnitude fixed (the regression is still
      trained by ``fit``): ``imagenet``: 0.001 in model-input units, FGSM examples clamped to
      [0, 1] in model-input units, both as the official ImageNet code does; ``cifar10``: 0.01,
      ``cifar100``: 0.005, in pixel units with the FGSM examples clamped to the pixel range
      (the CIFAR code is unpublished)
    - ``gradnorm``: :class:`gradood.GradNorm`, L1 at T = 1 (``imagenet``, ``cifar``,
      ``cifar10``, ``cifar100``); its factors ``gradnorm-u`` (:math:`\\lVert h \\rVert_p`)
      and ``gradnorm-v`` (:math:`\\lVert (C \\, \\mathrm{softmax}(z/T) - 1)/T \\rVert_p`),
      :class:`gradood.detectors.GradNormU` and ``GradNormV``, with the same presets
    - ``lee-alregib``: :class:`gradood.LeeAlRegib` (needs ``fit``), uniform-noise surrogate OOD
      in the model's input space: ``imagenet``: BiT's mean = std = 0.5 (the paper's Table 9);
      ``cifar``, ``cifar10``, ``cifar100``: the CIFAR ResNet-20's normalization
    - ``knn``: k = 1000 (``imagenet``), 50 (``cifar``, ``cifar10``, ``cifar100``), the KNN
      paper's; ``dice``: p = 0.7 (``imagenet``), 0.9 (``cifar``, ``cifar10``, ``cifar100``);
      ``vim``: d = 1000 (``imagenet``, for BiT's 2048 features)

    Without presets (pytorch-ood's defaults, which follow the papers): ``maxlogit``,
    ``entropy``, ``gen``, ``klmatching``, ``temperature-scaling``, ``rmd``,
    ``gmm``, ``she``, ``nnguide``, ``pnml``, ``nci``, ``fdbd``, ``lts``, ``react``, ``vra``,
    ``ash``, ``scale``, ``mahalanobis-odin``, ``graduncertainty``; and every detector of the
    entry-point group ``gradood.detectors``.
    """
    _load_entry_points()
    return sorted(_REGISTRY)


def detector_spec(name: str) -> DetectorSpec:
    """The registered :class:`DetectorSpec` of ``name``.

    :raises ValueError: for an unknown name, listing the known ones
    """
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown detector '{name}'; known detectors: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_detector(
    name: str, model: nn.Module, *, preset: str | None = None, **kwargs: Any
) -> Detector:
    """Build the detector registered as ``name`` for ``model``.

    :param preset: a named setting of the paper (see :func:`available_detectors`); explicit
        ``kwargs`` override its values
    :raises ValueError: for an unknown detector name or preset, listing the known ones
    :raises ModelNotSetException: if ``model`` is ``None``
    """
    spec = detector_spec(name)
    if model is None:  # the recipes wire the detector to the model's modules
        raise ModelNotSetException(f"detector '{name}' needs a model: create_detector(name, model)")
    settings: dict[str, Any] = {}
    if preset is not None:
        if preset not in spec.presets:
            known = ", ".join(sorted(spec.presets)) or "none"
            moved = _MOVED_PRESETS.get(name, "")
            raise ValueError(
                f"detector '{name}' has no preset '{preset}'; its presets: {known}{moved}"
            )
        settings.update(spec.presets[preset])
    settings.update(kwargs)
    return spec.factory(model, **settings)


def build_and_fit(
    name: str,
    model: nn.Module,
    *,
    preset: str | None = None,
    train_loader: DataLoader | None = None,
    tuning_loader: DataLoader | None = None,
    **settings: Any,
) -> Detector:
    """Build detector ``name`` for ``model`` (:func:`create_detector`) and fit it as its recipe
    says (:data:`FIT_KINDS`): on ``train_loader`` (ID training data), on ``tuning_loader``
    (held-out ID data), or not at all.

    :raises ValueError: if the recipe needs a loader that is not given
    """
    spec = detector_spec(name)
    detector = create_detector(name, model, preset=preset, **settings)
    kind = spec.fit
    if kind == "auto":
        kind = "train" if getattr(detector, "requires_fit", False) else "none"
    if kind == "none":
        return detector
    needed = tuning_loader if kind == "tuning" else train_loader
    if needed is None:
        which = "tuning_loader" if kind == "tuning" else "train_loader"
        raise ValueError(f"detector '{name}' is fitted on {_FIT_DATA[kind]}: pass {which}=")
    with _default_dtype(spec.fit_dtype):
        if kind == "train+tuning":
            detector.fit(train_loader, tuning_loader=tuning_loader or train_loader)
        else:
            detector.fit(needed)
    return detector


@contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


_FIT_DATA = {
    "train": "the ID training data",
    "tuning": "held-out ID data",
    "train+tuning": "the ID training data (and held-out ID data)",
    "surrogate": "the ID training data (with its own surrogate OOD data)",
}
