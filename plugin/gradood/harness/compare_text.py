"""The text of ``gradood compare``: the runs' environments, each compared table and the speed
verdicts side by side, then the verdict (:func:`comparison_lines`)."""

from __future__ import annotations

import math

from .compare import SWAPS, Comparison, RowVerdict, SpeedRow, label
from .environment import TIMED_ON
from .timing import _figure  # as the summary prints ratios: never contradicting the verdict

__all__ = ["comparison_lines"]

#: the metrics shown per row (every metric is compared; one beyond tolerance is named)
SHOWN_METRICS = ("FPR95", "AUROC")


def _aligned(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """``rows`` (the first a header) as columns padded to their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _runs(comparison: Comparison) -> list[str]:
    lines = [f"gradood compare: {len(comparison.runs)} runs"]
    for index, run in enumerate(comparison.runs, start=1):
        lines.append(f"  [{index}] {label(run)}  ({run.folder})")
    return lines


def _tags(comparison: Comparison) -> list[str]:
    return [f"[{i}]" for i in range(1, len(comparison.runs) + 1)]


def _environments(comparison: Comparison) -> list[str]:
    runs = comparison.runs
    facts = list(dict.fromkeys(what for run in runs for what in run.environment))
    if not facts:
        return ["environment: not recorded (no environment.csv in any run)"]
    rows = [["", *_tags(comparison), ""]]
    for what in facts:
        values = [run.environment.get(what, "(not recorded)") for run in runs]
        rows.append([what, *values, "" if len(set(values)) == 1 else "<- differs"])
    return ["environment", *_aligned(rows)]


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _difference(row: RowVerdict, metric: str) -> str:
    """E.g. ``0.14/0.70``: the largest difference beside the tolerance, in percent."""
    difference = row.difference(metric)
    shown = "-" if difference is None else f"{100 * difference:.2g}"
    return f"{shown}/{100 * row.tolerance[metric]:.2g}"


def _table(comparison: Comparison, name: str) -> list[str]:
    rows = [row for row in comparison.rows if row.table == name]
    metrics = [m for m in SHOWN_METRICS if m in rows[0].values]
    tags = _tags(comparison)
    groups, header = ["", "", ""], ["method", "settings", "ood_data"]
    for metric in metrics:
        groups += [metric] + [""] * len(tags)
        header += [*tags, "diff/tol"]
    cells = [[*groups, ""], [*header, "verdict"]]
    for row in rows:
        line = [row.key.get("method", ""), row.key.get("settings", ""), row.key.get("ood_data", "")]
        for metric in metrics:
            line += [_percent(value) for value in row.values[metric]]
            line.append(_difference(row, metric))
        cells.append([*line, row.verdict])
    differing = sum(1 for row in rows if row.problems)
    return [
        f"{name}: {len(rows)} rows, {len(rows) - differing} same, {differing} differ",
        f"  percent; diff: the largest difference between the runs; tol: what {SWAPS} swapped",
        "  pairs of nearly tied ID/OOD scores can change on the row's test sets (n_id, n_ood);",
        f"  every metric is compared, {' and '.join(metrics)} shown",
        *_aligned(cells),
    ]


def _speed_cell(row: dict[str, str] | None) -> str:
    """E.g. ``0.97 [0.95-0.99] met``."""
    if row is None:
        return "-"
    bound = float(row["bound"]) if row["bound"] else None
    figures = [_figure(float(row[c]), bound) for c in ("median", "iqr_low", "iqr_high")]
    spread = "" if figures[1] == figures[2] else f" [{figures[1]}-{figures[2]}]"
    return f"{figures[0]}{spread} {row['verdict']}"


def _target(rows: list[dict[str, str] | None]) -> str:
    shown = {f"{row['target']} {float(row['bound']):g}" for row in rows if row and row["target"]}
    return " / ".join(sorted(shown)) or "-"


def _speed(comparison: Comparison) -> list[str]:
    if not comparison.speed:
        return ["speed: not recorded (no speed.csv in any run)"]
    timed = ", ".join(
        f"[{i}] {run.environment.get(TIMED_ON, '(not recorded)')}"
        for i, run in enumerate(comparison.runs, start=1)
    )
    cells = [["what", "setting", "target", *_tags(comparison)]]
    for row in comparison.speed:
        cells.append([row.what, row.setting, _target(row.runs), *map(_speed_cell, row.runs)])
    return [
        f"speed: median ratio [interquartile range of the rounds] and verdict; timed on {timed}",
        "  for information: a difference fails the comparison only as a target met in one run",
        "  and missed in another on the same GPU",
        *_aligned(cells),
    ]


def _flips(rows: list[SpeedRow]) -> list[str]:
    """Speed verdicts that changed between runs without failing the comparison."""
    flipped = [
        f"    {row.what} {row.setting}"
        for row in rows
        if not row.problem and len({r["verdict"] for r in row.runs if r is not None}) > 1
    ]
    return ["  verdicts that differ between the runs (not a failure):", *flipped] if flipped else []


def _verdict(comparison: Comparison) -> list[str]:
    failures = comparison.failures()
    if not failures:
        tables = len({row.table for row in comparison.rows})
        return [
            f"gradood compare: same: {len(comparison.rows)} rows of {tables} table(s) within "
            f"tolerance; speed shown for information"
        ]
    return [
        f"gradood compare: DIFFERS: {len(failures)} beyond tolerance",
        *(f"  {failure}" for failure in failures),
    ]


def comparison_lines(comparison: Comparison) -> list[str]:
    """The whole text of ``gradood compare`` for ``comparison``, line by line."""
    lines = [*_runs(comparison), "", *_environments(comparison), ""]
    for name in dict.fromkeys(row.table for row in comparison.rows):
        lines += [*_table(comparison, name), ""]
    lines += [*_speed(comparison), *_flips(comparison.speed), "", *_verdict(comparison)]
    return lines
