"""The run's closing summary: at most 40 lines of at most 100 columns.

- each benchmark table: one line per detector (its Average over the OOD sets), sorted by AUROC;
  a detector with several settings shows its default (e.g. GradNorm's paper setting) and its best
  setting by AUROC; the paper's detectors always, the best others as the line budget allows; then,
  computed from the table, why a paper detector falls below 50 % AUROC (its factors' AUROC on its
  worst OOD set, :data:`gradood.registry.FACTORS <gradood.registry.gradood_recipes.FACTORS>`);
- speed: each side-by-side ratio with its target and verdict;
- the paper's checks: one line per protocol (how many rows ran, within tolerance, the worst
  deviation; how many were skipped, raised or never reached, and why: the skip's reason, the
  first error in one line), and the same why-lines on the protocol's data;
- where the report folder is.

A line too wide is shortened at a word, never inside a word or a path.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..evaluate import AVERAGE, METRICS
from ..registry import FACTORS
from .report import MISSING_DATA, SPEED_FILE, Report
from .stages import seconds
from .timing import INCONCLUSIVE, MISSED

__all__ = ["MAX_LINES", "MAX_WIDTH", "below_chance_lines", "shown_path", "summary_lines"]

#: the most lines of the summary (:func:`summary_lines`)
MAX_LINES = 40
#: the widest line of the summary, in characters (a longer line is cut at a space)
MAX_WIDTH = 100
_NAME_WIDTH = 30
#: detectors listed per table, by AUROC: those with a default setting (the paper's) and the best
#: of the others up to this count (fewer where the summary would pass MAX_LINES); the rest are
#: counted
_TABLE_ROWS = 10
#: speed checks listed at least, where the summary would pass MAX_LINES (all are in speed.txt)
_FEWEST_SPEED_ROWS = 6
_UNSETTLED = {MISSED, INCONCLUSIVE}


def summary_lines(report: Report, folder: Path | None) -> list[str]:
    """The summary of ``report``, whose files are (or would be) in ``folder``: at most
    :data:`MAX_LINES` lines (the tables list fewer of their other detectors where needed), more
    only where more speed checks were missed or inconclusive than fit (each is listed)."""
    rest = []
    if _has_paper_rows(report):
        rest += _paper_lines(report, folder)
    rest += _stage_lines(report)
    # the folder's line is never shortened: a path cut at its first space would be lost
    last = [f"report: {shown_path(folder)}"] if folder is not None else []
    if report.speed:
        fewest_tables = sum(len(_table_lines(n, t, report, 0)) for n, t in report.tables.items())
        rest = _speed_lines(report, MAX_LINES - fewest_tables - len(rest) - len(last)) + rest
    rows = _TABLE_ROWS
    while True:
        tables = []
        for name, table in report.tables.items():
            tables += _table_lines(name, table, report, rows)
        if len(tables) + len(rest) + len(last) <= MAX_LINES or rows == 0:
            return [_fit(line) for line in tables + rest] + last
        rows -= 1


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _fit(line: str, width: int = MAX_WIDTH) -> str:
    """``line`` cut to ``width`` columns at a space, ending in ``...``; never inside a word or
    a path (a line without such a space stays whole)."""
    if len(line) <= width:
        return line
    cut = line.rfind(" ", 0, width - 2)
    return line if cut <= len(line) - len(line.lstrip()) else line[:cut].rstrip(" ,;:") + "..."


def _settings_label(settings: dict[str, float]) -> str:
    return " ".join(f"{'T' if k == 'temperature' else k}={v:g}" for k, v in settings.items())


@dataclass(frozen=True)
class _Row:
    label: str
    fpr95: float
    auroc: float
    note: str
    pinned: bool


def _table_lines(name: str, table: pd.DataFrame, report: Report, count: int) -> list[str]:
    """The table's Average rows by AUROC: the detectors of ``report.defaults`` (at their
    settings) and the best others up to ``count`` rows; then why the defaults fall below 50 %
    AUROC."""
    defaults = report.defaults.get(name) or {}
    averages = table[table["ood_data"] == AVERAGE]
    ood_sets = [o for o in dict.fromkeys(table["ood_data"]) if o != AVERAGE]
    rows = [
        _method_row(str(method), group, defaults.get(method), method in defaults)
        for method, group in averages.groupby("method", sort=False)
    ]
    rows.sort(key=lambda row: -row.auroc)
    pinned = [row for row in rows if row.pinned]
    shown = sorted(
        pinned + [row for row in rows if not row.pinned][: max(0, count - len(pinned))],
        key=lambda r: -r.auroc,
    )
    caption = report.captions.get(name)
    head = f"{name}" + (f": {caption}" if caption else "")
    sets = f"OOD: {', '.join(ood_sets)}"
    lines = [f"{head}; {sets}"] if len(f"{head}; {sets}") <= MAX_WIDTH else [head, f"  {sets}"]
    more = f"; {len(rows) - len(shown)} more in the report" if len(shown) < len(rows) else ""
    average = f"Average of {len(ood_sets)} OOD sets"
    lines.append(f"  {average:<{_NAME_WIDTH}} {'FPR95 %':>8} {'AUROC %':>8}  by AUROC{more}")
    shown = _merge_identical(shown)
    for row, (fpr95, auroc) in zip(shown, _distinct_figures(shown), strict=True):
        lines.append(f"  {row.label:<{_NAME_WIDTH}} {fpr95:>8} {auroc:>8}{row.note}")
    return [*lines, *below_chance_lines(table, defaults), ""]


def _merge_identical(rows: list[_Row]) -> list[_Row]:
    """Rows of identical metrics as one, named ``a = b`` (e.g. two names of one score)."""
    merged: list[_Row] = []
    for row in rows:
        twin = next((m for m in merged if (m.fpr95, m.auroc) == (row.fpr95, row.auroc)), None)
        if twin is None:
            merged.append(row)
        else:
            label = f"{twin.label} = {row.label}"
            merged[merged.index(twin)] = replace(twin, label=label, note=twin.note or row.note)
    return merged


def _distinct_figures(rows: list[_Row]) -> list[tuple[str, str]]:
    """FPR95 and AUROC of each row with 2 decimals, more (up to 4) where another row with
    other metrics would print the same figures."""

    def printed(row: _Row, decimals: int) -> tuple[str, str]:
        return f"{row.fpr95:.{decimals}f}", f"{row.auroc:.{decimals}f}"

    def ambiguous(row: _Row, decimals: int) -> bool:
        return any(
            printed(other, decimals) == printed(row, decimals)
            and (other.fpr95, other.auroc) != (row.fpr95, row.auroc)
            for other in rows
        )

    return [printed(row, next((d for d in (2, 3) if not ambiguous(row, d)), 4)) for row in rows]


def _setting_columns(group: pd.DataFrame) -> list[str]:
    """The setting columns (see :func:`gradood.evaluate`) that ``group`` uses."""
    reserved = {"method", "settings", "ood_data", "n_id", "n_ood", *METRICS}
    return [c for c in group.columns if c not in reserved and group[c].notna().any()]


def _at(group: pd.DataFrame, settings: dict[str, float] | None) -> pd.DataFrame:
    """The rows of ``group`` at ``settings`` (all rows if none are given)."""
    for column, value in (settings or {}).items():
        if column in group.columns:
            group = group[group[column] == value]
    return group


def _method_row(
    method: str, group: pd.DataFrame, default: dict[str, float] | None, pinned: bool
) -> _Row:
    """One method's Average rows: at its ``default`` settings, and its best AUROC (the
    table's order) where it has several."""
    if len(group) == 1:
        row = group.iloc[0]
        return _Row(method, 100 * row["FPR95"], 100 * row["AUROC"], "", pinned)
    columns = _setting_columns(group)
    shown = _at(group, default)
    shown_row = shown.iloc[0] if len(shown) else group.iloc[0]
    best = group.loc[group["AUROC"].idxmax()]

    def settings_of(row: pd.Series) -> dict[str, float]:
        return {c: float(row[c]) for c in columns if not _missing(row[c])}

    label = f"{method} {_settings_label(settings_of(shown_row))}"
    note = (
        f" best AUROC of {len(group)}: {_settings_label(settings_of(best))} "
        f"({100 * best['FPR95']:.2f} / {100 * best['AUROC']:.2f})"
    )
    return _Row(label, 100 * shown_row["FPR95"], 100 * shown_row["AUROC"], note, pinned)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- why a detector falls below chance -------------------------------------------------------


