"""The harness's reported-number checks: every row of the paper's tables, how it is measured
and how close the measurement must come.

A :class:`PaperCheck` is one printed row (table, ID data, OOD data, method, p, T, FPR95, AUROC)
with how it is measured (``reported/measurement.csv``: the registry name of its detector, the
settings passed to it, the tolerance class). Rows that need the same detector and settings on
the same protocol share one measurement, and one measurement *group* is one call of
:func:`gradood.evaluate`; the group follows from the detector's fit kind in the registry:

- ``"forward"``: detectors fitted on nothing (GradNorm at every p and T, MSP, Energy, ODIN), all
  scored from one cached forward pass per dataset where they can (ODIN with epsilon > 0, on the
  CIFAR protocols, on the raw inputs);
- a fitted detector's own group: the paper's Mahalanobis ensemble (``train+tuning``: Gaussians on
  the ID training set, the regression on the first ID test images, as the official script
  does); Lee & AlRegib's detector (``surrogate``: fitted on :data:`SURROGATE_FIT_SAMPLES` ID
  training images drawn with seed 0, with uniform noise as surrogate OOD; the paper does not say
  which ID images it used, and training images keep the test sets out of the fit).

Measured metrics are in percent, like the paper's; an ``Average`` row is the mean over the
four OOD sets of the unrounded metrics (the paper averages its rounded values and rounds: the
two differ by at most 0.01, far below every tolerance).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from pytorch_ood.api import Detector
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .. import reported
from ..cache import CorruptCacheError
from ..evaluate import evaluate
from ..features import default_num_workers
from ..registry import FACTORS, build_and_fit, create_detector, detector_spec

__all__ = [
    "FORWARD",
    "PROTOCOLS",
    "TOLERANCES",
    "Comparison",
    "PaperCheck",
    "Tolerance",
    "compare",
    "measure",
    "measure_table",
    "measurement_plan",
    "paper_checks",
]

#: the protocol (see :func:`gradood.protocols.make_protocol`) of each ID dataset of the tables
PROTOCOLS = reported.PROTOCOLS
#: the group of the detectors that are fitted on nothing
FORWARD = "forward"
#: ID training images that a surrogate-fitted detector (Lee & AlRegib) is fitted on
SURROGATE_FIT_SAMPLES = 10_000
#: the tables' OOD names that the protocols spell differently
_PROTOCOL_OOD_NAMES = {"LSUN-crop": "LSUN (crop)"}


@dataclass(frozen=True)
class Tolerance:
    """How far (percentage points) a measurement may be from the printed value, and why."""

    fpr95: float
    auroc: float
    reason: str


#: the authors' checkpoint and data with a deterministic score
DETERMINISTIC = Tolerance(
    0.1,
    0.1,
    "deterministic score on the authors' checkpoint and data: only float rounding and image "
    "decoding differ, which moves a few of >= 5,640 samples across a threshold (<= 0.02 pp "
    "each), plus the paper's rounding to 0.01",
)
#: a detector fitted on data with input gradients (Mahalanobis ensemble)
FITTED = Tolerance(
    3.0,
    3.0,
    "fitted detector: Gaussians and a cross-validated logistic regression on 500 samples "
    "with FGSM and input-gradient steps, which amplify float differences into other fits",
)
#: a trained binary classifier with unpublished settings (Lee & AlRegib)
TRAINED = Tolerance(
    10.0,
    10.0,
    "trained classifier whose hidden width, optimizer, noise range and split are not "
    "published; only the regime of the paper's numbers can be checked",
)
#: the CIFAR ResNet-20, which must be retrained
RETRAINED = Tolerance(
    10.0,
    5.0,
    "no checkpoint was published: the ResNet-20 is retrained with the paper's schedule and "
    "unpublished details (weight decay, augmentation, seed), and users report weaker GradNorm "
    "numbers with other ResNet-20s; the check guards against gross errors only",
)


#: the tolerance classes that ``reported/measurement.csv`` names
TOLERANCES = {
    "deterministic": DETERMINISTIC,
    "fitted": FITTED,
    "trained": TRAINED,
    "retrained": RETRAINED,
}


@dataclass(frozen=True)
class PaperCheck:
    """One printed row of a table, with its tolerance."""

    table: str
    id_data: str
    ood_data: str
    method: str
    p: float
    temperature: float
    fpr95: float
    auroc: float
    tolerance: Tolerance
    #: the registry name of the detector that measures the row
    detector: str = ""
    #: the setting the table varies (``"p"``, ``"temperature"``), which names the row; ``None``:
    #: the method names it
    varies: str | None = None
    #: whether the table holds several ID datasets (then the ID dataset names the row too)
    several_id_data: bool = False
    #: the row's columns passed to the detector as settings (e.g. GradNorm's p and temperature)
    setting_names: tuple[str, ...] = ()

    @property
    def protocol(self) -> str:
        return PROTOCOLS[self.id_data]

    @property
    def group(self) -> str:
        """The measurement group (see the module docstring)."""
        return FORWARD if detector_spec(self.detector).fit == "none" else self.detector

    @property
    def settings(self) -> dict[str, float]:
        """What the detector is built with beyond the protocol's preset."""
        return {name: float(getattr(self, name)) for name in self.setting_names}

    @property
    def measurement(self) -> Measurement:
        """The measurement this row shares with every row of equal detector and settings."""
        return Measurement(self.detector, tuple(self.settings.items()))

    @property
    def id(self) -> str:
        """A readable test id, e.g. ``table7[iNaturalist-L0.3]``, ``table8[SUN-T0.0625]``."""
        if self.varies == "p":
            label = "Linf" if math.isinf(self.p) else f"L{self.p:g}"
        elif self.varies == "temperature":
            label = f"T{self.temperature:g}"
        else:
            label = self.method
        prefix = f"{self.id_data}-" if self.several_id_data else ""
        return f"{self.table}[{prefix}{self.ood_data}-{label}]"


