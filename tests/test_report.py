"""The run report: side-by-side table, Markdown, CSV and figures, written atomically."""

from __future__ import annotations

import pandas as pd
import pytest

from gradood.checks import Comparison, paper_checks
from gradood.report import Report


def _report() -> Report:
    checks = [c for c in paper_checks(["table7"]) if c.ood_data in ("SUN", "Average")]
    comparisons = [
        Comparison(check, check.fpr95 + 0.05 * i, check.auroc - 0.5 * (i % 2))
        for i, check in enumerate(checks)
    ]
    table = pd.DataFrame(
        {
            "method": ["gradnorm"] * 6,
            "settings": [f"p={p}" for p in (0.5, 1, 2)] * 2,
            "p": [0.5, 1.0, 2.0] * 2,
            "temperature": [1.0] * 6,
            "ood_data": ["noise"] * 3 + ["Average"] * 3,
            "FPR95": [0.5, 0.25, 0.75] * 2,
            "AUROC": [0.9, 0.95, 0.8] * 2,
        }
    )
    return Report(comparisons=comparisons, tables={"toy benchmark": table})


def test_side_by_side_and_summary_lines():
    report = _report()
    frame = report.side_by_side()
    assert len(frame) == len(report.comparisons) == 20
    assert frame["FPR95 measured"].tolist() == [c.fpr95 for c in report.comparisons]
    within = sum(c.within_tolerance for c in report.comparisons)
    assert 0 < within < 20
    text = "\n".join(report.lines())
    assert f"({within} of 20 within tolerance" in text
    assert "toy benchmark:" in text and "table7[SUN-L0.5]" in text


def test_writes_tables_and_figures(tmp_path):
    report = _report()
    written = report.write(tmp_path / "run")
    names = {path.name for path in written}
    assert names == {
        "paper.csv",
        "paper.md",
        "toy-benchmark.csv",
        "toy-benchmark.md",
        "figure4_norms.png",
        "figure5_temperatures.png",
        "toy-benchmark_p.png",
    }
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(names)  # no temp files
    csv = pd.read_csv(tmp_path / "run" / "paper.csv")
    assert csv["FPR95 measured"].tolist() == pytest.approx([c.fpr95 for c in report.comparisons])
    markdown = (tmp_path / "run" / "toy-benchmark.md").read_text().splitlines()
    assert markdown[0].startswith("| method | p | temperature | ood_data | FPR95 | AUROC |")
    assert "| gradnorm | 0.50 | 1.00 | noise | 50.00 | 90.00 |" in markdown
    for figure in ("figure4_norms.png", "figure5_temperatures.png", "toy-benchmark_p.png"):
        data = (tmp_path / "run" / figure).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_paper_figures_without_measurements(tmp_path):
    written = Report().write(tmp_path)
    assert {p.name for p in written} == {"figure4_norms.png", "figure5_temperatures.png"}
