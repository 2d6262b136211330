"""The run's closing summary: at most 40 lines of at most 100 columns.

- each benchmark table: one line per detector (its Average over the OOD sets), sorted by AUROC;
  a detector with several settings shows its default (e.g. GradNorm's paper setting) and its
  best setting;
- speed: each side-by-side ratio with its target and verdict;
- the paper's checks: one line per protocol (how many rows ran, within tolerance, the worst
  deviation, or why they did not run);
- where the report folder is.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd

from ..evaluate import AVERAGE, METRICS
from .report import MISSING_DATA, Report
from .stages import seconds

__all__ = ["MAX_LINES", "MAX_WIDTH", "shown_path", "summary_lines"]

MAX_LINES = 40
MAX_WIDTH = 100
_NAME_WIDTH = 34
#: detectors listed per table, by AUROC: those with a default setting (the paper's) and the best
#: of the others up to this count; the rest are counted
_TABLE_ROWS = 10


def summary_lines(report: Report, folder: Path | None) -> list[str]:
    """The summary of ``report``, whose files are (or would be) in ``folder``."""
    lines = []
    for name, table in report.tables.items():
        lines += _table_lines(name, table, report.captions.get(name), report.defaults.get(name))
    if report.speed:
        lines += _speed_lines(report)
    if report.comparisons or report.skipped:
        lines += _paper_lines(report, folder)
    lines += _stage_lines(report)
    if folder is not None:
        lines.append(f"report: {shown_path(folder)}")
    return [line[:MAX_WIDTH] for line in lines]


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _settings_label(settings: dict[str, float]) -> str:
    return " ".join(f"{'T' if k == 'temperature' else k}={v:g}" for k, v in settings.items())


def _table_lines(
    name: str, table: pd.DataFrame, caption: str | None, defaults: dict | None
) -> list[str]:
    averages = table[table["ood_data"] == AVERAGE]
    ood_sets = [o for o in dict.fromkeys(table["ood_data"]) if o != AVERAGE]
    rows = []
    for method, group in averages.groupby("method", sort=False):
        pinned = method in (defaults or {})
        rows.append((*_method_row(str(method), group, (defaults or {}).get(method)), pinned))
    rows.sort(key=lambda row: -row[2])
    pinned = [row for row in rows if row[4]]
    others = [row for row in rows if not row[4]][: max(0, _TABLE_ROWS - len(pinned))]
    shown = sorted(pinned + others, key=lambda row: -row[2])
    head = f"{name}" + (f": {caption}" if caption else "")
    lines = [head, f"  Average over {len(ood_sets)} OOD sets ({', '.join(ood_sets)})"]
    lines.append(f"  {'detector':<{_NAME_WIDTH}} {'FPR95 %':>8} {'AUROC %':>8}")
    for label, fpr95, auroc, extra, _pinned in shown:
        lines.append(f"  {label:<{_NAME_WIDTH}} {fpr95:8.2f} {auroc:8.2f}{extra}")
    if len(shown) < len(rows):
        lines.append(f"  ... {len(rows) - len(shown)} more detectors in the report's table")
    return [*lines, ""]


def _setting_columns(group: pd.DataFrame) -> list[str]:
    """The setting columns (see :func:`gradood.evaluate`) that ``group`` uses."""
    reserved = {"method", "settings", "ood_data", "n_id", "n_ood", *METRICS}
    return [c for c in group.columns if c not in reserved and group[c].notna().any()]


def _method_row(
    method: str, group: pd.DataFrame, default: dict[str, float] | None
) -> tuple[str, float, float, str]:
    """(label, FPR95 %, AUROC %, best-setting note) of one method's Average rows."""
    if len(group) == 1:
        row = group.iloc[0]
        return method, 100 * row["FPR95"], 100 * row["AUROC"], ""
    columns = _setting_columns(group)
    shown = group
    for column, value in (default or {}).items():
        shown = shown[shown[column] == value]
    shown_row = shown.iloc[0] if len(shown) else group.iloc[0]
    best = group.loc[group["AUROC"].idxmax()]

    def settings_of(row: pd.Series) -> dict[str, float]:
        return {c: float(row[c]) for c in columns if not _missing(row[c])}

    label = f"{method} {_settings_label(settings_of(shown_row))}"
    note = (
        f"  best of {len(group)}: {_settings_label(settings_of(best))} "
        f"({100 * best['FPR95']:.2f} / {100 * best['AUROC']:.2f})"
    )
    return label, 100 * shown_row["FPR95"], 100 * shown_row["AUROC"], note


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _speed_lines(report: Report) -> list[str]:
    verdicts = Counter(check.verdict for check in report.speed)
    counts = ", ".join(f"{n} {verdict}" for verdict, n in verdicts.items())
    lines = [
        f"speed, side by side: {counts} (median [IQR] of paired rounds)",
        *("  " + check.line() for check in report.speed),
    ]
    notes = dict.fromkeys(check.note for check in report.speed if check.note)
    lines += [f"  note: {note}" for note in notes]
    return [*lines, ""]


