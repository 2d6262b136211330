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
from .heads import penultimate_encoder

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


def _mahalanobis(model: nn.Module, *, head: Any = None) -> Detector:
    return Mahalanobis(penultimate_encoder(model, head))


_PAPER_LOGIT_PRESETS = {"imagenet": {"t": 1.0}, "cifar": {"t": 1.0}}

_BUILTINS = [
    DetectorSpec("msp", _msp, _PAPER_LOGIT_PRESETS, "pytorch-ood MaxSoftmax (Hendrycks & Gimpel)"),
    DetectorSpec(
        "odin",
        _odin,
        {
            "imagenet": {"temperature": 1000.0, "eps": 0.0},
            "cifar": {"temperature": 1000.0, "eps": 0.004},
        },
        "pytorch-ood ODIN (Liang et al.)",
    ),
    DetectorSpec("energy", _energy, _PAPER_LOGIT_PRESETS, "pytorch-ood EnergyBased (Liu et al.)"),
    DetectorSpec(
        "mahalanobis",
        _mahalanobis,
        {},
        "pytorch-ood Mahalanobis on the penultimate features (Lee et al.)",
    ),
    DetectorSpec(
        "gradnorm",
        GradNorm,
        {"imagenet": {"p": 1.0, "temperature": 1.0}, "cifar": {"p": 1.0, "temperature": 1.0}},
        "gradood GradNorm (Huang et al.), exact, one forward pass",
    ),
    DetectorSpec(
        "lee-alregib",
        LeeAlRegib,
        # the noise surrogate in BiT's input space: mean = std = 0.5 (see PROTOCOL.md)
        {"imagenet": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}},
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

    Built in, with their presets (``preset=``; the paper's settings):

    - ``msp``: MaxSoftmax at T = 1 (``imagenet``, ``cifar``)
    - ``odin``: ODIN, T = 1000 with epsilon 0 (``imagenet``) or epsilon 0.004 (``cifar``)
    - ``energy``: energy score at T = 1 (``imagenet``, ``cifar``)
    - ``mahalanobis``: pytorch-ood's single-layer Mahalanobis on the penultimate features
    - ``gradnorm``: :class:`gradood.GradNorm`, L1 at T = 1 (``imagenet``, ``cifar``)
    - ``lee-alregib``: :class:`gradood.LeeAlRegib` (needs ``fit``), uniform-noise surrogate OOD
      in BiT's input space, mean = std = 0.5 (``imagenet``, the paper's Table 9)

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
