"""Run reports under faults: every run gets a folder of its own (two runs in the same second
too), a report that cannot be written is one line and never fails a passing run, and under
pytest-xdist the workers' results make one report, the same as without ``-n``."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

import gradood.harness.report
import gradood.harness.writing
from gradood.files import WriteError
from gradood.harness.compare import NotAReport, resolve_runs
from gradood.harness.writing import RUN_MARK, new_folder

#: a test module whose tests each add paper comparisons (several per test, and one that adds
#: a speed verdict), so that a report has paper.csv, paper.md, a figure, speed.txt and speed.csv
TESTS = """
import pytest

from gradood.harness.checks import Comparison, paper_checks
from gradood.harness.timing import PairedRatio, SpeedCheck, Target

CHECKS = paper_checks(["table7"])[:24]


@pytest.mark.parametrize("first", range(0, 24, 3))
def test_compare(gradood_report, first):
    for check in CHECKS[first : first + 3]:
        gradood_report.comparisons.append(Comparison(check, check.fpr95 + first / 10, check.auroc))


def test_speed(gradood_report):
    gradood_report.speed.append(
        SpeedCheck("toy", "A / B", PairedRatio((1.0,) * 5), Target(0.95))
    )
"""
FILES = ["paper.csv", "paper.md", "figure4_norms.png", "speed.txt", "speed.csv", RUN_MARK]


def test_new_folders_are_exclusive(tmp_path):
    planned = tmp_path / "reports" / "20260101-000000"
    assert new_folder(planned) == planned
    assert new_folder(planned) == planned.with_name("20260101-000000.1")
    made, start = [], threading.Barrier(8)

    def make():
        start.wait()
        made.append(new_folder(planned))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(set(made)) == 8 and all(folder.is_dir() for folder in made)


@pytest.fixture
def runs(pytester, monkeypatch, tmp_path):
    """Run the test module in this process with the report folder under ``tmp_path`` and a
    clock stuck at one second (every run starts "in the same second")."""
    pytester.makepyfile(test_reports=TESTS)
    monkeypatch.setattr("time.strftime", lambda *args: "20260101-120000")
    reports = tmp_path / "reports"

    def run(*args):
        return pytester.runpytest(
            "-p", "no:cacheprovider", f"--gradood-report-dir={reports}", *args
        )

    return run, reports


def _folders(reports: Path) -> list[Path]:
    return sorted(reports.iterdir())


def test_two_runs_in_the_same_second_keep_two_complete_reports(runs):
    run, reports = runs
    first, second = run(), run()
    assert first.ret == second.ret == 0
    folders = _folders(reports)
    assert [f.name for f in folders] == ["20260101-120000", "20260101-120000.1"]
    for folder, result in zip(folders, (first, second), strict=True):
        assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
        result.stdout.fnmatch_lines([f"report: {folder}"])


def _disk_full(monkeypatch, module, name):
    """``module``'s atomic write fails as on a full disk for the file ``name`` (any PNG where
    ``name`` is ``.png``)."""
    write = getattr(module, _WRITERS[module])

    def full(path, *args, **kwargs):
        if Path(path).name == name or (name == ".png" and Path(path).suffix == ".png"):
            raise WriteError(
                errno.ENOSPC, f"no space left on the device: {path} could not be written"
            )
        return write(path, *args, **kwargs)

    monkeypatch.setattr(module, _WRITERS[module], full)


_WRITERS = {gradood.harness.writing: "atomic_write_text", gradood.harness.report: "atomic_write"}


@pytest.mark.parametrize(
    ("module", "full_at", "missing"),
    [
        (gradood.harness.writing, "summary.txt", "summary.txt"),  # row 2
        (gradood.harness.report, ".png", "figure4_norms.png"),  # row 3
    ],
)
def test_a_full_disk_is_one_line_naming_the_folder_and_the_exit_status_is_the_tests(
    runs, monkeypatch, module, full_at, missing
):
    run, reports = runs
    _disk_full(monkeypatch, module, full_at)
    result = run()
    assert result.ret == 0
    (folder,) = _folders(reports)
    # the summary marks a complete report (gradood compare reads only those): none is written
    # beside a missing file
    unmarked = "" if missing == RUN_MARK else f"; no {RUN_MARK}: not a complete run"
    result.stdout.fnmatch_lines(
        [
            f"gradood: the report in {folder} is incomplete: {missing} not written "
            f"(No space left on device){unmarked}",
            "*gradood summary*",
            "*imagenet*",
        ]
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(FILES) - {missing, RUN_MARK})
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no partial files
    with pytest.raises(NotAReport, match=f"no {RUN_MARK} in it"):
        resolve_runs(reports)


def test_a_report_folder_that_cannot_be_made_is_one_line(runs, monkeypatch):
    run, reports = runs

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    result = run()
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            f"gradood: no report: the folder {reports}/20260101-120000 could not be made "
            "(Permission denied)",
            "*gradood summary*",
        ]
    )


def _without_folder_line(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("report: ")]


def test_under_xdist_the_workers_make_one_report_as_without_it(pytester, tmp_path):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_reports=TESTS)
    folders = {}
    for mode, extra in (("serial", []), ("xdist", ["-n", "2"])):
        reports = tmp_path / mode
        arguments = ("-p", "no:cacheprovider", f"--gradood-report-dir={reports}", *extra)
        # the run without -n in this process; xdist's workers need processes of their own
        result = (
            pytester.runpytest_subprocess(*arguments) if extra else pytester.runpytest(*arguments)
        )
        assert result.ret == 0, result.stdout.str()
        (folders[mode],) = _folders(reports)
        result.stdout.fnmatch_lines(["*gradood summary*", "*imagenet*24*"])
    serial, parallel = folders["serial"], folders["xdist"]
    assert sorted(p.name for p in parallel.iterdir()) == sorted(FILES)
    for name in ("paper.csv", "paper.md", "speed.txt"):
        assert (parallel / name).read_text() == (serial / name).read_text(), name
    summary = [_without_folder_line((f / "summary.txt").read_text()) for f in (serial, parallel)]
    assert summary[0] == summary[1]


def test_the_parts_of_two_workers_join_into_the_report_of_one_process():
    """What two workers record (a planned stage before their tests; stage times, measured rows
    and settings per test) joins into what one process recording the same would hold."""
    import pandas as pd

    from gradood.harness.gather import _copy, _since, merge
    from gradood.harness.report import Report
    from gradood.harness.stages import Stage

    def rows(group: str) -> pd.DataFrame:
        return pd.DataFrame({"method": [group], "AUROC": [0.5]})

    def plan(report: Report) -> None:
        report.stages.plan(Stage("cifar10 head", images=100, estimate=2.0))
        report.stages.plan(Stage("cifar100 head", images=100, estimate=3.0))  # never runs
        report.plan.append("gradood plan: ...")

    def run_test(report: Report, group: str, seconds: float) -> None:
        for name in ("cifar10 head", f"cifar10 {group} fit"):  # planned, and not planned
            stage = report.stages.by_name.setdefault(name, Stage(name))
            stage.actual = (stage.actual or 0.0) + seconds
        report.add_measured("cifar10", rows(group), {group: {"p": 1.0}})

    single = Report()
    plan(single)
    for group, seconds in (("gradnorm", 1.5), ("msp", 0.5)):
        run_test(single, group, seconds)

    parts = []
    for group, seconds in (("gradnorm", 1.5), ("msp", 0.5)):  # one test on each worker
        worker = Report()
        plan(worker)
        setup = _copy(worker)
        before = _copy(worker)
        run_test(worker, group, seconds)
        parts.append((setup, _since(worker, before)))
    joined = Report()
    merge(joined, parts[0][0])  # the part before the tests: the first worker's
    for _, part in parts:
        merge(joined, part)

    assert joined.plan == single.plan
    assert joined.stages == single.stages  # the estimate kept, both tests' time added
    assert joined.stages.by_name["cifar10 head"].actual == 2.0
    assert joined.stages.by_name["cifar10 msp fit"].actual == 0.5
    assert joined.stages.by_name["cifar100 head"].estimate == 3.0
    assert joined.defaults == single.defaults
    pd.testing.assert_frame_equal(joined.measured["cifar10"], single.measured["cifar10"])