def below_chance_lines(
    table: pd.DataFrame, defaults: dict[str, dict], indent: str = "  "
) -> list[str]:
    """Why the detectors of ``defaults`` (at those settings) rank an OOD set of ``table`` as more
    in-distribution than the ID data (AUROC < 50 %), from the table's own numbers: a detector with
    registered factors (:data:`gradood.registry.FACTORS <gradood.registry.gradood_recipes.FACTORS>`,
    e.g. GradNorm = U V) gets one line with its factors' AUROC on its worst set; the others share
    one line per set, beside the first factor (U, the feature norm) at its default settings."""
    per_set = table[table["ood_data"] != AVERAGE]
    factor_names = {f for factors in FACTORS.values() for f in factors}
    lines, unfactored = [], {}
    for method, settings in defaults.items():
        if method in factor_names:
            continue
        rows = _at(per_set[per_set["method"] == method], settings)
        below = rows[rows["AUROC"] < 0.5].sort_values("AUROC")
        if not len(below):
            continue
        factors = FACTORS.get(method, {})
        if factors and all(len(_at(per_set[per_set["method"] == f], settings)) for f in factors):
            lines.append(indent + _factor_line(method, below, per_set, settings, factors))
        else:
            first = below.iloc[0]
            unfactored.setdefault(first["ood_data"], []).append((method, first["AUROC"]))
    for ood, detectors in unfactored.items():
        lines.append(indent + _shared_line(ood, detectors, per_set, defaults))
    return lines


