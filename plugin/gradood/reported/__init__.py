"""The numbers the GradNorm paper reports (Huang, Geng, Li, NeurIPS 2021), as data.

``table(name)`` returns one of the paper's tables in long form: one row per (ID data, OOD data,
method, p, temperature), with the columns :data:`COLUMNS`. FPR95 and AUROC are percentages
exactly as printed (two decimals); the ``Average`` rows are the paper's own averages over the
four OOD datasets, kept as printed. ``p`` is the L_p norm of the gradient (``inf`` for L_inf)
and ``temperature`` the softmax temperature T that the row uses: GradNorm's p and T; T = 1 for
MSP and Energy and T = 1000 for ODIN (appendix B.2). NaN where the column does not apply
(``p`` of every baseline; both for Mahalanobis and Lee & AlRegib). Rows come in the paper's
reading order (row by row, left to right).

The paper's labels map to canonical names (:data:`PAPER_LABELS`): "MSP [13]" -> ``MSP``,
"ODIN [27]" -> ``ODIN``, "Energy [29]" -> ``Energy``, "Mahalanobis [26]" -> ``Mahalanobis``,
"GradNorm (ours)" -> ``GradNorm``, "Lee and AlRegib [25]" -> ``Lee-AlRegib``,
"LSUN (crop)" -> ``LSUN-crop``; the other dataset names are kept as printed.

The numbers live in one CSV file per table beside this module, transcribed by hand from the
paper's text; the tests check every cell against that text. How each table's methods are
measured (the detector's registry name, the tolerance class, the setting the table varies) is
data too: :func:`measured_as` (``measurement.csv``), and the protocol of each ID dataset is
:data:`PROTOCOLS`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "COLUMNS",
    "ID_DATASETS",
    "METHODS",
    "OOD_DATASETS",
    "PAPER_LABELS",
    "PROTOCOLS",
    "SWEEPS",
    "describe",
    "measured_as",
    "table",
    "tables",
]

#: the columns of every table, in this order
COLUMNS: tuple[str, ...] = (
    "table",
    "id_data",
    "ood_data",
    "method",
    "p",
    "temperature",
    "FPR95",
    "AUROC",
)
ID_DATASETS: tuple[str, ...] = ("ImageNet-1k", "CIFAR-10", "CIFAR-100")
#: the tables that sweep one setting of GradNorm, drawn like the paper's Figures 4 and 5:
#: table -> (the swept setting, a file stem for the figure, its title)
SWEEPS: dict[str, tuple[str, str, str]] = {
    "table7": ("p", "figure4_norms", "GradNorm against the norm p (Table 7, T = 1)"),
    "table8": ("temperature", "figure5_temperatures", "GradNorm against T (Table 8, L1)"),
}
#: the protocol (:func:`gradood.protocols.make_protocol`) of each ID dataset of the tables
PROTOCOLS: dict[str, str] = {
    "ImageNet-1k": "imagenet",
    "CIFAR-10": "cifar10",
    "CIFAR-100": "cifar100",
}
#: the OOD datasets of the ImageNet and CIFAR protocols, and the paper's per-row mean over them
OOD_DATASETS: tuple[str, ...] = (
    "iNaturalist",
    "SUN",
    "Places",
    "Textures",
    "SVHN",
    "LSUN-crop",
    "Places365",
    "Average",
)
METHODS: tuple[str, ...] = ("MSP", "ODIN", "Energy", "Mahalanobis", "GradNorm", "Lee-AlRegib")
#: the paper's printed labels that differ from the canonical names
PAPER_LABELS: dict[str, str] = {
    "MSP [13]": "MSP",
    "ODIN [27]": "ODIN",
    "Energy [29]": "Energy",
    "Mahalanobis [26]": "Mahalanobis",
    "GradNorm (ours)": "GradNorm",
    "Lee and AlRegib [25]": "Lee-AlRegib",
    "LSUN (crop)": "LSUN-crop",
}

_DESCRIPTIONS: dict[str, str] = {
    "table1": (
        "Table 1 (main results): MSP, ODIN, Energy, Mahalanobis and GradNorm (L1, T = 1) on the "
        "ImageNet protocol: ID ImageNet-1k val (50,000 images), OOD iNaturalist, SUN, Places "
        "(10,000 each) and Textures (5,640); model BiT-S-R101x1 fine-tuned on ImageNet-1k, "
        "inputs 480 x 480. Source: the official repository's results figure."
    ),
    "table6": (
        "Table 6 (appendix A): the CIFAR protocol: ID CIFAR-10 and CIFAR-100 test sets, OOD "
        "SVHN test (26,032), LSUN crop (10,000), Places365 (10,000 sampled) and Textures "
        "(5,640); model ResNet-20 trained 100 epochs; MSP, ODIN (T = 1000, eps = 0.004), "
        "Energy, Mahalanobis and GradNorm (L1, T = 1). No checkpoint was published."
    ),
    "table7": (
        "Table 7 (appendix C): GradNorm with the L_p norm of the gradient for p in "
        "{0.3, 0.5, 0.8, 1, 2, 3, 4, 5, 6, inf}, T = 1, on the ImageNet protocol "
        "(BiT-S-R101x1, ImageNet-1k vs iNaturalist, SUN, Places, Textures)."
    ),
    "table8": (
        "Table 8 (appendix D): GradNorm with the temperatures T = 2^-4 ... 2^10, L1 norm, on the "
        "ImageNet protocol (BiT-S-R101x1, ImageNet-1k vs iNaturalist, SUN, Places, Textures)."
    ),
    "table9": (
        "Table 9 (appendix E): Lee & AlRegib (a binary classifier on per-tensor squared L2 "
        "gradient norms, trained with uniform noise as surrogate OOD, 40/40/20 % split) against "
        "GradNorm (L1, T = 1) on the ImageNet protocol (BiT-S-R101x1)."
    ),
}

_LABEL_COLUMNS = ("id_data", "ood_data", "method")
_FILE_COLUMNS = COLUMNS[1:]


def tables() -> list[str]:
    """The names of the transcribed tables."""
    return list(_DESCRIPTIONS)


def describe(name: str) -> str:
    """What table ``name`` is: the experiment, the model and the protocol."""
    return _DESCRIPTIONS[_check_name(name)]


def table(name: str) -> pd.DataFrame:
    """The paper's table ``name`` (see :func:`tables`) in long form, columns :data:`COLUMNS`.

    ``table``, ``id_data``, ``ood_data`` and ``method`` are strings; ``p``, ``temperature``,
    ``FPR95`` and ``AUROC`` are float64 (NaN where not applicable, ``inf`` for L_inf).
    ``frame.attrs["description"]`` holds :func:`describe`'s text. The frame is a fresh copy.
    """
    frame = _load(_check_name(name)).copy()
    frame.attrs["description"] = _DESCRIPTIONS[name]
    return frame


_MEASUREMENT_COLUMNS = ("table", "method", "detector", "tolerance", "varies", "settings")


def _source(filename: str) -> Traversable:
    """A shipped file beside this module."""
    return resources.files(__name__).joinpath(filename)


def _read(filename: str, columns: tuple[str, ...]) -> tuple[pd.DataFrame, str]:
    """A shipped CSV's cells as strings (``#`` lines are comments), and its installed path;
    checked: it can be read, has exactly ``columns`` and at least the rows of ``counts.csv``.

    :raises ValueError: naming the file's installed path and the problem
    """
    source = _source(filename)
    where = str(source)
    try:
        with source.open("r", encoding="utf-8") as handle:
            raw = pd.read_csv(handle, dtype=str, keep_default_na=False, comment="#")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{where}: the file is empty (no header, no rows)") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ValueError(f"{where}: cannot be read ({type(error).__name__}: {error})") from error
    if tuple(raw.columns) != columns:
        raise ValueError(f"{where}: columns {list(raw.columns)}, expected {list(columns)}")
    least = _least_rows().get(filename, 1)
    if len(raw) < least:
        raise ValueError(
            f"{where}: {len(raw)} data rows, fewer than {least}, the rows the paper prints (the "
            "file is cut short; reinstall gradood)"
        )
    return raw, where


@functools.cache
def _least_rows() -> dict[str, int]:
    """``counts.csv``: file name -> the rows it must hold at least."""
    source = _source("counts.csv")
    with source.open("r", encoding="utf-8") as handle:
        counts = pd.read_csv(handle, dtype=str, keep_default_na=False, comment="#")
    try:
        return {row.file: int(row.rows) for row in counts.itertuples(index=False)}
    except (AttributeError, ValueError) as error:
        raise ValueError(f"{source}: expected columns file, rows (integers): {error}") from error


@functools.cache
def _measurement() -> pd.DataFrame:
    return _read("measurement.csv", _MEASUREMENT_COLUMNS)[0]


def measured_as(name: str, method: str) -> dict:
    """How ``method``'s rows of table ``name`` are measured: ``detector`` (its registry name),
    ``tolerance`` (the class's name in :data:`gradood.harness.checks.TOLERANCES`), ``varies``
    (``"p"``, ``"temperature"`` or ``None``: the setting that names the rows) and ``settings``
    (a tuple of the row's columns passed to the detector)."""
    rows = _measurement()
    row = rows[(rows["table"] == _check_name(name)) & (rows["method"] == method)]
    if len(row) != 1:
        raise ValueError(f"measurement.csv: no single entry for {method} of {name}")
    how = {key: row.iloc[0][key] or None for key in ("detector", "tolerance", "varies")}
    return how | {"settings": tuple(row.iloc[0]["settings"].split())}


def _check_name(name: str) -> str:
    if name not in _DESCRIPTIONS:
        raise ValueError(f"unknown table {name!r}; known tables: {', '.join(tables())}")
    return name


@functools.cache
def _load(name: str) -> pd.DataFrame:
    """Read and check one table's CSV: every column, at least the paper's rows, canonical
    labels, numbers where numbers belong, percentages in [0, 100], one row per key."""
    raw, where = _read(f"{name}.csv", _FILE_COLUMNS)
    return _frame(raw, where, name)


def _frame(raw: pd.DataFrame, where: str, name: str) -> pd.DataFrame:
    _check_labels(raw, where)
    frame = pd.DataFrame({"table": name}, index=raw.index)
    for column in _LABEL_COLUMNS:
        frame[column] = raw[column]
    frame["p"] = _floats(raw, "p", where, _is_norm_order, optional=True)
    frame["temperature"] = _floats(raw, "temperature", where, _is_temperature, optional=True)
    for metric in ("FPR95", "AUROC"):
        frame[metric] = _floats(raw, metric, where, _is_percentage, optional=False)
    _check_unique(frame, where)
    return frame


def _check_labels(raw: pd.DataFrame, where: str) -> None:
    allowed = {"id_data": ID_DATASETS, "ood_data": OOD_DATASETS, "method": METHODS}
    for column, names in allowed.items():
        unknown = sorted(set(raw[column]) - set(names))
        if unknown:
            raise ValueError(f"{where}: unknown {column} {unknown}; allowed: {list(names)}")


def _floats(
    raw: pd.DataFrame,
    column: str,
    where: str,
    valid: Callable[[float], bool],
    optional: bool,
) -> pd.Series:
    """Parse one numeric column: an empty cell is NaN where ``optional``, ``inf`` is infinity;
    every other cell must be a number that ``valid`` accepts (a written "nan" is not)."""
    values = []
    for row, cell in enumerate(raw[column], start=1):
        text = cell.strip()
        if text == "" and optional:
            values.append(math.nan)
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isnan(value) or not valid(value):
            raise ValueError(f"{where}: data row {row}, column {column}: invalid value {cell!r}")
        values.append(value)
    return pd.Series(values, index=raw.index, dtype="float64")


def _is_norm_order(p: float) -> bool:
    return p > 0


def _is_temperature(temperature: float) -> bool:
    return 0 < temperature < math.inf


def _is_percentage(value: float) -> bool:
    return 0 <= value <= 100


def _check_unique(frame: pd.DataFrame, where: str) -> None:
    # duplicated() counts NaN as equal to NaN, as a key must here (p of a baseline)
    repeated = frame[
        frame.duplicated(["id_data", "ood_data", "method", "p", "temperature"], keep=False)
    ]
    if not repeated.empty:
        raise ValueError(f"{where}: repeated rows\n{repeated.to_string()}")
