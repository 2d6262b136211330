"""The reproduction report ``paper.md``, the stage times and their lines in the summary."""

from __future__ import annotations

import re

import pytest

from gradood.harness.checks import Comparison, paper_checks
from gradood.harness.document import reproduction_report
from gradood.harness.report import Report
from gradood.harness.stages import Stage, Stages, seconds
from gradood.harness.summary import MAX_WIDTH, summary_lines


def _report() -> Report:
    checks = [c for c in paper_checks(["table6", "table7"]) if c.ood_data == "SVHN" or c.p == 1]
    # alternately within and outside the tolerance, by construction
    comparisons = [
        Comparison(c, c.fpr95 + (0.0 if i % 2 else 3 * c.tolerance.fpr95), c.auroc)
        for i, c in enumerate(checks)
    ]
    stages = Stages()
    stages.plan(Stage("cifar10 train", 200, 4.0, paper_images=5_000_000))
    stages.plan(Stage("cifar10 forward", 40, 1.0, paper_images=61_672))
    stages.plan(Stage("imagenet forward", 10, note="no probe: ImportError: timm"))
    stages.by_name["cifar10 train"].actual = 5.0
    stages.by_name["cifar10 forward"].actual = 2.0
    return Report(
        comparisons=comparisons,
        plan=["gradood plan: 3 paper rows on the CPU", "  cifar10 ..."],
        stages=stages,
        checkpoints={"cifar10": "ResNet-20, shortened schedule (2 epochs, not the paper's 100)"},
        environment={"device": "CPU x", "torch": "2.x", "commit": "abc123"},
        unavailable={"imagenet": "5 datasets missing"},
    )


def _rows(document: str, table: str) -> dict[str, list[str]]:
    section = document.split(f"## Table {table}\n")[1].split("\n## ")[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows[1:]}


def test_every_row_beside_the_paper_with_its_tolerance_class_and_verdict(tmp_path):
    report = _report()
    report.write(tmp_path)
    document = (tmp_path / "paper.md").read_text()
    for heading in ("## Environment", "## Plan", "## Stage times", "## Checkpoints"):
        assert heading in document
    assert "| commit | abc123 |" in document
    assert "- cifar10: ResNet-20, shortened schedule" in document
    assert "![" in document and "(figure4_norms.png)" in document  # Table 7 was measured
    assert "figure5_temperatures.png" not in document  # Table 8 was not
    assert "- imagenet: 5 datasets missing" in document
    shown = {**_rows(document, "6"), **_rows(document, "7")}
    assert len(shown) == len(report.comparisons)
    for comparison in report.comparisons:
        name = re.sub(r"^table\d\[(.*)\]$", r"\1", comparison.check.id)
        cells = shown[name]
        assert float(cells[1]) == pytest.approx(comparison.check.fpr95, abs=0.005)
        assert float(cells[3]) == pytest.approx(comparison.fpr95_difference, abs=0.005)
        tolerance = comparison.check.tolerance
        expected_class = "retrained" if comparison.check.table == "table6" else "deterministic"
        assert cells[7] == f"{expected_class} (±{tolerance.fpr95:g} / ±{tolerance.auroc:g})"
        assert cells[8] == ("within" if comparison.within_tolerance else "**outside**")


def test_stage_times_beside_the_estimates_and_scaled_to_the_paper():
    document = reproduction_report(_report())
    assert "| cifar10 train | 200 | 4 s | 5 s | 5,000,000 | 34.7 h |" in document
    assert "| cifar10 forward | 40 | 1 s | 2 s | 61,672 | 51.4 min |" in document
    assert "| imagenet forward | 10 | ? (no probe: ImportError: timm) | not run | 0 | ? |" in (
        document
    )
    assert "| total | | 5 s | 7 s | | 35.6 h |" in document


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "?"),
        (0.0123, "0.012 s"),
        (4.0, "4 s"),
        (42.4, "42 s"),
        (150, "2.5 min"),
        (7200, "2.0 h"),
    ],
)
def test_seconds_for_people(value, shown):
    assert seconds(value) == shown


def test_the_summary_gives_the_stages_in_at_most_two_narrow_lines():
    report = _report()
    for index in range(12):  # many stages: the second line says where the rest is
        report.stages.plan(Stage(f"protocol{index} forward", 1, 1.0, actual=1.0))
    lines = summary_lines(report, None)
    start = next(i for i, line in enumerate(lines) if line.startswith("stages: "))
    assert lines[start].startswith("stages: 19 s (estimate 17 s): cifar10 train 5 s (4 s)")
    assert lines[start + 1] == "  ... each stage's time in paper.md"
    assert lines[start + 2] == ""
    assert max(map(len, lines)) <= MAX_WIDTH
    few = _report()
    lines = summary_lines(few, None)
    (line,) = [line for line in lines if line.startswith("stages: ")]
    assert line == "stages: 7 s (estimate 5 s): cifar10 train 5 s (4 s), cifar10 forward 2 s (1 s)"
