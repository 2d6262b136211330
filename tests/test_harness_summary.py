"""The run's closing summary: short, narrow, sorted, and saying what was and was not measured."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gradood.harness.checks import Comparison, paper_checks
from gradood.harness.report import Report
from gradood.harness.summary import MAX_LINES, MAX_WIDTH, summary_lines
from gradood.harness.timing import PairedRatio, SpeedCheck, Target


def _table() -> pd.DataFrame:
    rows = []
    for method, p, auroc in [("msp", None, 0.7), ("energy", None, 0.6), ("knn", None, 0.9)]:
        rows += [
            {
                "method": method,
                "settings": "",
                "p": p,
                "ood_data": ood,
                "FPR95": 0.5,
                "AUROC": auroc,
            }
            for ood in ("near", "far", "Average")
        ]
    for p, auroc in [(1.0, 0.65), (0.5, 0.8), (2.0, 0.3)]:
        rows += [
            {"method": "gradnorm", "settings": f"p={p}", "p": p, "ood_data": ood, "FPR95": 0.4}
            | {"AUROC": auroc}
            for ood in ("near", "far", "Average")
        ]
    return pd.DataFrame(rows)


def _report() -> Report:
    report = Report(tables={"toy": _table()}, captions={"toy": "a toy model"})
    report.defaults["toy"] = {"gradnorm": {"p": 1.0}}
    report.speed.append(
        SpeedCheck("resnet18 32px b64", "GradNorm / MSP", PairedRatio((1.0,) * 5), Target(0.95))
    )
    table7 = paper_checks(["table7"])
    report.comparisons = [Comparison(c, c.fpr95 + 0.05, c.auroc) for c in table7[:10]]
    report.comparisons.append(Comparison(table7[10], table7[10].fpr95, table7[10].auroc - 1.0))
    report.skipped = [
        (check, f"{check.protocol}: 5 datasets missing (...)") for check in paper_checks(["table6"])
    ]
    for protocol in ("cifar10", "cifar100"):
        report.add_missing(protocol, "data", "5 datasets missing", "- not found")
    return report


def test_short_narrow_and_complete():
    lines = summary_lines(_report(), Path("reports/run"))
    assert len(lines) <= MAX_LINES and max(map(len, lines)) <= MAX_WIDTH
    text = "\n".join(lines)
    order = [
        next(i for i, line in enumerate(lines) if line.strip().startswith(m))
        for m in ("knn", "msp", "gradnorm", "energy")
    ]
    assert order == sorted(order)  # by AUROC, GradNorm at its default setting (AUROC 65 %)
    assert "gradnorm p=1" in text and "best of 3: p=0.5 (40.00 / 80.00)" in text
    assert "toy: a toy model" in text and "Average over 2 OOD sets (near, far)" in text
    assert "GradNorm / MSP" in text and "met" in text
    assert lines[-1] == "report: reports/run"


def test_a_long_table_lists_the_best_and_gradnorm_and_counts_the_rest():
    report = _report()
    table = report.tables["toy"]
    extra = pd.DataFrame(
        {"method": f"d{i}", "settings": "", "p": None, "ood_data": ood, "FPR95": 0.1}
        | {"AUROC": 0.95 + i / 1000}
        for i in range(30)
        for ood in ("near", "far", "Average")
    )
    report.tables["toy"] = pd.concat([table, extra], ignore_index=True)
    lines = summary_lines(report, Path("reports/run"))
    assert len(lines) <= MAX_LINES
    text = "\n".join(lines)
    assert "d29" in text and "gradnorm p=1" in text and "knn" not in text
    assert "... 24 more detectors in the report's table" in text  # 34 = 9 best + gradnorm + 24


def test_paper_lines_count_rows_and_name_the_worst():
    text = "\n".join(summary_lines(_report(), Path("reports/run")))
    assert "imagenet  11 of 11 rows run, 10 within tolerance\n" in text
    assert f"worst: {_report().comparisons[10].check.id} AUROC -1.00 (tol 0.1)" in text
    rows = sum(check.protocol == "cifar100" for check in paper_checks(["table6"]))
    expected = f"cifar100  0 of {rows} rows run: 5 datasets missing"
    assert f"{expected} (details: reports/run/missing-data.md)" in text


def test_without_a_folder_nothing_points_to_one():
    lines = summary_lines(_report(), None)
    assert not any("report:" in line or "details:" in line for line in lines)
