"""Detector registry: one recipe per detector name (:class:`DetectorSpec`).

A recipe says how to build the detector (a factory ``(model, **settings) -> Detector`` and
*presets*, the settings a paper fixes for a protocol), what it is fitted on and which
representation it scores from. :func:`build_and_fit` follows it; every caller (the bundled
benchmark, the paper checks, the throughput suite) builds detectors through it.

Built in: gradood's ``gradnorm``, its factors ``gradnorm-u`` and ``gradnorm-v``,
``lee-alregib``, ``mahalanobis-paper`` (the paper's multi-layer Mahalanobis), GAIA's ``gaia-a``
and ``gaia-z``, and every
pytorch-ood detector that applies to a plain classifier (:func:`available_detectors`), wired to
the model by :mod:`gradood.wiring`.

Third-party packages add detectors through the entry-point group ``gradood.detectors``: each
entry point's name is the detector's name and its object a factory (e.g. a detector class whose
first argument is the model). A plugin that fails to load is skipped with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

import torch
from pytorch_ood.api import Detector, ModelNotSetException
from torch import nn
from torch.utils.data import DataLoader

from .gradood_recipes import FACTORS, GRADOOD
from .pood_recipes import PAPER_BASELINES, PYTORCH_OOD
from .spec import FIT_KINDS, REPRESENTATIONS, DetectorSpec, Factory

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


_BUILTINS = [*PAPER_BASELINES, *GRADOOD, *PYTORCH_OOD]

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
    """Register ``factory`` under ``name``, fitted as ``fit`` says
    (:data:`~gradood.registry.spec.FIT_KINDS`).

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
    - ``mahalanobis-paper``: :class:`~gradood.detectors.mahalanobis_ensemble.MahalanobisEnsemble`,
      the paper's variant (layer scores with input preprocessing, combined by a logistic regression
      against FGSM examples), with the paper's magnitude fixed (the regression is still trained by
      ``fit``): ``imagenet``: 0.001 in model-input units, FGSM examples clamped to [0, 1] in
      model-input units, both as the official ImageNet code does; ``cifar10``: 0.01, ``cifar100``:
      0.005, in pixel units with the FGSM examples clamped to the pixel range (the CIFAR code is
      unpublished)
    - ``gradnorm``: :class:`gradood.GradNorm <gradood.detectors.gradnorm.GradNorm>`, L1 at T = 1
      (``imagenet``, ``cifar``, ``cifar10``, ``cifar100``); its factors ``gradnorm-u``
      (:math:`\\lVert h \\rVert_p`) and ``gradnorm-v``
      (:math:`\\lVert (C \\, \\mathrm{softmax}(z/T) - 1)/T \\rVert_p`),
      :class:`gradood.detectors.gradnorm_factors.GradNormU` and ``GradNormV``, with the same presets
    - ``lee-alregib``: :class:`gradood.LeeAlRegib <gradood.detectors.lee_alregib.LeeAlRegib>` (needs
      ``fit``), uniform-noise surrogate OOD in the model's input space: ``imagenet``: BiT's mean =
      std = 0.5 (the paper's Table 9); ``cifar``, ``cifar10``, ``cifar100``: the CIFAR ResNet-20's
      normalization
    - ``gaia-a``, ``gaia-z``: :class:`gradood.GAIA <gradood.detectors.gaia.GAIA>` (GAIA-A and
      GAIA-Z); ``imagenet``: the official code's ImageNet layers for BiT (``layers=
      "before_head"``: the last stage's GroupNorms and the pooled feature), for every OOD set;
      ``gaia-z`` also ``imagenet-textures``: the official code's choice for Textures only
      (``layers="textures"``: the final GroupNorm's output before its ReLU instead of the pooled
      feature; the official code scores the ID set again with these layers for that pair).
      Without a preset, the general rule (``layers="norms"``)
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
    :raises ~pytorch_ood.api.ModelNotSetException: if ``model`` is ``None``
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
    """Build detector ``name`` for ``model`` (:func:`create_detector`) and fit it as its recipe says
    (:data:`~gradood.registry.spec.FIT_KINDS`): on ``train_loader`` (ID training data), on
    ``tuning_loader`` (held-out ID data), or not at all.

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