def _auroc(per_set: pd.DataFrame, method: str, settings: dict, ood: str) -> float | None:
    rows = _at(per_set[(per_set["method"] == method) & (per_set["ood_data"] == ood)], settings)
    return float(rows["AUROC"].iloc[0]) if len(rows) else None


def _factor_line(
    method: str, below: pd.DataFrame, per_set: pd.DataFrame, settings: dict, factors: dict
) -> str:
    """E.g. ``gradnorm AUROC 0.10 % on Uniform noise: U (feature norm) 0.00 %, V (output
    norm) 48.34 %``, on the set of the lowest AUROC."""
    worst = below.iloc[0]
    named = [
        f"{label} {100 * _auroc(per_set, factor, settings, worst['ood_data']):.2f} %"
        for factor, label in factors.items()
    ]
    return f"{method} AUROC {100 * worst['AUROC']:.2f} % on {worst['ood_data']}: {', '.join(named)}"


def _shared_line(
    ood: str, detectors: list[tuple[str, float]], per_set: pd.DataFrame, defaults: dict
) -> str:
    """E.g. ``odin 2.76 %, energy 4.50 % AUROC on Uniform noise: U (feature norm) there
    0.00 %``."""
    named = ", ".join(f"{method} {100 * auroc:.2f} %" for method, auroc in detectors)
    line = f"{named} AUROC on {ood}"
    for method, factors in FACTORS.items():
        factor, label = next(iter(factors.items()))
        auroc = _auroc(per_set, factor, defaults.get(factor, defaults.get(method, {})), ood)
        if auroc is not None:
            line += f": {label} there {100 * auroc:.2f} %"
    return line


def _speed_lines(report: Report, budget: int) -> list[str]:
    """The speed verdicts in at most ``budget`` lines where they fit (a header, the policy, the
    checks and their notes): else every missed or inconclusive check (past the budget where
    they are more), then the others in their order, as many as fit (at least
    :data:`_FEWEST_SPEED_ROWS` checks in all), and a line counting the rest (all are in
    ``speed.txt``)."""
    verdicts = Counter(check.verdict for check in report.speed)
    counts = ", ".join(f"{n} {verdict}" for verdict, n in verdicts.items())
    head = [f"speed, side by side: {counts} (median [IQR] of paired rounds)"]
    policy = report.policies.get("speed")
    if policy and verdicts.keys() & _UNSETTLED:
        head.append(f"  {policy}")
    unsettled = sum(verdicts[verdict] for verdict in _UNSETTLED)
    fewest = max(unsettled, min(len(report.speed), _FEWEST_SPEED_ROWS))
    count = len(report.speed)
    while count > fewest and len(head) + len(_speed_rows(report.speed, count)) + 1 > budget:
        count -= 1
    return [*head, *_speed_rows(report.speed, count), ""]


def _speed_rows(checks: list, count: int) -> list[str]:
    """``count`` of ``checks`` (those not met or reported first), their notes, and a line
    counting the checks left out."""
    ranked = sorted(range(len(checks)), key=lambda i: checks[i].verdict not in _UNSETTLED)
    kept = sorted(ranked[:count])
    shown = [checks[i] for i in kept]
    rows = ["  " + check.line() for check in shown]
    left = Counter(checks[i].verdict for i in ranked[count:])
    if left:
        counted = ", ".join(f"{n} {verdict}" for verdict, n in left.items())
        rows.append(f"  ... {sum(left.values())} more ({counted}): {SPEED_FILE}")
    notes = dict.fromkeys(check.note for check in shown if check.note)
    return rows + [f"  note: {note}" for note in notes]


def _paper_lines(report: Report, folder: Path | None) -> list[str]:
    protocols = dict.fromkeys(
        [*report.planned]
        + [c.check.protocol for c in report.comparisons]
        + [c.protocol for c, _ in report.skipped + report.errored]
    )
    lines = ["the paper's checks:"]
    needs_details: list[int] = []  # the lines that get where the missing data is described
    for protocol in protocols:
        compared = [c for c in report.comparisons if c.check.protocol == protocol]
        line, explained = _protocol_line(report, protocol)
        if explained and report.missing and folder:
            needs_details.append(len(lines))
        lines.append(line)
        lines += _outcome_lines(report, protocol)
        if compared:
            lines.append(f"            worst: {_deviation(max(compared, key=_excess))}")
        if protocol in report.measured:
            defaults = report.defaults.get(protocol, {})
            lines += below_chance_lines(report.measured[protocol], defaults, " " * 12)
    if needs_details:
        _add_details(lines, needs_details, folder)
    return [*lines, ""]


