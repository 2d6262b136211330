"""What the main job runs: ``-k`` keeps the bundled rows of the detectors it names (with those
their summary lines compare them with), GPU-only cases are not collected without ``--gpu``
(one line counts them), and progress shows on a terminal only, on pytest's own line."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gradood.harness.bundled import PAPER_DETECTORS, with_companions
from gradood.harness.session import status_line
from gradood.registry import FACTORS

REPO = Path(__file__).resolve().parents[1]


def _collected(*args: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == pytest.ExitCode.OK, run.stdout[-2000:] + run.stderr[-2000:]
    return run.stdout.splitlines()


def test_k_selects_a_detectors_bundled_rows_and_gpu_cases_are_one_line():
    lines = _collected("-k", "gradnorm")
    bundled = {line.split("[")[-1].rstrip("]") for line in lines if "test_bundled.py" in line}
    assert bundled == {"gradnorm", *FACTORS["gradnorm"]}
    assert any(
        line.startswith("gradood: ") and "GPU-only cases deselected" in line for line in lines
    )
    assert not any("resnet50" in line or "bit-s-r101x1-480px-b" in line for line in lines)


def test_a_detectors_companions_are_those_its_summary_lines_name():
    assert set(with_companions(["gradnorm"])) == {"gradnorm", *FACTORS["gradnorm"]}
    assert set(with_companions(["msp"])) == {"msp", "gradnorm-u"}  # "U (feature norm) there"
    assert with_companions(["knn"]) == ["knn"]  # not a paper detector: no summary line
    assert "msp" in PAPER_DETECTORS and "knn" not in PAPER_DETECTORS


class _Writer:
    def __init__(self, written: str, hasmarkup: bool) -> None:
        self._file = io.StringIO()
        self.fullwidth = 80
        self.width_of_current_line = len(written)
        self.hasmarkup = hasmarkup  # False with --color=no


def _config(isatty: bool, verbosity: int = 0, hasmarkup: bool = True) -> SimpleNamespace:
    writer = _Writer("benchmarks/test_bundled.py ", hasmarkup)
    reporter = SimpleNamespace(isatty=isatty, _tw=writer)
    plugins = {"terminalreporter": reporter, "capturemanager": None}
    manager = SimpleNamespace(get_plugin=plugins.get)
    options = {"verbose": verbosity}
    return SimpleNamespace(pluginmanager=manager, getoption=lambda name, *default: options[name])


def test_progress_shows_on_a_terminal_after_pytests_text_and_is_erased():
    config = _config(isatty=True)
    with status_line(config) as show:
        show("fitting ash (1 of 31)")
        show("fitting dice (2 of 31)")
    written = config.pluginmanager.get_plugin("terminalreporter")._tw._file.getvalue()
    assert "\n" not in written and "\r" not in written  # pytest's line stays where it is
    assert "fitting dice (2 of 31)" in written
    assert written.endswith("\x1b[K")  # erased to the end of the line


@pytest.mark.parametrize(
    ("isatty", "verbosity", "hasmarkup"), [(False, 0, True), (True, -2, True), (True, 0, False)]
)
def test_no_progress_in_a_log_without_escape_codes_or_when_asked_for_quiet(
    isatty, verbosity, hasmarkup
):
    config = _config(isatty, verbosity, hasmarkup)
    with status_line(config) as show:
        show("fitting ash (1 of 31)")
    assert config.pluginmanager.get_plugin("terminalreporter")._tw._file.getvalue() == ""