def _paper_lines(report: Report, folder: Path | None) -> list[str]:
    protocols = dict.fromkeys(
        [c.check.protocol for c in report.comparisons] + [c.protocol for c, _ in report.skipped]
    )
    lines = ["the paper's checks:"]
    for protocol in protocols:
        compared = [c for c in report.comparisons if c.check.protocol == protocol]
        skipped = [reason for check, reason in report.skipped if check.protocol == protocol]
        total = len(compared) + len(skipped)
        line = f"  {protocol:<9} {len(compared)} of {total} rows run"
        if compared:
            within = sum(c.within_tolerance for c in compared)
            line += f", {within} within tolerance"
        if skipped:
            reason = report.unavailable.get(protocol) or Counter(skipped).most_common(1)[0][0]
            line += f"; {reason}" if compared else f": {reason}"
            if report.missing and folder is not None:
                line += _details(line, folder)
        lines.append(line)
        if compared:
            lines.append(f"            worst: {_deviation(max(compared, key=_excess))}")
    return [*lines, ""]


def _stage_lines(report: Report) -> list[str]:
    """The stages that ran, actual time (estimate), in at most two lines; the rest is in
    ``paper.md``."""
    ran = report.stages.ran()
    if not ran:
        return []
    total = report.stages.total("actual")
    head = f"stages: {seconds(total)} (estimate {seconds(report.stages.total('estimate'))}): "
    parts = [f"{s.name} {seconds(s.actual)} ({seconds(s.estimate)})" for s in ran]
    lines, line = [], head
    for part in parts:
        if len(line) + len(part) + 2 > MAX_WIDTH and line.strip():
            lines.append(line.rstrip(", "))
            line = "  "
        line += part + ", "
    lines.append(line.rstrip(", "))
    if len(lines) > 2:
        lines = [*lines[:1], "  ... each stage's time in paper.md"]
    return [*lines, ""]


def _details(line: str, folder: Path) -> str:
    """Where the missing data is described: the file's path, or its name where the path would
    make ``line`` too wide (the last line of the summary names the folder)."""
    hint = f" (details: {shown_path(folder / MISSING_DATA)})"
    return hint if len(line + hint) <= MAX_WIDTH else f" (details: {MISSING_DATA} in the report)"


def _excess(comparison) -> float:
    """How many tolerances the farther metric of ``comparison`` is off."""
    return max(_deviations(comparison).values(), key=lambda d: d[1])[1]


def _deviations(comparison) -> dict[str, tuple[float, float, float]]:
    """metric -> (difference, difference in tolerances, tolerance)."""
    tolerance = comparison.check.tolerance
    differences = {
        "FPR95": (comparison.fpr95_difference, tolerance.fpr95),
        "AUROC": (comparison.auroc_difference, tolerance.auroc),
    }
    return {m: (d, abs(d) / t, t) for m, (d, t) in differences.items()}


def _deviation(comparison) -> str:
    metric, (difference, _, tolerance) = max(
        _deviations(comparison).items(), key=lambda item: item[1][1]
    )
    return f"{comparison.check.id} {metric} {difference:+.2f} (tol {tolerance:g})"
