"""The reproduction report ``paper.md``: a document to send to a colleague.

The environment; the plan and each stage's time beside its estimate; which checkpoints were
used; per table, every measured row beside the reported one with the difference, the tolerance
class and the verdict; the Figures 4 and 5 (reported lines, measured points); what was skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from .. import reported
from ..evaluate import METRICS
from ..paper import GRADNORM_PAPER
from .checks import TOLERANCES
from .stages import seconds

__all__ = ["COLUMN_LEGEND", "column_legend", "exact", "markdown_table", "reproduction_report"]

_ROW_COLUMNS = {
    "check": "row",
    "FPR95 reported": "FPR95 paper",
    "FPR95 measured": "FPR95 run",
    "FPR95 difference": "diff",
    "AUROC reported": "AUROC paper",
    "AUROC measured": "AUROC run",
    "AUROC difference": "diff ",
}


def markdown_table(frame: pd.DataFrame, rounded: Iterable[str] = METRICS) -> str:
    """``frame`` as a Markdown table: the ``rounded`` columns (metrics, percent) with two
    decimals, every other number exactly as it is (settings: 0.0625, 1024); NaN empty."""
    rounded = set(rounded)

    def cell(value: object, column: str) -> str:
        if not isinstance(value, float):
            return str(value)
        if math.isnan(value):
            return ""
        if column in rounded and not math.isinf(value):
            return f"{value:.2f}"
        return exact(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join(cell(v, c) for v, c in zip(row, frame.columns, strict=True)) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body]) + "\n"


#: what each column of a benchmark table means (metrics in percent)
COLUMN_LEGEND = {
    "method": "the detector's registry name",
    "p": "the norm p of GradNorm (and of its factors U and V)",
    "temperature": "the softmax temperature T",
    "ood_data": "the OOD set; Average: the mean of the OOD sets' rows",
    "FPR95": "the paper's false positive rate, ID positive: the % of OOD samples taken as ID "
    "at the threshold that keeps 95 % of the ID samples (lower is better)",
    "AUROC": "area under the ROC curve, % (higher is better; 50: chance)",
    "AUPR-IN": "average precision with ID as the positive class, %",
    "AUPR-OUT": "average precision with OOD as the positive class, %",
    "FPR95TPR": "pytorch-ood's metric, OOD positive: the % of ID samples flagged as OOD at the "
    "threshold that flags 95 % of the OOD samples; not the paper's FPR95 (lower is better)",
    "n_id": "the ID samples scored",
    "n_ood": "the OOD samples scored",
}
#: the legend of a setting column without its own line
OTHER_SETTING = "a setting of the detector (see its recipe in gradood.registry)"


def column_legend(columns: Iterable[str]) -> str:
    """A Markdown list that says what each of ``columns`` means (:data:`COLUMN_LEGEND`; other
    columns are the detectors' settings)."""
    lines = [f"- `{c}`: {COLUMN_LEGEND.get(str(c), OTHER_SETTING)}" for c in columns]
    return "Columns:\n\n" + "\n".join(lines) + "\n"


def exact(value: float) -> str:
    """A setting as written: the shortest text that reads back as ``value`` (0.0625, 1024,
    inf)."""
    return "inf" if math.isinf(value) else repr(float(value)).removesuffix(".0")


def reproduction_report(report) -> str:
    """The Markdown of ``report`` (a :class:`gradood.harness.report.Report`)."""
    parts = [
        "# GradNorm reproduction report",
        "",
        f"Huang, Geng, Li: *{GRADNORM_PAPER.title}* ({GRADNORM_PAPER.venue} "
        f"{GRADNORM_PAPER.year}, {GRADNORM_PAPER.url}), measured by gradood.",
        "",
    ]
    parts += _environment(report.environment)
    parts += _plan_and_stages(report)
    parts += _checkpoints(report.checkpoints)
    frame = report.side_by_side()
    frame["tolerance"] = [_tolerance_name(c.check.tolerance) for c in report.comparisons]
    if len(frame):
        parts += _tables(frame)
        parts += _figures(frame)
        parts += _tolerances(report.comparisons)
    parts += _skipped(report)
    return "\n".join(parts).rstrip() + "\n"


def _environment(environment: dict[str, str]) -> list[str]:
    if not environment:
        return []
    rows = [f"| {what} | {value} |" for what, value in environment.items()]
    return ["## Environment", "", "| | |", "|---|---|", *rows, ""]


def _plan_and_stages(report) -> list[str]:
    parts = []
    if report.plan:
        parts += ["## Plan", "", "```", *report.plan, "```", ""]
    stages = list(report.stages.by_name.values())
    if not stages:
        return parts
    scaled = any(s.paper_images and s.paper_images != s.images for s in stages)
    head = "| stage | images | estimate | actual |"
    head += " paper's images | actual scaled to them |" if scaled else ""
    parts += ["## Stage times", "", head, "|---" * head.count(" | ") + "|---|"]
    for stage in stages:
        estimate = seconds(stage.estimate) + (f" ({stage.note})" if stage.note else "")
        actual = "not run" if stage.actual is None else seconds(stage.actual)
        row = f"| {stage.name} | {stage.images:,} | {estimate} | {actual} |"
        if scaled:
            row += f" {stage.paper_images:,} | {seconds(stage.at_paper_size)} |"
        parts.append(row)
    total = [seconds(report.stages.total(w)) for w in ("estimate", "actual", "at_paper_size")]
    last = f" | {total[2]} |" if scaled else ""
    parts += [f"| total | | {total[0]} | {total[1]} |{last}".replace("||", "| |"), ""]
    if scaled:
        parts += [
            "The last column scales each stage's time by the paper's image count (and its "
            "100 training epochs) over this run's: the full run's price, as far as the time "
            "grows with the images.",
            "",
        ]
    parts += [
        "The estimate counts the models' computation only (images / images per second of a "
        "timed probe); decoding, the feature cache and the detectors' fits come on top.",
        "",
    ]
    return parts


def _checkpoints(checkpoints: dict[str, str]) -> list[str]:
    if not checkpoints:
        return []
    return ["## Checkpoints", "", *(f"- {p}: {what}" for p, what in checkpoints.items()), ""]


def _tolerance_name(tolerance) -> str:
    name = next((n for n, t in TOLERANCES.items() if t == tolerance), "custom")
    return f"{name} (±{tolerance.fpr95:g} / ±{tolerance.auroc:g})"


def _tables(frame: pd.DataFrame) -> list[str]:
    parts = []
    for table, rows in frame.groupby("table", sort=False):
        within = int(rows["within tolerance"].sum())
        parts += [
            f"## {table.replace('table', 'Table ')}",
            "",
            reported.describe(table),
            "",
            f"{len(rows)} rows measured, {within} within tolerance.",
            "",
        ]
        shown = rows[list(_ROW_COLUMNS)].rename(columns=_ROW_COLUMNS)
        shown["row"] = shown["row"].str.removeprefix(f"{table}[").str.removesuffix("]")
        shown["tolerance"] = rows["tolerance"]
        shown["verdict"] = rows["within tolerance"].map({True: "within", False: "**outside**"})
        parts += [markdown_table(shown, rounded=_ROW_COLUMNS.values()), ""]
    return [*parts, _ROW_LEGEND, ""] if parts else parts


_ROW_LEGEND = (
    "Columns: `row`: the printed row (its OOD set, method and setting); `FPR95 paper`, "
    "`AUROC paper`: as printed, %; `FPR95 run`, `AUROC run`: this run's; `diff`: run minus "
    "paper, in points; `tolerance`: the class and its bounds (± FPR95 / ± AUROC points); "
    "`verdict`: whether both differences are within them."
)


def _figures(frame: pd.DataFrame) -> list[str]:
    parts = []
    for table, (_column, figure, title) in reported.SWEEPS.items():
        if (frame["table"] == table).any():
            parts += [f"![{title}: the paper's lines, this run's points]({figure}.png)", ""]
    return (["## Figures 4 and 5", "", *parts]) if parts else []


def _tolerances(comparisons) -> list[str]:
    used = dict.fromkeys(_tolerance_name(c.check.tolerance) for c in comparisons)
    reasons = {_tolerance_name(c.check.tolerance): c.check.tolerance.reason for c in comparisons}
    return ["## Tolerance classes", "", *(f"- {name}: {reasons[name]}" for name in used), ""]


def _skipped(report) -> list[str]:
    if not report.unavailable:
        return []
    lines = [f"- {protocol}: {why}" for protocol, why in report.unavailable.items()]
    return ["## Not measured", "", *lines, "", "What is missing: missing-data.md.", ""]