def paper_checks(tables: Iterable[str] | None = None) -> list[PaperCheck]:
    """Every row of ``tables`` (default: all of :func:`gradood.reported.tables`), with how it
    is measured (:func:`gradood.reported.measured_as`)."""
    checks = []
    for name in reported.tables() if tables is None else tables:
        frame = reported.table(name)
        several_id_data = frame["id_data"].nunique() > 1
        for row in frame.itertuples(index=False):
            how = reported.measured_as(name, row.method)
            checks.append(
                PaperCheck(
                    table=row.table,
                    id_data=row.id_data,
                    ood_data=row.ood_data,
                    method=row.method,
                    p=row.p,
                    temperature=row.temperature,
                    fpr95=row.FPR95,
                    auroc=row.AUROC,
                    tolerance=TOLERANCES[how["tolerance"]],
                    detector=how["detector"],
                    varies=how["varies"],
                    several_id_data=several_id_data,
                    setting_names=how["settings"],
                )
            )
    return checks


@dataclass(frozen=True)
class Measurement:
    """One detector and its settings, measured once for every row that needs it."""

    detector: str
    settings: tuple[tuple[str, float], ...] = ()

    def build(self, model: nn.Module, preset: str) -> Detector:
        """The detector, unfitted, with the protocol's ``preset`` and these settings."""
        return create_detector(self.detector, model, preset=preset, **dict(self.settings))


def measurement_plan(checks: Sequence[PaperCheck], protocol: str, group: str) -> list[Measurement]:
    """The distinct measurements that ``checks`` need on ``protocol`` in ``group``."""
    chosen = (c for c in checks if c.protocol == protocol and c.group == group)
    return list(dict.fromkeys(check.measurement for check in chosen))


def measured_rows(table: pd.DataFrame, plan: Sequence[Measurement]) -> dict[tuple, dict]:
    """``{(measurement, ood_data): {"FPR95": %, "AUROC": %}}`` from :func:`gradood.evaluate`'s
    table of ``plan``'s detectors (its ``method`` column and its setting columns)."""
    names = {m.detector: [name for name, _ in m.settings] for m in plan}
    reported_names = {v: k for k, v in _PROTOCOL_OOD_NAMES.items()}
    rows = {}
    for row in table.to_dict("records"):
        if row["method"] not in names:  # e.g. GradNorm's factors
            continue
        settings = tuple((name, float(row[name])) for name in names[row["method"]])
        ood = reported_names.get(row["ood_data"], row["ood_data"])
        metrics = {"FPR95": 100 * row["FPR95"], "AUROC": 100 * row["AUROC"]}
        rows[(Measurement(row["method"], settings), ood)] = metrics
    return rows


def protocol_ood_name(ood_data: str) -> str:
    """The protocol's name of a table's OOD dataset (``LSUN-crop`` is ``LSUN (crop)``)."""
    return _PROTOCOL_OOD_NAMES.get(ood_data, ood_data)


@dataclass(frozen=True)
class Comparison:
    """A check beside its measurement."""

    check: PaperCheck
    fpr95: float
    auroc: float

    @property
    def fpr95_difference(self) -> float:
        return self.fpr95 - self.check.fpr95

    @property
    def auroc_difference(self) -> float:
        return self.auroc - self.check.auroc

    @property
    def within_tolerance(self) -> bool:
        tolerance = self.check.tolerance
        return (
            abs(self.fpr95_difference) <= tolerance.fpr95
            and abs(self.auroc_difference) <= tolerance.auroc
        )

    @staticmethod
    def columns() -> tuple[str, ...]:
        """The keys of :meth:`as_row`, in order."""
        return _COMPARISON_COLUMNS

    def as_row(self) -> dict[str, Any]:
        """The check, its measurement, their differences and the tolerance, as one row of the
        report's table (keys: :meth:`columns`)."""
        check = self.check
        return {
            "check": check.id,
            "table": check.table,
            "id_data": check.id_data,
            "ood_data": check.ood_data,
            "method": check.method,
            "p": check.p,
            "temperature": check.temperature,
            "FPR95 reported": check.fpr95,
            "FPR95 measured": self.fpr95,
            "FPR95 difference": self.fpr95_difference,
            "AUROC reported": check.auroc,
            "AUROC measured": self.auroc,
            "AUROC difference": self.auroc_difference,
            "tolerance FPR95": check.tolerance.fpr95,
            "tolerance AUROC": check.tolerance.auroc,
            "within tolerance": self.within_tolerance,
        }


