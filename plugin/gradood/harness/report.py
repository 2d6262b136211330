"""The harness's side-by-side report: reported and measured numbers, as text, Markdown, CSV and
plots like the paper's Figures 4 (metrics against the norm p) and 5 (against the temperature T),
the speed verdicts, and what was missing for the checks that were skipped.
"""

from __future__ import annotations

import math
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from .. import reported
from ..files import atomic_write, atomic_write_text
from . import report_records as records
from .checks import Comparison, PaperCheck
from .document import column_legend, exact, markdown_table, reproduction_report
from .stages import Stages
from .timing import SpeedCheck

__all__ = ["MISSING_DATA", "SPEED_FILE", "Report", "ReportNotWritten", "reason"]

#: the report's file of what the skipped checks need
MISSING_DATA = "missing-data.md"
#: the report's file of every speed verdict (the summary may list fewer)
SPEED_FILE = "speed.txt"


class ReportNotWritten(OSError):
    """Some of a report's files could not be written: ``failed`` maps their names to why."""

    def __init__(self, directory: Path, failed: dict[str, OSError]):
        self.directory = directory
        self.failed = failed
        causes = dict.fromkeys(reason(error) for error in failed.values())
        super().__init__(f"{', '.join(failed)} not written ({'; '.join(causes)})")


def reason(error: OSError) -> str:
    """What the operating system said, without the file name (e.g. "No space left on device")."""
    return os.strerror(error.errno) if error.errno else str(error)


class _Files:
    """Writes files, each atomically, and records which were written and which failed."""

    def __init__(self) -> None:
        self.written: list[Path] = []
        self.failed: dict[str, OSError] = {}

    def write(self, path: Path, write: Callable[[Path], Path]) -> None:
        try:
            self.written.append(write(path))
        except OSError as error:
            self.failed[path.name] = error

    def text(self, path: Path, text: str) -> None:
        self.write(path, lambda where: atomic_write_text(where, text))


