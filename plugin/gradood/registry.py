"""Detector registry: a name maps to a factory ``(model, **kwargs) -> Detector``.

Built in: pytorch-ood's ``msp``, ``odin``, ``energy`` and ``mahalanobis``, and gradood's
``gradnorm`` and ``lee-alregib``. A factory may carry *presets*, the settings the GradNorm
paper fixes for a protocol, selected with ``create_detector(name, model, preset=...)``;
explicit keyword arguments override a preset's values.

Third-party packages add detectors through the entry-point group ``gradood.detectors``: each
entry point's name is the detector's name and its object a factory (e.g. a detector class whose
first argument is the model). A plugin that fails to load is skipped with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from pytorch_ood.api import Detector
from pytorch_ood.detector import ODIN, EnergyBased, Mahalanobis, MaxSoftmax
from torch import nn

from .detectors.gradnorm import GradNorm
from .detectors.lee_alregib import LeeAlRegib
from .detectors.mahalanobis_ensemble import MahalanobisEnsemble
from .heads import penultimate_encoder
from .models.preprocessing import CIFAR_RESNET20

__all__ = [
    "ENTRY_POINT_GROUP",
    "DetectorSpec",
    "available_detectors",
    "create_detector",
    "detector_spec",
    "register_detector",
]

ENTRY_POINT_GROUP = "gradood.detectors"

Factory = Callable[..., Detector]


@dataclass(frozen=True)
class DetectorSpec:
    """A registered detector: its ``factory`` and named ``presets`` of keyword arguments."""

    name: str
    factory: Factory
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    summary: str = ""


def _msp(model: nn.Module, *, t: float = 1.0) -> Detector:
    return MaxSoftmax(model, t=t)


def _energy(model: nn.Module, *, t: float = 1.0) -> Detector:
    return EnergyBased(model, t=t)


def _odin(model: nn.Module, **kwargs: Any) -> Detector:
    return ODIN(model, **kwargs)


def _mahalanobis(
    model: nn.Module, *, head: Any = None, paper: bool = False, **settings: Any
) -> Detector:
    """pytorch-ood's single-layer ``Mahalanobis`` on the penultimate features; with
    ``paper=True`` (set by the presets) :class:`~gradood.detectors.MahalanobisEnsemble`, the
    multi-layer variant the paper ran, which takes ``settings``."""
    if paper:
        if head is not None:
            raise ValueError("head= is for the single-layer detector; the paper's takes layers=")
        return MahalanobisEnsemble(model, **settings)
    if settings:
        raise ValueError(
            f"{', '.join(sorted(settings))}: settings of the paper's multi-layer Mahalanobis; "
            "pass paper=True or a preset (the single-layer detector takes only head=)"
        )
    return Mahalanobis(penultimate_encoder(model, head))


_PAPER_LOGIT_PRESETS = {name: {"t": 1.0} for name in ("imagenet", "cifar", "cifar10", "cifar100")}

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
_MAHALANOBIS_PRESETS = {
    "imagenet": {"paper": True, "magnitude": 0.001, "adversarial_clamp": (0.0, 1.0)},
    "cifar10": {"paper": True, "magnitude": 0.01, **_CIFAR_PIXELS},
    "cifar100": {"paper": True, "magnitude": 0.005, **_CIFAR_PIXELS},
}

_GRADNORM_PRESETS = {
    name: {"p": 1.0, "temperature": 1.0} for name in ("imagenet", "cifar", "cifar10", "cifar100")
}

_BUILTINS = [
    DetectorSpec("msp", _msp, _PAPER_LOGIT_PRESETS, "pytorch-ood MaxSoftmax (Hendrycks & Gimpel)"),
    DetectorSpec("odin", _odin, _ODIN_PRESETS, "pytorch-ood ODIN (Liang et al.)"),
    DetectorSpec("energy", _energy, _PAPER_LOGIT_PRESETS, "pytorch-ood EnergyBased (Liu et al.)"),
    DetectorSpec(
        "mahalanobis",
        _mahalanobis,
        _MAHALANOBIS_PRESETS,
        "pytorch-ood Mahalanobis on the penultimate features (Lee et al.); presets: gradood "
        "MahalanobisEnsemble, the paper's multi-layer variant",
    ),
    DetectorSpec(
        "gradnorm",
        GradNorm,
        _GRADNORM_PRESETS,
        "gradood GradNorm (Huang et al.), exact, one forward pass",
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
    ),
]

_REGISTRY: dict[str, DetectorSpec] = {spec.name: spec for spec in _BUILTINS}
_entry_points_loaded = False


def register_detector(
    name: str,
    factory: Factory,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    summary: str = "",
    *,
    replace: bool = False,
) -> DetectorSpec:
    """Register ``factory`` under ``name``.

    :raises ValueError: if ``name`` is taken and ``replace`` is false
    """
    _load_entry_points()
    if name in _REGISTRY and not replace:
        raise ValueError(f"a detector named '{name}' is already registered")
    spec = DetectorSpec(name, factory, dict(presets or {}), summary)
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
        _REGISTRY[point.name] = DetectorSpec(point.name, factory, presets, point.value)


def available_detectors() -> list[str]:
    """The sorted names that :func:`create_detector` accepts.

    Built in, with their presets (``preset=``; the paper's settings; ``cifar10`` and
    ``cifar100`` name the CIFAR protocols, ``cifar`` is the same setting where both agree):

    - ``msp``: MaxSoftmax at T = 1 (``imagenet``, ``cifar``, ``cifar10``, ``cifar100``)
    - ``odin``: ODIN at T = 1000; ``imagenet``: epsilon 0; ``cifar``, ``cifar10``,
      ``cifar100``: epsilon 0.004 in pixel units (``norm_std`` = the CIFAR ResNet-20's std, as
      the CIFAR ODIN code divides the sign by it). pytorch-ood takes ``torch.sign`` (0 -> 0)
      where the official codes take ``torch.ge`` (0 -> +1); irrelevant at epsilon 0
    - ``energy``: energy score at T = 1 (``imagenet``, ``cifar``, ``cifar10``, ``cifar100``)
    - ``mahalanobis``: without a preset pytorch-ood's single-layer Mahalanobis on the
      penultimate features; the presets (or ``paper=True``) give
      :class:`~gradood.detectors.MahalanobisEnsemble`, the paper's variant (layer scores with
      input preprocessing, combined by a logistic regression against FGSM examples), with the
      paper's magnitude fixed (the regression is still trained by ``fit``): ``imagenet``:
      0.001 in model-input units, FGSM examples clamped to [0, 1] in model-input units, both as
      the official ImageNet code does; ``cifar10``: 0.01, ``cifar100``: 0.005, in pixel units
      with the FGSM examples clamped to the pixel range (the CIFAR code is unpublished)
    - ``gradnorm``: :class:`gradood.GradNorm`, L1 at T = 1 (``imagenet``, ``cifar``,
      ``cifar10``, ``cifar100``)
    - ``lee-alregib``: :class:`gradood.LeeAlRegib` (needs ``fit``), uniform-noise surrogate OOD
      in the model's input space: ``imagenet``: BiT's mean = std = 0.5 (the paper's Table 9);
      ``cifar``, ``cifar10``, ``cifar100``: the CIFAR ResNet-20's normalization

    and every detector of the entry-point group ``gradood.detectors``.
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
    """
    spec = detector_spec(name)
    settings: dict[str, Any] = {}
    if preset is not None:
        if preset not in spec.presets:
            known = ", ".join(sorted(spec.presets)) or "none"
            raise ValueError(f"detector '{name}' has no preset '{preset}'; its presets: {known}")
        settings.update(spec.presets[preset])
    settings.update(kwargs)
    return spec.factory(model, **settings)