_COMPARISON_COLUMNS = (
    "check",
    "table",
    "id_data",
    "ood_data",
    "method",
    "p",
    "temperature",
    "FPR95 reported",
    "FPR95 measured",
    "FPR95 difference",
    "AUROC reported",
    "AUROC measured",
    "AUROC difference",
    "tolerance FPR95",
    "tolerance AUROC",
    "within tolerance",
)


def compare(check: PaperCheck, measured: dict[tuple, dict[str, float]]) -> Comparison:
    """``check`` beside its row of :func:`measured_rows`.

    :raises KeyError: if the measurement lacks the row
    """
    row = measured[(check.measurement, check.ood_data)]
    return Comparison(check, row["FPR95"], row["AUROC"])


def measure(benchmark: Any, model: nn.Module, plan: Sequence[Measurement], **options: Any) -> dict:
    """:func:`measured_rows` of :func:`measure_table` (same arguments)."""
    return measured_rows(measure_table(benchmark, model, plan, **options), plan)


def measure_table(
    benchmark: Any,
    model: nn.Module,
    plan: Sequence[Measurement],
    *,
    group: str,
    preset: str,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    cache_dir: Any = None,
    progress: bool = True,
    on_corrupt: Callable[[CorruptCacheError], object] | None = None,
) -> pd.DataFrame:
    """Measure the settings of ``plan`` (one measurement ``group``) on ``benchmark``: build the
    detectors with the protocol's ``preset``, fit those that need it, and score them all with one
    :func:`gradood.evaluate` call, with the factors of each
    (:data:`gradood.registry.FACTORS <gradood.registry.gradood_recipes.FACTORS>`: GradNorm's U and V
    at each of GradNorm's settings, from the same pass). Returns its table.

    :param num_workers: DataLoader workers for the fits and the forward passes; ``None``: as
        :func:`gradood.features.default_num_workers` chooses (on CUDA, decoding in parallel
        workers keeps the device busy; on the CPU, none)
    :param on_corrupt: called with the error where a cache entry fails its check, which is
        then computed again (see :func:`gradood.features.extract_features`); ``None``: raised
    :raises DatasetNotFoundError: if a fit needs the ID training set and it is missing
    """
    workers = default_num_workers(device or "cpu") if num_workers is None else num_workers

    def loader(dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers)

    if device is not None:
        model.to(device)
    entries = []
    for measurement in plan:
        settings = dict(measurement.settings)
        loaders = _fit_loaders(detector_spec(measurement.detector).fit, benchmark, loader)
        shown = _progress(measurement.detector, progress)
        detector = build_and_fit(
            measurement.detector, model, preset=preset, **loaders, **settings, **shown
        )
        entries.append((measurement.detector, settings, detector))
        for factor in FACTORS.get(measurement.detector, {}):
            entries.append(
                (factor, settings, build_and_fit(factor, model, preset=preset, **settings))
            )
    return evaluate(
        benchmark,
        entries,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        cache_dir=cache_dir,
        progress=progress,
        on_corrupt=on_corrupt,
    )


def _progress(name: str, progress: bool) -> dict[str, bool]:
    """``progress=`` for a detector whose constructor takes it (its fit shows bars only if
    asked: the paper's long fits are asked to where the run shows progress)."""
    takes = "progress" in inspect.signature(detector_spec(name).factory).parameters
    return {"progress": progress} if takes else {}


def _fit_loaders(
    fit: str, benchmark: Any, loader: Callable[[Dataset], DataLoader]
) -> dict[str, DataLoader]:
    """The data a detector of fit kind ``fit`` (the registry's) is fitted on in the paper's
    protocols (module docstring)."""
    loaders = {}
    if fit == "surrogate":
        loaders["train_loader"] = loader(_sample(benchmark.train_set(), SURROGATE_FIT_SAMPLES))
    if fit in ("train", "train+tuning", "auto"):
        loaders["train_loader"] = loader(benchmark.train_set())
    if fit in ("tuning", "train+tuning"):
        loaders["tuning_loader"] = loader(benchmark.test_sets(known=True, unknown=False)[0])
    return loaders


def _sample(dataset: Dataset, count: int, seed: int = 0) -> Dataset:
    if len(dataset) <= count:
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:count].sort().values.tolist())
