"""The harness's side-by-side report: reported and measured numbers, as text, Markdown, CSV and
plots like the paper's Figures 4 (metrics against the norm p) and 5 (against the temperature T),
the speed verdicts, and what was missing for the checks that were skipped.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import reported
from ..files import atomic_write, atomic_write_text
from .checks import Comparison, PaperCheck
from .document import markdown_table, reproduction_report
from .stages import Stages
from .timing import SpeedCheck

__all__ = ["MISSING_DATA", "Report"]

#: the report's file of what the skipped checks need
MISSING_DATA = "missing-data.md"


@dataclass
class Report:
    """What one run measured: paper comparisons, tables of other benchmarks, speed verdicts,
    and the paper checks that could not run, with why."""

    comparisons: list[Comparison] = field(default_factory=list)
    #: name -> table of :func:`gradood.evaluate` (fractions), e.g. the bundled benchmark
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: name -> one line about the table (model, accuracy, data)
    captions: dict[str, str] = field(default_factory=dict)
    #: name -> {method: the settings the summary shows for it (e.g. the paper's)}
    defaults: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    speed: list[SpeedCheck] = field(default_factory=list)
    #: paper checks that were skipped, with the one-line reason
    skipped: list[tuple[PaperCheck, str]] = field(default_factory=list)
    #: what is missing (e.g. ``"imagenet data"``) -> Markdown with paths, counts and sources
    missing: dict[str, str] = field(default_factory=dict)
    #: protocol -> why (some of) its checks could not run, in a few words
    unavailable: dict[str, str] = field(default_factory=dict)
    #: the plan printed before the first measurement (lines), if any
    plan: list[str] = field(default_factory=list)
    #: the stages' estimated and actual times
    stages: Stages = field(default_factory=Stages)
    #: protocol -> which checkpoint its model came from (recipe, origin, path)
    checkpoints: dict[str, str] = field(default_factory=dict)
    #: where the run ran (device, versions, commit), for ``paper.md``
    environment: dict[str, str] = field(default_factory=dict)

    def add_missing(self, protocol: str, what: str, reason: str, details: str) -> None:
        """Record that ``protocol`` lacks ``what``: ``reason`` in a few words (the summary's),
        ``details`` in Markdown (the report's ``missing-data.md``)."""
        self.unavailable.setdefault(protocol, reason)
        self.missing[f"{protocol} {what}"] = details

    def side_by_side(self) -> pd.DataFrame:
        """One row per compared check, in the order measured (metrics in percent)."""
        rows = [comparison.as_row() for comparison in self.comparisons]
        return pd.DataFrame(rows, columns=list(Comparison.columns()))

    def write(self, directory: str | os.PathLike) -> list[Path]:
        """Write ``paper.csv`` / ``paper.md``, a CSV and Markdown file per table, and the
        figures into ``directory`` (created; files are written atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        if self.missing:
            written.append(atomic_write_text(directory / MISSING_DATA, self.missing_markdown()))
        if self.speed:
            lines = [check.line() for check in self.speed]
            written.append(atomic_write_text(directory / "speed.txt", "\n".join(lines) + "\n"))
        frame = self.side_by_side()
        if len(frame):
            written.append(atomic_write_text(directory / "paper.csv", frame.to_csv(index=False)))
        if len(frame) or self.plan:
            written.append(atomic_write_text(directory / "paper.md", reproduction_report(self)))
        for name, table in self.tables.items():
            stem = _file_stem(name)
            written += [
                atomic_write_text(directory / f"{stem}.csv", table.to_csv(index=False)),
                atomic_write_text(directory / f"{stem}.md", markdown_table(_percent(table))),
            ]
        written += _figures(frame, self.tables, self.defaults, directory)
        return written

    def missing_markdown(self) -> str:
        """What the skipped paper checks need, as Markdown."""
        parts = ["# What this run's skipped paper checks need", ""]
        for what, details in self.missing.items():
            parts += [f"## {what}", "", details.rstrip(), ""]
        return "\n".join(parts)


def _percent(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.drop(columns=[c for c in ("settings",) if c in table.columns]).copy()
    for metric in ("FPR95", "AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR"):
        if metric in shown.columns:
            shown[metric] = (100 * shown[metric]).round(2)
    return shown


def _file_stem(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).strip("-").lower()


# -- figures ---------------------------------------------------------------------------------


def _figures(
    comparisons: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    defaults: dict[str, dict],
    directory: Path,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for name, (column, figure, title) in reported.SWEEPS.items():
        measured = comparisons[comparisons["table"] == name] if len(comparisons) else comparisons
        if len(measured):  # the paper's lines alone would say nothing about this run
            path = directory / f"{figure}.png"
            written.append(_sweep_figure(reported.table(name), measured, column, path, title))
    for name, table in tables.items():
        for column in ("p", "temperature"):
            sweep = _gradnorm_sweep(table, column)
            if sweep is not None:
                path = directory / f"{_file_stem(name)}_{column}.png"
                references = _other_averages(table, defaults.get(name))
                title = f"{name}: GradNorm"
                written.append(_measured_figure(sweep, references, column, path, title))
    return written


def _other_averages(table: pd.DataFrame, shown: dict | None) -> pd.DataFrame:
    """The ``Average`` rows of the methods but GradNorm (of ``shown``'s, where given: the
    table's detectors of note), one per method and settings."""
    rows = table[(table["ood_data"] == "Average") & ~_is_gradnorm(table)]
    if shown:
        rows = rows[rows["method"].isin(list(shown))]
    return rows.drop_duplicates(subset=["method", "settings"] if "settings" in rows else "method")


def _is_gradnorm(table: pd.DataFrame) -> pd.Series:
    return table["method"].str.lower().str.startswith("gradnorm")


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
    rows = table[_is_gradnorm(table)]
    other = "temperature" if column == "p" else "p"
    if other in rows.columns:
        rows = rows[rows[other] == 1.0]  # the paper's default of the other setting
    if rows[column].nunique() < 3:
        return None
    return rows


def _measured_figure(
    rows: pd.DataFrame, references: pd.DataFrame, column: str, path: Path, title: str
) -> Path:
    """GradNorm's metrics against ``column`` per OOD set, and each of ``references``' Average
    (the other detectors) as a dashed horizontal line."""
    import matplotlib.pyplot as plt

    positions, labels = _axis_values(rows[column])
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, metric in zip(axes, ("FPR95", "AUROC"), strict=True):
        for index, (ood, part) in enumerate(rows.groupby("ood_data", sort=False)):
            part = part.sort_values(column)
            x = [_position(v, labels) for v in part[column]]
            width = 2.5 if ood == "Average" else 1.0
            axis.plot(x, 100 * part[metric], "o-", lw=width, color=f"C{index}", label=ood)
        for index, row in enumerate(references.itertuples(index=False)):
            value = 100 * getattr(row, metric)
            color = plt.get_cmap("Dark2")(index % 8)
            axis.axhline(value, ls="--", lw=1, color=color, label=f"{row.method} (Average)")
        _decorate(axis, positions, labels, column, metric)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
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