def _has_paper_rows(report: Report) -> bool:
    return bool(report.comparisons or report.skipped or report.errored or report.planned)


@dataclass(frozen=True)
class _Outcome:
    """Rows of a protocol that did not run: how many, why in words (the first error's line for
    the rows that raised)."""

    count: int
    kind: str
    reason: str | None


def _outcomes(report: Report, protocol: str) -> list[_Outcome]:
    """The protocol's rows that were skipped, raised, or were never reached (selected, with no
    outcome: the run stopped first, or their setup failed)."""
    skipped = [reason for check, reason in report.skipped if check.protocol == protocol]
    raised = [reason for check, reason in report.errored if check.protocol == protocol]
    done = {c.check.id for c in report.comparisons}
    done |= {check.id for check, _ in report.skipped + report.errored}
    unreached = [i for i in report.planned.get(protocol, []) if i not in done]
    outcomes = []
    if skipped:
        reason = report.unavailable.get(protocol) or Counter(skipped).most_common(1)[0][0]
        outcomes.append(_Outcome(len(skipped), "skipped", reason))
    if raised:
        outcomes.append(_Outcome(len(raised), "raised", raised[0]))
    if unreached:
        outcomes.append(_Outcome(len(unreached), "not reached", None))
    return outcomes


def _protocol_line(report: Report, protocol: str) -> tuple[str, bool]:
    """E.g. ``cifar10   3 of 25 rows run, 3 within tolerance; 20 skipped, 2 raised``, and
    whether the report details why; where every row that did not run was skipped, the reason
    is said on the line instead of the counts."""
    compared = [c for c in report.comparisons if c.check.protocol == protocol]
    outcomes = _outcomes(report, protocol)
    total = len(compared) + sum(o.count for o in outcomes)
    line = f"  {protocol:<9} {len(compared)} of {total} {'row' if total == 1 else 'rows'} run"
    if compared:
        line += f", {sum(c.within_tolerance for c in compared)} within tolerance"
    if not outcomes:
        return line, False
    separator = "; " if compared else ": "
    if _skipped_only(outcomes):
        return f"{line}{separator}{outcomes[0].reason}", True
    counts = ", ".join(f"{o.count} {o.kind}" for o in outcomes)
    return f"{line}{separator}{counts}", any(o.reason for o in outcomes)


def _skipped_only(outcomes: list[_Outcome]) -> bool:
    return [o.kind for o in outcomes] == ["skipped"]


def _outcome_lines(report: Report, protocol: str) -> list[str]:
    """Under a protocol's line that counts kinds of rows that did not run: why the rows were
    skipped, and the first error, one line each."""
    outcomes = _outcomes(report, protocol)
    if _skipped_only(outcomes):
        return []
    lines = []
    for outcome in outcomes:
        if outcome.kind == "skipped":
            lines.append(f"{'':12}skipped: {outcome.reason}")
        elif outcome.kind == "raised":  # the paths are in the report's details
            lines += _wrapped(f"first error: {_file_names(outcome.reason)}", " " * 12)
    return lines


#: an absolute path or a URL: its folders, then the file name
_PATH = re.compile(r"(?:(?<![\w:/.])|\b[a-z]+://)/?(?:[^\s'\"/]+/)+([^\s'\"/]+)")


def _file_names(text: str) -> str:
    """``text`` with each absolute path and URL shortened to its last part (the file's
    name)."""
    return _PATH.sub(lambda match: match.group(1), text)


def _wrapped(text: str, indent: str, most: int = 2) -> list[str]:
    """``text`` in at most ``most`` lines of :data:`MAX_WIDTH` (at spaces), each after
    ``indent``; the last shortened where the text is longer."""
    lines, words = [], text.split(" ")
    while words and len(lines) < most - 1:
        line = indent + words.pop(0)
        while words and len(line) + 1 + len(words[0]) <= MAX_WIDTH:
            line += " " + words.pop(0)
        lines.append(line)
    if words:
        lines.append(_fit(indent + " ".join(words)))
    return lines


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


def _add_details(lines: list[str], indices: list[int], folder: Path) -> None:
    """Append to ``lines[i]`` (each of ``indices``) where the missing data is described: the
    file's path, or on every line its name where the path would make one too wide (the last line
    of the summary names the report's folder); a line's words are shortened where even that is
    too wide, never the name."""
    hint = f" (details: {shown_path(folder / MISSING_DATA)})"
    if any(len(lines[i] + hint) > MAX_WIDTH for i in indices):
        hint = f" (details: {MISSING_DATA})"
    for i in indices:
        lines[i] = _fit(lines[i], MAX_WIDTH - len(hint)) + hint


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
