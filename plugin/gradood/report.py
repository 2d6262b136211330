"""The harness's side-by-side report: reported and measured numbers, as text, Markdown, CSV and
plots like the paper's Figures 4 (metrics against the norm p) and 5 (against the temperature T).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import reported
from .checks import Comparison
from .files import atomic_write, atomic_write_text

__all__ = ["Report"]

_SIDE_BY_SIDE = [
    "check",
    "FPR95 reported",
    "FPR95 measured",
    "FPR95 difference",
    "AUROC reported",
    "AUROC measured",
    "AUROC difference",
    "within tolerance",
]


@dataclass
class Report:
    """What one run measured: paper comparisons and tables of other benchmarks."""

    comparisons: list[Comparison] = field(default_factory=list)
    #: name -> table of :func:`gradood.evaluate` (fractions), e.g. the bundled benchmark
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def side_by_side(self) -> pd.DataFrame:
        """One row per compared check, in the order measured (metrics in percent)."""
        rows = [comparison.as_row() for comparison in self.comparisons]
        return pd.DataFrame(rows, columns=list(Comparison.columns()))

    def lines(self) -> list[str]:
        """The terminal summary: each benchmark table, then the paper comparisons."""
        lines = []
        for name, table in self.tables.items():
            lines += [f"{name}:", *_percent(table).to_string(index=False).splitlines(), ""]
        if self.comparisons:
            frame = self.side_by_side()[_SIDE_BY_SIDE]
            within = int(frame["within tolerance"].sum())
            lines += [
                f"the paper's numbers beside this run's ({within} of {len(frame)} within "
                "tolerance; FPR95 and AUROC in %):",
                *frame.to_string(index=False, float_format="{:.2f}".format).splitlines(),
            ]
        return lines

    def write(self, directory: str | os.PathLike) -> list[Path]:
        """Write ``paper.csv`` / ``paper.md``, a CSV and Markdown file per table, and the
        figures into ``directory`` (created; files are written atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        frame = self.side_by_side()
        if len(frame):
            written += [
                atomic_write_text(directory / "paper.csv", frame.to_csv(index=False)),
                atomic_write_text(directory / "paper.md", _markdown(frame[_SIDE_BY_SIDE])),
            ]
        for name, table in self.tables.items():
            stem = _file_stem(name)
            written += [
                atomic_write_text(directory / f"{stem}.csv", table.to_csv(index=False)),
                atomic_write_text(directory / f"{stem}.md", _markdown(_percent(table))),
            ]
        written += _figures(frame, self.tables, directory)
        return written


def _percent(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.drop(columns=[c for c in ("settings",) if c in table.columns]).copy()
    for metric in ("FPR95", "AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR"):
        if metric in shown.columns:
            shown[metric] = (100 * shown[metric]).round(2)
    return shown


def _markdown(frame: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "inf" if math.isinf(value) else ("" if math.isnan(value) else f"{value:.2f}")
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _file_stem(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).strip("-").lower()


# -- figures ---------------------------------------------------------------------------------


def _figures(
    comparisons: pd.DataFrame, tables: dict[str, pd.DataFrame], directory: Path
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    written = [
        _sweep_figure(
            reported.table(name),
            comparisons[comparisons["table"] == name] if len(comparisons) else comparisons,
            column,
            directory / f"{figure}.png",
            title,
        )
        for name, column, figure, title in (
            ("table7", "p", "figure4_norms", "GradNorm against the norm p (Table 7, T = 1)"),
            ("table8", "temperature", "figure5_temperatures", "GradNorm against T (Table 8, L1)"),
        )
    ]
    for name, table in tables.items():
        for column in ("p", "temperature"):
            sweep = _gradnorm_sweep(table, column)
            if sweep is not None:
                path = directory / f"{_file_stem(name)}_{column}.png"
                written.append(_measured_figure(sweep, column, path, f"{name}: GradNorm"))
    return written


def _axis_values(values: pd.Series) -> tuple[list[int], list[str]]:
    """Positions and labels for p (``inf`` drawn one step past the largest finite p)."""
    finite = sorted(v for v in values.unique() if not math.isinf(v))
    labels = [f"{v:g}" for v in finite]
    if any(math.isinf(v) for v in values):
        labels.append("inf")
    return list(range(len(labels))), labels


def _position(value: float, labels: list[str]) -> int:
    return labels.index("inf" if math.isinf(value) else f"{value:g}")


def _sweep_figure(
    paper: pd.DataFrame, measured: pd.DataFrame, column: str, path: Path, title: str
) -> Path:
    import matplotlib.pyplot as plt

    positions, labels = _axis_values(paper[column])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, ("FPR95", "AUROC"), strict=True):
        for index, (ood, rows) in enumerate(paper.groupby("ood_data", sort=False)):
            color = f"C{index}"
            x = [_position(v, labels) for v in rows[column]]
            axis.plot(x, rows[metric], "-", color=color, label=f"{ood} (paper)")
            if len(measured):
                mine = measured[measured["ood_data"] == ood]
                if len(mine):
                    x = [_position(v, labels) for v in mine[column]]
                    axis.plot(x, mine[f"{metric} measured"], "o", color=color, label=f"{ood} (run)")
        _decorate(axis, positions, labels, column, metric)
    axes[1].legend(fontsize=7, ncol=2)
    figure.suptitle(title)
    return _save(figure, path)


def _gradnorm_sweep(table: pd.DataFrame, column: str) -> pd.DataFrame | None:
    """GradNorm rows of ``table`` that vary ``column`` with the other setting fixed."""
    if column not in table.columns or "method" not in table.columns:
        return None
    rows = table[table["method"].str.lower().str.startswith("gradnorm")]
    other = "temperature" if column == "p" else "p"
    if other in rows.columns:
        rows = rows[rows[other] == 1.0]  # the paper's default of the other setting
    if rows[column].nunique() < 3:
        return None
    return rows


def _measured_figure(rows: pd.DataFrame, column: str, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    positions, labels = _axis_values(rows[column])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, ("FPR95", "AUROC"), strict=True):
        for index, (ood, part) in enumerate(rows.groupby("ood_data", sort=False)):
            part = part.sort_values(column)
            x = [_position(v, labels) for v in part[column]]
            axis.plot(x, 100 * part[metric], "o-", color=f"C{index}", label=ood)
        _decorate(axis, positions, labels, column, metric)
    axes[1].legend(fontsize=7)
    figure.suptitle(title)
    return _save(figure, path)


def _decorate(axis, positions: list[int], labels: list[str], column: str, metric: str) -> None:
    axis.set_xticks(positions, labels, rotation=45 if column == "temperature" else 0)
    axis.set_xlabel("p" if column == "p" else "T")
    axis.set_ylabel(f"{metric} (%)")
    axis.grid(alpha=0.3)


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        figure.tight_layout()
        return atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=110))
    finally:
        plt.close(figure)
