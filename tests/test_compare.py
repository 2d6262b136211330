"""``gradood compare``: report folders written by the harness's own writer from a real (small)
bundled run, read back and compared: the same runs agree, a changed row is named, a path that
is no report is a clear error, and a report-dir names its latest complete run."""

from __future__ import annotations

import copy
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import pytest

from gradood.harness import report_records as records
from gradood.harness.bundled import TITLE, run_bundled
from gradood.harness.cli import main
from gradood.harness.compare import SWAPS, NotAReport, compare, read_run, resolve_runs, tolerance
from gradood.harness.environment import environment
from gradood.harness.report import Report
from gradood.harness.summary import summary_lines
from gradood.harness.timing import MET, MISSED, PairedRatio, SpeedCheck, Target
from gradood.harness.writing import write_run_report
from gradood.metrics import swap_tolerance

ROOT = Path(__file__).resolve().parents[1]
#: GradNorm at the paper's setting on the near-OOD set
GRADNORM_LETTERS = ("gradnorm", "Letters")
#: the bundled table's name in the report (its file's name)
TABLE = "bundled-digits-benchmark"


@pytest.fixture(scope="module")
def report() -> Report:
    """A run's report as the main job fills it: the bundled table (two detectors), the
    environment and a speed verdict."""
    run = run_bundled(names=["msp", "gradnorm"])
    speed = SpeedCheck(
        "resnet18 32px b64",
        "GradNorm / MSP throughput",
        PairedRatio((0.96, 0.97, 0.98, 0.99, 1.0)),
        Target(0.95),
    )
    return Report(
        tables={TITLE: run.table},
        environment=environment("cpu", ROOT),
        speed=[speed],
    )


def _write(report: Report, folder: Path) -> Path:
    _, problem = write_run_report(report, folder, summary_lines)
    assert problem is None
    return folder


def _gradnorm_row(table: pd.DataFrame) -> pd.Series:
    """GradNorm's row at p = 1, T = 1 on the letters."""
    method, ood = GRADNORM_LETTERS
    rows = (table["method"] == method) & (table["ood_data"] == ood)
    rows &= (table["p"] == 1.0) & (table["temperature"] == 1.0)
    assert rows.sum() == 1
    return rows


def _changed(report: Report, metric: str, by: float) -> Report:
    changed = copy.deepcopy(report)
    table = changed.tables[TITLE]
    table.loc[_gradnorm_row(table), metric] += by
    return changed


def test_the_report_records_environment_and_speed(report, tmp_path):
    folder = _write(report, tmp_path / "20260101-000000")
    for name in (records.ENVIRONMENT, records.SPEED):
        assert (folder / name).is_file(), name
    run = read_run(folder)
    assert run.environment == report.environment
    facts = {"torch", "torchvision", "pytorch-ood", "python", "numpy", "scipy", "scikit-learn"}
    assert facts | {"cpu", "gpu", "timed on"} <= set(run.environment)
    assert list(run.tables) == [TABLE]
    assert set(run.tables[TABLE]["n_id"]) == {719}
    (speed,) = run.speed.to_dict("records")
    assert float(speed["median"]) == pytest.approx(0.98)
    assert (float(speed["iqr_low"]), float(speed["iqr_high"])) == pytest.approx((0.97, 0.99))
    assert speed["verdict"] == MET


def test_two_identical_runs_agree_and_show_both_environments(report, tmp_path, capsys):
    first = _write(report, tmp_path / "a" / "20260101-000000")
    second = _write(report, tmp_path / "b" / "20260101-000000")
    assert main(["compare", str(first), str(second)]) == 0
    out = capsys.readouterr().out
    assert f"[1] a/20260101-000000  ({first})" in out and f"[2] b/{second.name}" in out
    torch_line = next(line for line in out.splitlines() if line.strip().startswith("torch "))
    assert torch_line.split()[1:] == [report.environment["torch"]] * 2
    rows = len(report.tables[TITLE])
    assert f"{TABLE}: {rows} rows, {rows} same, 0 differ" in out
    assert "GradNorm / MSP throughput" in out and "0.980 [0.970-0.990] met" in out
    assert out.rstrip().endswith("within tolerance; speed shown for information")


