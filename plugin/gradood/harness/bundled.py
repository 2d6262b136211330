"""The bundled offline benchmark: every registered detector on scikit-learn's digits.

ID = the digits test split; OOD = letters (near), photo crops and uniform noise (far)
(:class:`gradood.protocols.digits.DigitsBenchmark`); the classifier is the shipped
:func:`gradood.models.digits.load_digits_cnn`. Every detector of the registry (third-party
plugins included) is built and fitted by its recipe (:func:`gradood.registry.build_and_fit`;
the ID training split is also the tuning data, as the digits have no held-out split) and scored
by :func:`gradood.evaluate`; GradNorm and its factors U and V
(:mod:`gradood.detectors.gradnorm_factors`) at every norm of Table 7 and every temperature of
Table 8 (:data:`GRIDS`).

Some of pytorch-ood's detectors compute in float32 whatever their input (DICE, fDBD, NCI,
NNGuide, pNML and ViM cast features to float32): their scores carry float32 rounding, about
1e-7 relative, so their near-ties are wider than float64's; the table is still the same with
one and two torch threads (``tests/test_bundled_benchmark.py``).

Everything runs in float64: the machine's float rounding (about 1e-16 relative, and it differs
between CPUs and thread counts) then moves no fit's discrete choices (a selected epoch, a tuned
magnitude) and reorders only scores tied to about 1e-12, so every machine gets the same table up
to such near-ties (see :data:`NEAR_TIE_TOLERANCE`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from pytorch_ood.api import Detector
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..detectors.gradnorm import PAPER_NORMS, PAPER_TEMPERATURES
from ..evaluate import evaluate
from ..models.digits import load_digits_cnn
from ..protocols.digits import DigitsBenchmark
from ..registry import FACTORS, available_detectors, build_and_fit

__all__ = [
    "LISTED_DETECTORS",
    "NEAR_TIE_TOLERANCE",
    "PAPER_DETECTORS",
    "PAPER_SETTING",
    "TITLE",
    "BundledRun",
    "run_bundled",
    "with_companions",
]

TITLE = "bundled digits benchmark"
SEED = 0
#: GradNorm's setting in the paper's main results (Table 1)
PAPER_SETTING = {"p": 1.0, "temperature": 1.0}
#: the detectors of the paper's tables, always listed in the summary (GradNorm at its setting)
PAPER_DETECTORS = {
    **{name: PAPER_SETTING for name in ("gradnorm", *FACTORS["gradnorm"])},
    **{name: {} for name in ("msp", "odin", "energy", "mahalanobis-paper", "lee-alregib")},
}
#: the detectors always listed in the summary: the paper's, and GAIA, the gradient family's
#: strongest since GradNorm
LISTED_DETECTORS = {**PAPER_DETECTORS, "gaia-a": {}, "gaia-z": {}}
#: the outputs of the CNN's two convolution blocks, for the paper's Mahalanobis ensemble
MAHALANOBIS_LAYERS = ["body.2", "body.5"]
_ID_TEST = 719
#: how far two runs' metrics may differ when only float rounding differs: a swapped pair of
#: nearly tied ID/OOD scores moves AUROC by 1 / 719^2 (five such swaps allowed), an FPR or an
#: average precision by at most about one sample, 1 / 719
NEAR_TIE_TOLERANCE = {
    "AUROC": 5 / _ID_TEST**2,
    "AUPR-IN": 1 / _ID_TEST + 1e-12,
    "AUPR-OUT": 1 / _ID_TEST + 1e-12,
    "FPR95": 1 / _ID_TEST + 1e-12,
    "FPR95TPR": 1 / _ID_TEST + 1e-12,
}

Entry = tuple[str, dict, Detector]

_GRADNORM_GRID = [{"p": p, "temperature": 1.0} for p in PAPER_NORMS] + [
    {"p": 1.0, "temperature": t} for t in PAPER_TEMPERATURES if t != 1.0
]
#: the settings the table shows, per detector (default: one, the recipe's): GradNorm and its
#: factors U and V at Table 7's norms (T = 1) and Table 8's temperatures (L1)
GRIDS: dict[str, list[dict]] = {name: _GRADNORM_GRID for name in ("gradnorm", *FACTORS["gradnorm"])}
Progress = Callable[[str], None]


@dataclass
class BundledRun:
    """The benchmark (float64 tensors), the classifier, the fitted detectors and the table."""

    benchmark: DigitsBenchmark
    model: nn.Module
    entries: list[Entry]
    #: ``None`` where no detector was asked for
    table: pd.DataFrame | None

    def accuracy(self) -> float:
        """The classifier's accuracy on the ID test set."""
        (id_set,) = self.benchmark.test_sets(known=True, unknown=False)
        images, labels = id_set.tensors
        with torch.no_grad():
            return float((self.model(images).argmax(1) == labels).double().mean())


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def float64_by_default() -> Iterator[None]:
    """New floating-point tensors are float64 inside the block (some of pytorch-ood's detectors
    allocate their statistics with the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _float64(benchmark: DigitsBenchmark) -> DigitsBenchmark:
    for dataset in [benchmark.train_set(), *benchmark.test_sets(known=True, unknown=False)]:
        _as_float64(dataset)
    for dataset in benchmark.test_sets(known=False, unknown=True):
        _as_float64(dataset)
    return benchmark


def _as_float64(dataset: TensorDataset) -> None:
    images, labels = dataset.tensors
    dataset.tensors = (images.double(), labels)


def _digits_settings(benchmark: DigitsBenchmark) -> dict[str, dict]:
    """What the digits data fixes for some recipes (not shown in the table): the inputs'
    normalization, the layers of the paper's Mahalanobis, the surrogate's seed; no progress
    bars (the harness prints its own lines)."""
    normalization = {"norm_mean": [benchmark.mean], "norm_std": [benchmark.std]}
    return {
        "mahalanobis-paper": {"layers": MAHALANOBIS_LAYERS, **normalization, "progress": False},
        "lee-alregib": {
            "mean": benchmark.mean,
            "std": benchmark.std,
            "seed": SEED,
            "progress": False,
        },
    }


def _entries(name: str, model: nn.Module, benchmark: DigitsBenchmark) -> list[Entry]:
    """The bundled benchmark's settings of detector ``name``, built and fitted by its recipe
    (:func:`gradood.registry.build_and_fit`) on the ID training split, which is also the
    tuning data (the digits have no held-out split)."""
    train = DataLoader(benchmark.train_set(), batch_size=256)
    fixed = _digits_settings(benchmark).get(name, {})
    return [
        (
            name,
            shown,
            build_and_fit(name, model, train_loader=train, tuning_loader=train, **fixed, **shown),
        )
        for shown in GRIDS.get(name, [{}])
    ]


def with_companions(names: list[str]) -> list[str]:
    """``names`` and the detectors their summary lines compare them with, in the registry's
    order: a detector's factors (GradNorm: U and V), and for a paper detector without factors
    the first factor of each factored one (the feature norm U, named where it falls below
    chance)."""
    factor_names = {f for factors in FACTORS.values() for f in factors}
    needed = set(names)
    for name in names:
        needed.update(FACTORS.get(name, {}))
        if name in PAPER_DETECTORS and name not in FACTORS and name not in factor_names:
            needed.update(next(iter(factors)) for factors in FACTORS.values())
    return [name for name in available_detectors() if name in needed]


def run_bundled(
    threads: int = 1, progress: Progress | None = None, names: list[str] | None = None
) -> BundledRun:
    """Build, fit and score every registered detector (or those in ``names``) with ``threads``
    torch threads."""
    say = progress or (lambda _message: None)
    with torch_threads(threads), float64_by_default():
        benchmark = _float64(DigitsBenchmark(seed=SEED))
        model = load_digits_cnn().double()
        entries = []
        names = available_detectors() if names is None else names
        for index, name in enumerate(names, start=1):
            say(f"{TITLE}: fitting {name} ({index} of {len(names)})")
            entries += _entries(name, model, benchmark)
        say(f"{TITLE}: scoring {len(entries)} detector settings")
        table = evaluate(benchmark, entries, batch_size=256, progress=False) if entries else None
    return BundledRun(benchmark, model, entries, table)
