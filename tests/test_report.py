"""The run report: side-by-side table, Markdown, CSV and figures, written atomically."""

from __future__ import annotations

import pandas as pd
import pytest

from gradood.harness.checks import Comparison, paper_checks
from gradood.harness.report import MISSING_DATA, Report
from gradood.harness.timing import SpeedCheck, Target


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


def test_side_by_side():
    report = _report()
    frame = report.side_by_side()
    assert len(frame) == len(report.comparisons) == 20
    assert frame["FPR95 measured"].tolist() == [c.fpr95 for c in report.comparisons]
    within = sum(c.within_tolerance for c in report.comparisons)
    assert 0 < within < 20 and int(frame["within tolerance"].sum()) == within


def test_repr_is_one_line_that_counts_the_parts():
    """A failing test's traceback shows its fixtures: one line each, not every row."""
    report = _report()
    assert repr(report) == "Report(20 comparisons, 1 table)"
    assert repr(Report()) == "Report(empty)"


def test_writes_tables_and_figures(tmp_path):
    report = _report()
    written = report.write(tmp_path / "run")
    names = {path.name for path in written}
    assert names == {
        "paper.csv",
        "paper.md",
        "toy-benchmark.csv",
        "toy-benchmark.md",
        "figure4_norms.png",  # Table 7 was measured; Table 8 was not: no Figure 5
        "toy-benchmark_p.png",
    }
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(names)  # no temp files
    csv = pd.read_csv(tmp_path / "run" / "paper.csv")
    assert csv["FPR95 measured"].tolist() == pytest.approx([c.fpr95 for c in report.comparisons])
    markdown = (tmp_path / "run" / "toy-benchmark.md").read_text().splitlines()
    assert markdown[0].startswith("| method | p | temperature | ood_data | FPR95 | AUROC |")
    assert "| gradnorm | 0.5 | 1 | noise | 50.00 | 90.00 |" in markdown  # settings as they are
    for figure in ("figure4_norms.png", "toy-benchmark_p.png"):
        data = (tmp_path / "run" / figure).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_no_paper_figures_without_measurements(tmp_path):
    """The paper's lines alone would say nothing about the run."""
    assert Report().write(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_what_is_missing_and_the_speed_verdicts(tmp_path):
    report = Report()
    report.add_missing("cifar10", "data", "2 datasets missing", "- SVHN: not found at /x")
    report.speed.append(SpeedCheck("resnet20 32px b64", "memory", 1.5, Target(2.0, False)))
    written = {path.name: path for path in report.write(tmp_path)}
    assert set(written) == {MISSING_DATA, "speed.txt", "speed.csv"}
    assert "## cifar10 data\n\n- SVHN: not found at /x" in written[MISSING_DATA].read_text()
    assert written["speed.txt"].read_text().split()[-1] == "met"
    assert report.unavailable == {"cifar10": "2 datasets missing"}


def test_the_bundled_sweeps_show_the_other_detectors(tmp_path, monkeypatch):
    """Each other method's Average is drawn as a reference line beside GradNorm's sweep."""
    import matplotlib.axes

    drawn = []
    monkeypatch.setattr(
        matplotlib.axes.Axes, "axhline", lambda self, y, **kw: drawn.append((y, kw["label"]))
    )
    table = _report().tables["toy benchmark"]
    other = table.assign(method="msp", settings="", p=float("nan"))[table["ood_data"] == "Average"]
    Report(tables={"toy": pd.concat([table, other.iloc[:1]])}).write(tmp_path)
    row = other.iloc[0]
    assert drawn == [
        (95.0, "chance"),  # FPR95 of a score that ignores the input
        (100 * row["FPR95"], "msp (Average)"),
        (50.0, "chance"),
        (100 * row["AUROC"], "msp (Average)"),
    ]


def test_settings_are_written_exactly(tmp_path):
    table = pd.DataFrame(
        {
            "method": ["gradnorm"] * 3,
            "settings": ["", "", ""],
            "p": [1.0, 0.3, float("inf")],
            "temperature": [0.0625, 0.125, 1024.0],
            "ood_data": ["noise"] * 3,
            "FPR95": [0.123456, 0.5, 0.25],
            "AUROC": [0.9, 0.95, 0.8],
        }
    )
    Report(tables={"t": table}).write(tmp_path)
    markdown = (tmp_path / "t.md").read_text()
    assert "| gradnorm | 1 | 0.0625 | noise | 12.35 | 90.00 |" in markdown
    assert "| gradnorm | 0.3 | 0.125 |" in markdown and "| gradnorm | inf | 1024 |" in markdown


def test_figures_keep_legends_off_the_data_and_reference_lines_grey(tmp_path, monkeypatch):
    """Every legend lies outside every panel; no reference line takes a data series' colour."""
    import matplotlib.figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba

    figures = []
    save = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    table = _report().tables["toy benchmark"]
    other = table.assign(method="msp", settings="", p=float("nan"))[table["ood_data"] == "Average"]
    report = _report()
    report.tables = {"toy": pd.concat([table, other.iloc[:1]])}
    report.write(tmp_path)
    assert len(figures) == 2  # Figure 4 of the paper and the toy table's sweep over p
    for figure in figures:
        renderer = FigureCanvasAgg(figure).get_renderer()
        legends = figure.legends + [a.get_legend() for a in figure.axes if a.get_legend()]
        assert legends
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert not any(box.overlaps(a.get_window_extent(renderer)) for a in figure.axes)
        for axis in figure.axes:
            series = {to_rgba(line.get_color()) for line in axis.lines if line.get_gid() is None}
            references = [line for line in axis.lines if line.get_gid() == "reference"]
            assert references and not series & {to_rgba(r.get_color()) for r in references}