@pytest.mark.parametrize("by", [0.1, 0.001])  # 0.1 as a fraction, and 0.1 percentage point
def test_a_changed_gradnorm_auroc_is_named(report, tmp_path, capsys, by):
    first = _write(report, tmp_path / "a" / "20260101-000000")
    second = _write(_changed(report, "AUROC", by), tmp_path / "b" / "20260101-000000")
    assert main(["compare", str(first), str(second)]) == 1
    out = capsys.readouterr().out
    verdict = out[out.index("gradood compare: DIFFERS") :].splitlines()
    assert verdict[0] == "gradood compare: DIFFERS: 1 beyond tolerance"
    assert verdict[1].startswith(f"  {TABLE}: gradnorm p=1")
    assert "Letters: AUROC differs by" in verdict[1]
    assert f"{TABLE}: {len(report.tables[TITLE])} rows" in out and "1 differ" in out


def test_differences_within_the_swaps_tolerance_agree(report, tmp_path, capsys):
    """Float rounding may swap near-tied pairs: SWAPS swaps' worth of AUROC, one sample of
    FPR95, are the same row."""
    n = 719
    changed = _changed(_changed(report, "AUROC", SWAPS / n**2), "FPR95", 1 / n)
    first = _write(report, tmp_path / "a" / "20260101-000000")
    second = _write(changed, tmp_path / "b" / "20260101-000000")
    assert main(["compare", str(first), str(second)]) == 0, capsys.readouterr().out
    just_beyond = _changed(report, "AUROC", (SWAPS + 1) / n**2)
    third = _write(just_beyond, tmp_path / "c" / "20260101-000000")
    assert main(["compare", str(first), str(third)]) == 1


def test_other_test_sets_differ(report, tmp_path):
    other = copy.deepcopy(report)
    other.tables[TITLE].loc[_gradnorm_row(other.tables[TITLE]), "n_ood"] = 700
    runs = [
        read_run(_write(report, tmp_path / "a" / "20260101-000000")),
        read_run(_write(other, tmp_path / "b" / "20260101-000000")),
    ]
    (failure,) = compare(runs).failures()
    assert "Letters: the test sets differ (n_id/n_ood [1] 719/719, [2] 719/700)" in failure


def test_an_average_row_allows_the_swaps_over_all_its_sets(report, tmp_path):
    """The Average of three sets of 719 moves by at most a third of one set's bound."""
    table = read_run(_write(report, tmp_path / "20260101-000000")).tables[TABLE]
    (key,) = [k for k in table.index if k[0] == "msp" and k[2] == "Average"]
    assert tolerance(table, key) == swap_tolerance(719, 3 * 719, SWAPS)
    assert tolerance(table, (*key[:2], "Letters")) == swap_tolerance(719, 719, SWAPS)


def test_a_metric_that_is_nan_in_one_run_differs(report, tmp_path):
    changed = copy.deepcopy(report)
    changed.tables[TITLE].loc[_gradnorm_row(changed.tables[TITLE]), "AUPR-IN"] = float("nan")
    runs = [
        read_run(_write(report, tmp_path / "a" / "20260101-000000")),
        read_run(_write(changed, tmp_path / "b" / "20260101-000000")),
    ]
    (failure,) = compare(runs).failures()
    assert failure.endswith("Letters: AUPR-IN is not a number in some of the runs")


def test_a_row_missing_in_one_run_differs(report, tmp_path):
    shorter = copy.deepcopy(report)
    table = shorter.tables[TITLE]
    shorter.tables[TITLE] = table[~_gradnorm_row(table)]
    runs = [
        read_run(_write(report, tmp_path / "a" / "20260101-000000")),
        read_run(_write(shorter, tmp_path / "b" / "20260101-000000")),
    ]
    (failure,) = compare(runs).failures()
    assert "gradnorm p=1" in failure and "Letters: not in run [2]" in failure