@dataclass(repr=False)
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
    #: section (``"speed"``) -> how the run treats its verdicts where a miss does not fail
    #: (one line; the summary shows it where a verdict is missed or inconclusive)
    policies: dict[str, str] = field(default_factory=dict)
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
    #: protocol -> table of :func:`gradood.evaluate` of what its paper checks measured (every
    #: detector and setting, GradNorm's factors beside GradNorm); the summary says why a paper
    #: detector falls below 50 % AUROC there, the report has the tables and figures
    measured: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: file name -> text of another file of the report (e.g. ``data-provenance.md``)
    texts: dict[str, str] = field(default_factory=dict)
    #: paper checks that raised, with the error in one line (:func:`~.failures.one_line`)
    errored: list[tuple[PaperCheck, str]] = field(default_factory=list)
    #: protocol -> the ids of the paper checks the run selected (to count those not reached)
    planned: dict[str, list[str]] = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line: how much of each part the report holds (a test's traceback shows it)."""
        parts = {
            "comparison": len(self.comparisons),
            "table": len(self.tables) + len(self.measured),
            "speed check": len(self.speed),
            "skipped check": len(self.skipped),
            "missing input": len(self.missing),
        }
        counted = ", ".join(
            f"{count} {name}{'s' if count > 1 else ''}" for name, count in parts.items() if count
        )
        return f"Report({counted or 'empty'})"

    def is_empty(self) -> bool:
        """Whether the run added nothing to report (no report folder, no summary then)."""
        shown = (self.comparisons, self.tables, self.speed, self.skipped, self.plan, self.texts)
        return not any(shown) and not self.errored

    def add_error(self, check: PaperCheck, error: BaseException) -> None:
        """Record that ``check`` raised ``error``; the first error of its protocol goes into
        ``missing-data.md`` in full (where it was raised, its traceback)."""
        from .failures import current_test, one_line

        self.errored.append((check, one_line(error)))
        where = current_test() or check.id
        trace = "".join(traceback.format_exception(error)).rstrip()
        details = f"- {where} raised it first:\n\n```text\n{trace}\n```"
        self.missing.setdefault(f"{check.protocol} error", details)

    def add_measured(self, protocol: str, table: pd.DataFrame, defaults: dict) -> None:
        """Add ``table`` (one measurement group) to ``protocol``'s measured table; ``defaults``:
        method -> the paper's settings of it (see :attr:`defaults`)."""
        previous = self.measured.get(protocol)
        self.measured[protocol] = (
            table if previous is None else pd.concat([previous, table], ignore_index=True)
        )
        self.defaults.setdefault(protocol, {}).update(defaults)

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
        figures into ``directory`` (created; files are written atomically). A file that cannot
        be written does not stop the others.

        :raises ReportNotWritten: naming the files not written and why, after the others
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = _Files()
        if self.missing:
            files.text(directory / MISSING_DATA, self.missing_markdown())
        for name, text in self.texts.items():
            files.text(directory / name, text)
        if self.speed:
            files.text(directory / SPEED_FILE, "".join(c.line() + "\n" for c in self.speed))
        self._write_records(directory, files)
        frame = self.side_by_side()
        if len(frame):
            files.text(directory / "paper.csv", frame.to_csv(index=False))
        if len(frame) or self.plan:
            files.text(directory / "paper.md", reproduction_report(self))
        tables = self._all_tables()
        for name, table in tables.items():
            stem = _file_stem(name)
            files.text(directory / f"{stem}.csv", table.to_csv(index=False))
            shown = _percent(table)
            legend = column_legend(shown.columns)
            files.text(directory / f"{stem}.md", f"{markdown_table(shown)}\n{legend}")
        defaults = {**self.defaults, **{_measured(p): self.defaults.get(p) for p in self.measured}}
        _figures(frame, tables, defaults, directory, files)
        if files.failed:
            raise ReportNotWritten(directory, files.failed)
        return files.written

    def _write_records(self, directory: Path, files: _Files) -> None:
        """The machine-readable records (:mod:`gradood.harness.report_records`)."""
        frames = {
            records.ENVIRONMENT: records.environment_frame(self.environment),
            records.SPEED: records.speed_frame(self.speed),
        }
        for name, frame in frames.items():
            if len(frame):
                files.text(directory / name, frame.to_csv(index=False))

    def _all_tables(self) -> dict[str, pd.DataFrame]:
        """The benchmark tables, and each protocol's measured table."""
        return {**self.tables, **{_measured(p): table for p, table in self.measured.items()}}

    def missing_markdown(self) -> str:
        """What the skipped paper checks need, and the first error of each protocol whose checks
        raised, as Markdown."""
        parts = ["# What this run's skipped and failed paper checks need", ""]
        for what, details in self.missing.items():
            parts += [f"## {what}", "", details.rstrip(), ""]
        return "\n".join(parts)


def _measured(protocol: str) -> str:
    """The report's name of what ``protocol``'s paper checks measured."""
    return f"{protocol} measured"


def _percent(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.drop(columns=[c for c in ("settings",) if c in table.columns]).copy()
    for metric in ("FPR95", "AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR"):
        if metric in shown.columns:
            shown[metric] = (100 * shown[metric]).round(2)
    return shown


def _file_stem(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).strip("-").lower()


# -- figures ---------------------------------------------------------------------------------

#: chance level of each metric (a score that ignores the input): AUROC 50 %, and FPR95 95 %
#: (at 95 % ID recall, 95 % of the OOD samples pass)
CHANCE = {"FPR95": 95.0, "AUROC": 50.0}
_REFERENCE = "reference"  # the gid of reference lines, labelled beside the panel, not in legends
_REFERENCE_STYLE = {"ls": "--", "lw": 1, "color": "0.45", "gid": _REFERENCE}
_CHANCE_STYLE = {"ls": ":", "lw": 1.5, "color": "0.25", "gid": _REFERENCE}


def _figures(
    comparisons: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    defaults: dict[str, dict],
    directory: Path,
    files: _Files,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    for name, (column, figure, title) in reported.SWEEPS.items():
        measured = comparisons[comparisons["table"] == name] if len(comparisons) else comparisons
        if len(measured):  # the paper's lines alone would say nothing about this run
            paper = reported.table(name)
            draw = partial(_sweep_figure, paper, measured, column, title=title)
            files.write(directory / f"{figure}.png", draw)
    for name, table in tables.items():
        for column in ("p", "temperature"):
            sweep = _gradnorm_sweep(table, column)
            if sweep is not None:
                references = _other_averages(table, defaults.get(name))
                title = f"{name}: GradNorm and its factors against {_axis_name(column)}"
                draw = partial(_measured_figure, sweep, references, column, title=title)
                files.write(directory / f"{_file_stem(name)}_{column}.png", draw)


def _other_averages(table: pd.DataFrame, shown: dict | None) -> pd.DataFrame:
    """The ``Average`` rows of the methods but GradNorm and its factors (of ``shown``'s, where
    given: the table's detectors of note), one per method and settings."""
    rows = table[(table["ood_data"] == "Average") & ~_is_gradnorm(table)]
    if shown:
        rows = rows[rows["method"].isin(list(shown))]
    return rows.drop_duplicates(subset=["method", "settings"] if "settings" in rows else "method")


def _is_gradnorm(table: pd.DataFrame) -> pd.Series:
    """GradNorm and its factors (``gradnorm-u``, ``gradnorm-v``)."""
    return table["method"].str.lower().str.startswith("gradnorm")


def _axis_name(column: str) -> str:
    return "p" if column == "p" else "T"


def _axis_values(values: pd.Series) -> tuple[list[int], list[str]]:
    """Positions and labels for p (``inf`` drawn one step past the largest finite p)."""
    finite = sorted(v for v in values.unique() if not math.isinf(v))
    labels = [exact(v) for v in finite]
    if any(math.isinf(v) for v in values):
        labels.append("inf")
    return list(range(len(labels))), labels


def _position(value: float, labels: list[str]) -> int:
    return labels.index("inf" if math.isinf(value) else exact(value))


def _sweep_figure(
    paper: pd.DataFrame, measured: pd.DataFrame, column: str, path: Path, title: str
) -> Path:
    import matplotlib.pyplot as plt

    positions, labels = _axis_values(paper[column])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.6))
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
        _reference_lines(axis, None, metric)
        _decorate(axis, positions, labels, column, metric)
    _legend_below(figure, axes[0])
    figure.suptitle(title)
    return _save(figure, path)


def _gradnorm_sweep(table: pd.DataFrame, column: str) -> pd.DataFrame | None:
    """GradNorm's (and its factors') rows of ``table`` that vary ``column`` with the other
    setting fixed."""
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
    """One row of panels per method of ``rows`` (GradNorm, then its factors), its metrics
    against ``column`` per OOD set; the chance level, and each of ``references``' Average (the
    other detectors) as a grey dashed line labelled beside the panel."""
    import matplotlib.pyplot as plt

    positions, labels = _axis_values(rows[column])
    methods = list(dict.fromkeys(rows["method"]))
    figure, axes = plt.subplots(
        len(methods), 2, figsize=(12, 0.6 + 3.2 * len(methods)), squeeze=False
    )
    for panels, method in zip(axes, methods, strict=True):
        for axis, metric in zip(panels, ("FPR95", "AUROC"), strict=True):
            _plot_sweep(axis, rows[rows["method"] == method], column, labels, metric)
            _reference_lines(axis, references, metric)
            _decorate(axis, positions, labels, column, metric)
            axis.set_title(_method_title(method), fontsize=9)
    _legend_below(figure, axes[-1][0])
    figure.suptitle(title)
    return _save(figure, path)


_FACTOR_TITLES = {
    "gradnorm": "GradNorm = U V",
    "gradnorm-u": "gradnorm-u: U = ||h||_p (features; T does not change it)",
    "gradnorm-v": "gradnorm-v: V = ||(C softmax(z/T) - 1) / T||_p (outputs)",
}


def _method_title(method: str) -> str:
    return _FACTOR_TITLES.get(method, method)


def _plot_sweep(axis, rows: pd.DataFrame, column: str, labels: list[str], metric: str) -> None:
    """``metric`` against ``column`` per OOD set of ``rows``; the Average thick and black."""
    sets = [ood for ood in dict.fromkeys(rows["ood_data"]) if ood != "Average"]
    for ood in [*sets, "Average"]:
        part = rows[rows["ood_data"] == ood].sort_values(column)
        if not len(part):
            continue
        x = [_position(v, labels) for v in part[column]]
        style = (
            {"lw": 2.5, "color": "black"}
            if ood == "Average"
            else {"lw": 1.0, "color": f"C{sets.index(ood)}"}
        )
        axis.plot(x, 100 * part[metric], "o-", ms=3.5, label=ood, **style)


def _reference_lines(axis, references: pd.DataFrame | None, metric: str) -> None:
    """The chance level and each reference's Average, labelled at the panel's right edge
    (labels pushed apart so that they do not overlap)."""
    from matplotlib.transforms import blended_transform_factory

    references = references if references is not None else pd.DataFrame(columns=["method"])
    axis.axhline(CHANCE[metric], label="chance", **_CHANCE_STYLE)
    for row in references.itertuples(index=False):
        axis.axhline(
            100 * getattr(row, metric), label=f"{row.method} (Average)", **_REFERENCE_STYLE
        )
    marks = [(CHANCE[metric], "chance")] + [
        (100 * getattr(row, metric), row.method) for row in references.itertuples(index=False)
    ]
    where = blended_transform_factory(axis.transAxes, axis.transData)
    for y, text in zip(_spread([y for y, _ in marks], gap=5.5), [t for _, t in marks], strict=True):
        axis.text(1.01, y, text, transform=where, fontsize=7, va="center", color="0.3")


def _spread(values: list[float], gap: float) -> list[float]:
    """Label heights near ``values``, at least ``gap`` apart: labels that would overlap are
    stacked around their mean, so each stays beside its line."""
    clusters = [[i] for i in sorted(range(len(values)), key=lambda i: values[i])]

    def bottom(cluster: list[int]) -> float:
        mean = sum(values[i] for i in cluster) / len(cluster)
        return mean - gap * (len(cluster) - 1) / 2

    merged = True
    while merged:
        merged = False
        for index in range(len(clusters) - 1):
            lower, upper = clusters[index], clusters[index + 1]
            if bottom(lower) + gap * len(lower) > bottom(upper):
                clusters[index : index + 2] = [lower + upper]
                merged = True
                break
    placed = list(values)
    for cluster in clusters:
        for rank, i in enumerate(cluster):
            placed[i] = bottom(cluster) + gap * rank
    return placed


def _legend_below(figure, axis) -> None:
    """The legend of ``axis``'s data series below the panels, outside every data area (the
    saved image grows to hold it); one column per OOD set where runs and the paper pair."""
    from matplotlib.lines import Line2D

    handles, labels = axis.get_legend_handles_labels()
    series = [
        (handle, label)
        for handle, label in zip(handles, labels, strict=True)
        if handle.get_gid() != _REFERENCE
    ]
    series.append((Line2D([], [], **_CHANCE_STYLE), "chance"))
    if sum(handle.get_gid() == _REFERENCE for handle in handles) > 1:  # beyond chance
        series.append((Line2D([], [], **_REFERENCE_STYLE), "other detectors (Average)"))
    paired = any(label.endswith("(run)") for _, label in series)
    figure.legend(
        [handle for handle, _ in series],
        [label for _, label in series],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=math.ceil(len(series) / 2) if paired else len(series),
        fontsize=8,
        frameon=False,
    )


def _decorate(axis, positions: list[int], labels: list[str], column: str, metric: str) -> None:
    axis.set_xticks(positions, labels, rotation=45 if column == "temperature" else 0)
    axis.set_xlabel(_axis_name(column))
    axis.set_ylabel(f"{metric} (%)")
    axis.set_ylim(-3, 103)
    axis.grid(alpha=0.3)


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        figure.tight_layout()
        return atomic_write(
            path, lambda file: figure.savefig(file, format="png", dpi=110, bbox_inches="tight")
        )
    finally:
        plt.close(figure)
