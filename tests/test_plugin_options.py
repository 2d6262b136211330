"""The harness's options as users type them: the short spellings this repository adds
(``--gpu``), the prefixed names the installed plugin keeps, and the usage errors and the
``missing-data.md`` of the paths they name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# imported before pytester's inline runs, which remove the modules they import (numpy's
# extensions cannot be loaded twice in one process)
import gradood.harness.paper_tests  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

#: the repository's root conftest.py, as a project's
SHORT_SPELLINGS = """
from gradood.harness.spelling import add_short_spellings


def pytest_addoption(parser):
    add_short_spellings(parser)
"""

PATHS = ("data_root", "checkpoint_dir", "cache_dir", "report_dir")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_short_spellings_mean_the_prefixed_options(pytester):
    pytester.makeconftest(SHORT_SPELLINGS)
    values = {name: pytester.mkdir(name) for name in PATHS}
    pytester.makepyfile(
        test_options=f"""
        from pathlib import Path

        def test_options(request):
            get = request.config.getoption
            for name, value in { ({k: str(v) for k, v in values.items()})!r}.items():
                assert Path(get("gradood_" + name)) == Path(value), name
            assert get("gradood_enforce_speed") is True
            assert get("gradood_gpu") is False
        """
    )
    args = [arg for name, path in values.items() for arg in (_flag(name), str(path))]
    result = pytester.runpytest(*args, "--enforce-speed")
    result.assert_outcomes(passed=1)


def test_the_installed_plugin_keeps_only_the_prefixed_names(pytester):
    pytester.makepyfile(test_sample="def test_never_runs():\n    raise AssertionError")
    result = pytester.runpytest("--gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --gpu*"])


def test_every_prefixed_option_has_its_short_spelling_in_this_repository():
    """Derived from what the plugin registers: an option added later gets its short spelling
    without touching the conftest."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    prefixed = set(re.findall(r"(?<![\w-])--gradood-[a-z-]+[a-z]", run.stdout))
    assert {"--gradood-gpu", "--gradood-data-root", "--gradood-checkpoint-dir"} <= prefixed
    missing = [
        name
        for name in sorted(prefixed)
        if not re.search(rf"^\s+--{name.removeprefix('--gradood-')}\b", run.stdout, re.M)
    ]
    assert missing == [], f"without a short spelling: {missing}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_skip_lines_and_usage_errors_use_the_repository_spelling(pytester):
    pytester.makeconftest(SHORT_SPELLINGS)
    pytester.makepyfile(
        test_sample="""
        import pytest

        @pytest.mark.gradood_gpu
        def test_on_gpu():
            pass
        """
    )
    result = pytester.runpytest("-rs")
    result.stdout.fnmatch_lines(["*needs a CUDA device: run with --gpu"])
    result = pytester.runpytest("--gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gpu was given, but torch finds no CUDA device*"])


@pytest.mark.parametrize("name", ["data_root", "checkpoint_dir"])
@pytest.mark.parametrize("how", ["option", "environment"])
def test_an_absent_input_directory_is_a_usage_error_before_any_test(
    pytester, monkeypatch, name, how
):
    pytester.makepyfile(test_sample="def test_never_runs():\n    raise AssertionError")
    absent = pytester.path / "absent"
    variable = {"data_root": "GRADOOD_DATA_ROOT", "checkpoint_dir": "GRADOOD_CHECKPOINTS"}[name]
    if how == "option":
        result = pytester.runpytest("--gradood" + _flag(name)[1:], str(absent))
    else:
        monkeypatch.setenv(variable, str(absent))
        result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*--gradood{_flag(name)[1:]} (or {variable}) {absent} does not exist*"]
    )
    assert "test_never_runs" not in result.stdout.str()


def test_a_file_given_as_data_root_is_a_usage_error(pytester):
    pytester.makepyfile(test_sample="def test_never_runs():\n    raise AssertionError")
    a_file = pytester.path / "a-file"
    a_file.write_text("not a folder")
    result = pytester.runpytest("--gradood-data-root", str(a_file))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{a_file} is not a directory*"])


PAPER_TESTS = "from gradood.harness.paper_tests import test_table6  # noqa: F401\n"


def _missing_data(pytester, *args: str) -> str:
    pytester.makepyfile(test_paper=PAPER_TESTS)
    for folder in ("data", "checkpoints"):
        pytester.mkdir(folder)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--gradood-data-root", "data",
        "--gradood-checkpoint-dir", "checkpoints", "--gradood-report-dir", "reports", *args,
    )  # fmt: skip
    result.assert_outcomes(skipped=50)  # Table 6: CIFAR-10 and CIFAR-100
    (folder,) = (pytester.path / "reports").iterdir()
    return (folder / "missing-data.md").read_text()