def test_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["compare", str(missing), str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such file or folder" in err and "summary.txt" in err


def test_a_folder_that_is_no_report_is_a_clear_error(report, tmp_path, capsys):
    good = _write(report, tmp_path / "a" / "20260101-000000")
    other = tmp_path / "photos"
    (other / "holiday").mkdir(parents=True)
    (other / "holiday" / "beach.jpg").write_bytes(b"\xff\xd8")
    assert main(["compare", str(good), str(other)]) == 2
    err = capsys.readouterr().err
    assert f"{other}: no summary.txt in it" in err
    assert "expected a run's report folder (holding summary.txt)" in err


def test_a_broken_record_is_a_clear_error(report, tmp_path, capsys):
    good = _write(report, tmp_path / "a" / "20260101-000000")
    broken = _write(report, tmp_path / "b" / "20260101-000000")
    (broken / records.SPEED).write_text("what,setting\nx,y\n")
    assert main(["compare", str(good), str(broken)]) == 2
    assert f"{broken / records.SPEED}: no column(s) median, iqr_low" in capsys.readouterr().err


def test_one_run_is_not_a_comparison(report, tmp_path, capsys):
    good = _write(report, tmp_path / "a" / "20260101-000000")
    assert main(["compare", str(good)]) == 2
    assert "needs at least two runs, found 1" in capsys.readouterr().err


@pytest.fixture
def speed_only(report) -> Report:
    """A run with no table (no figures: quick to write)."""
    return Report(environment=report.environment, speed=report.speed)


def test_a_report_dir_names_its_latest_complete_run(speed_only, tmp_path):
    base = tmp_path / "reports"
    _write(speed_only, base / "20260101-000000")
    for _ in range(11):  # runs started in the same second: .1, ..., .10
        _write(speed_only, base / "20260102-000000")
    (base / "20260103-000000").mkdir()  # a run still going (or killed): no summary.txt
    assert resolve_runs(base) == [base / "20260102-000000.10"]


def test_a_folder_of_report_dirs_names_the_latest_run_of_each(report, speed_only, tmp_path, capsys):
    """tox's layout: ``.tox/reports/<environment>/<run>``."""
    reports = tmp_path / ".tox" / "reports"
    _write(report, reports / "torch21" / "20260101-000000")
    newest = _write(_changed(report, "AUROC", 0.1), reports / "torch215" / "20260102-000000")
    _write(speed_only, reports / "torch215" / "20260101-000000")
    assert resolve_runs(reports) == [reports / "torch21" / "20260101-000000", newest]
    assert main(["compare", str(reports)]) == 1
    assert "[2] torch215/20260102-000000" in capsys.readouterr().out
    with pytest.raises(NotAReport, match=r"no summary\.txt in it, its folders or theirs"):
        resolve_runs(tmp_path / ".tox")


def _timed_on(report: Report, device: str, verdict: str) -> Report:
    changed = copy.deepcopy(report)
    changed.environment["timed on"] = device
    ratios = (0.96, 0.97, 0.98, 0.99, 1.0) if verdict == MET else (0.8, 0.81, 0.82, 0.83, 0.84)
    (check,) = changed.speed
    changed.speed = [SpeedCheck(check.setting, check.what, PairedRatio(ratios), check.target)]
    assert changed.speed[0].verdict == verdict
    return changed


@pytest.mark.parametrize(("device", "status"), [("cpu", 0), ("NVIDIA H100 80GB HBM3", 1)])
def test_a_speed_target_met_then_missed_fails_on_the_same_gpu_only(
    report, tmp_path, capsys, device, status
):
    first = _write(_timed_on(report, device, MET), tmp_path / "a" / "20260101-000000")
    second = _write(_timed_on(report, device, MISSED), tmp_path / "b" / "20260101-000000")
    assert main(["compare", str(first), str(second)]) == status
    out = capsys.readouterr().out
    assert "0.820 [0.810-0.830] missed" in out
    if status:
        assert "speed: GradNorm / MSP throughput resnet18 32px b64: met in one run" in out
    else:
        assert "verdicts that differ between the runs (not a failure)" in out


def test_the_console_command_is_declared():
    (script,) = entry_points(group="console_scripts", name="gradood")
    assert script.load() is main


def test_the_tolerance_is_the_swaps_bound_on_the_bundled_sets():
    assert swap_tolerance(719, 719, SWAPS)["AUROC"] == SWAPS / 719**2
    assert swap_tolerance(719, 719, SWAPS)["FPR95"] == SWAPS / 719