def test_missing_data_lists_the_checkpoints_up_front_and_only_working_instructions(pytester):
    """The datasets and the model are listed on the first run (not the model only once the
    data is there); no instruction names an option that does not exist."""
    text = _missing_data(pytester)
    data, model = text.index("## cifar10 data"), text.index("## cifar10 model")
    assert data < model < text.index("## cifar100 data")
    checkpoint = Path("checkpoints", "resnet20-cifar10.pt")  # as given
    assert f"- {checkpoint} (--gradood-checkpoint-dir) is missing. How to get it: train it" in text
    assert "download=True here" not in text


def test_a_project_that_loads_its_own_model_gets_no_checkpoint_listed(pytester):
    pytester.makeconftest(
        "def pytest_gradood_load_model(config, protocol):\n    raise AssertionError\n"
    )
    text = _missing_data(pytester)
    assert "## cifar10 data" in text and "model" not in text


@pytest.mark.parametrize(
    ("name", "creator"), [("data_root", "download"), ("checkpoint_dir", "train")]
)
def test_an_absent_input_directory_is_allowed_where_an_option_creates_it(pytester, name, creator):
    """``--gradood-download`` (the data) and ``--gradood-train`` (the checkpoints) create what
    they fill; stood in for here by a conftest's option of that destination."""
    pytester.makeconftest(
        f"def pytest_addoption(parser):\n"
        f"    parser.addoption('--{creator}', dest='gradood_{creator}', action='store_true')\n"
    )
    pytester.makepyfile(test_sample="def test_runs():\n    pass")
    absent = str(pytester.path / "absent")
    option = "--gradood" + _flag(name)[1:]
    assert pytester.runpytest(option, absent).ret == pytest.ExitCode.USAGE_ERROR
    pytester.runpytest(option, absent, f"--{creator}").assert_outcomes(passed=1)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_download_allows_an_absent_data_root_by_its_option_or_its_variable(
    pytester, monkeypatch, how
):
    monkeypatch.delenv("GRADOOD_DOWNLOAD", raising=False)
    pytester.makepyfile(
        test_sample="def test_runs(request):\n    assert request.config.option.gradood_download"
    )
    args = ["--gradood-data-root", str(pytester.path / "absent")]
    if how == "option":
        args.append("--gradood-download")
    else:
        monkeypatch.setenv("GRADOOD_DOWNLOAD", "1")
    pytester.runpytest(*args).assert_outcomes(passed=1)


#: each environment variable, its option's destination, and a value of each
VARIABLES = {
    "GRADOOD_DATA_ROOT": ("gradood_data_root", "data-there"),
    "GRADOOD_CHECKPOINTS": ("gradood_checkpoint_dir", "checkpoints-there"),
    "GRADOOD_CACHE_DIR": ("gradood_cache_dir", "cache-there"),
    "GRADOOD_REPORT_DIR": ("gradood_report_dir", "reports-there"),
    "GRADOOD_DOWNLOAD": ("gradood_download", "1"),
    "GRADOOD_ENFORCE_SPEED": ("gradood_enforce_speed", "1"),
}


def test_every_variable_is_its_option_to_every_reader(pytester, monkeypatch):
    """The variables become the options' values when the run is configured, so that whatever
    reads an option (a check, the plan, a project's conftest) sees the variable; an option
    typed wins."""
    expected = {}
    for variable, (dest, value) in VARIABLES.items():
        if value == "1":
            expected[dest] = True
        else:
            expected[dest] = str(pytester.mkdir(value))
        monkeypatch.setenv(variable, str(expected[dest]) if value != "1" else value)
    typed = pytester.mkdir("typed")
    expected["gradood_data_root"] = str(typed)  # typed, over GRADOOD_DATA_ROOT's folder
    pytester.makepyfile(
        test_sample=f"""
        from gradood.harness.session import enforce_speed_targets, given, option_path

        def test_sees(request):
            config = request.config
            for dest, value in {expected!r}.items():
                assert config.getoption(dest) == value, dest
            assert enforce_speed_targets(config) and given(config, "cache_dir")
            assert option_path(config, "data_root").name == "typed"
        """
    )
    pytester.runpytest("--gradood-data-root", str(typed)).assert_outcomes(passed=1)


@pytest.mark.parametrize("variable", ["GRADOOD_DOWNLOAD", "GRADOOD_ENFORCE_SPEED"])
@pytest.mark.parametrize("value", ["yes", "true", "2"])
def test_a_bad_switch_value_is_a_usage_error(pytester, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    pytester.makepyfile(test_sample="def test_never_runs():\n    raise AssertionError")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{variable}={value!r}: expected 1 (as --gradood-*) or 0*"])
