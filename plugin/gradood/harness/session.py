"""The run's settings and shared state, read from pytest's config: the options' flags and
paths, the device, the run's report and its folder, and progress lines past output capture.

The harness's modules take these from here; :mod:`gradood.harness.plugin` (the hooks) defines
the options.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

__all__ = [
    "DOWNLOAD_VARIABLE",
    "ENFORCE_VARIABLE",
    "GPU_MARKER",
    "PATH_OPTIONS",
    "SWITCH_VARIABLES",
    "apply_environment",
    "details_hint",
    "enforce_speed_targets",
    "flag",
    "given",
    "harness_defaults",
    "only_gradood_implements",
    "option_path",
    "report_folder",
    "run_report",
    "say",
    "set_report_folder",
    "speed_policy",
    "started_report",
    "status_line",
    "uses_gpu",
    "verbosity",
]

#: path option -> (environment variable, default under the rootdir, what it holds)
PATH_OPTIONS = {
    "data_root": ("GRADOOD_DATA_ROOT", "data", "the datasets"),
    "checkpoint_dir": ("GRADOOD_CHECKPOINTS", "checkpoints", "the models' checkpoints"),
    "cache_dir": ("GRADOOD_CACHE_DIR", ".gradood-cache", "the feature cache"),
    "report_dir": ("GRADOOD_REPORT_DIR", "reports", "the run reports"),
}
#: the environment variable of ``--gradood-enforce-speed``
ENFORCE_VARIABLE = "GRADOOD_ENFORCE_SPEED"
#: the environment variable of ``--gradood-download``
DOWNLOAD_VARIABLE = "GRADOOD_DOWNLOAD"
#: switch option -> its environment variable (``1``: on, ``0`` or empty: off)
SWITCH_VARIABLES = {"download": DOWNLOAD_VARIABLE, "enforce_speed": ENFORCE_VARIABLE}
#: the marker of tests that need the CUDA device
GPU_MARKER = "gradood_gpu"
_REPORT = pytest.StashKey["object"]()
_FOLDER = pytest.StashKey[Path]()


def flag(name: str, config: pytest.Config | None = None) -> str:
    """The command-line flag of option ``name`` (e.g. ``"data_root"``: ``--gradood-data-root``;
    ``--data-root`` where ``config``'s run accepts the short spellings, see
    :mod:`gradood.harness.spelling`)."""
    from .spelling import spelled

    return spelled(config, "--gradood-" + name.replace("_", "-"))


def uses_gpu(config: pytest.Config) -> bool:
    """Whether this run is on the CUDA device (``--gradood-gpu``)."""
    return bool(config.getoption("gradood_gpu"))


def apply_environment(config: pytest.Config) -> None:
    """Each option not given on the command line takes the value of its environment variable,
    here, once, when the run is configured: every check of the harness then reads the options
    alone, so that a variable behaves exactly as its option.

    :raises pytest.UsageError: if a switch's variable is neither ``1``, ``0`` nor empty
    """
    for name, (variable, _default, _what) in PATH_OPTIONS.items():
        value = os.environ.get(variable)
        if value and not config.getoption(f"gradood_{name}"):
            setattr(config.option, f"gradood_{name}", value)
    for name, variable in SWITCH_VARIABLES.items():
        value = os.environ.get(variable, "")
        if value not in ("", "0", "1"):
            raise pytest.UsageError(
                f"{variable}={value!r}: expected 1 (as {flag(name, config)}) or 0 (without it)"
            )
        if value == "1":
            setattr(config.option, f"gradood_{name}", True)


def given(config: pytest.Config, name: str) -> bool:
    """Whether path option ``name`` was given (flag or environment variable)."""
    return bool(config.getoption(f"gradood_{name}"))


def option_path(config: pytest.Config, name: str) -> Path:
    """The directory of path option ``name`` (``"data_root"``, ``"checkpoint_dir"``,
    ``"cache_dir"``, ``"report_dir"``): the option (or its environment variable), else the
    default under pytest's rootdir."""
    value = config.getoption(f"gradood_{name}")
    return Path(value).expanduser() if value else Path(config.rootpath) / PATH_OPTIONS[name][1]


def enforce_speed_targets(config: pytest.Config) -> bool:
    """Whether a missed speed target fails: with ``--gradood-gpu`` or
    ``--gradood-enforce-speed`` (or its environment variable)."""
    return bool(uses_gpu(config) or config.getoption("gradood_enforce_speed"))


def speed_policy(config: pytest.Config) -> str:
    """One line on how this run treats a missed speed target where it does not fail it (empty
    where it does: :func:`enforce_speed_targets`)."""
    if enforce_speed_targets(config):
        return ""
    return (
        f"CPU verdicts are reported, not enforced: {flag('enforce_speed', config)} makes a "
        "missed target fail"
    )


def set_report_folder(config: pytest.Config, planned: Path) -> None:
    config.stash[_FOLDER] = planned


def report_folder(config: pytest.Config) -> Path:
    """This run's report folder's planned name (made at the end of the run, if there is
    anything to say, with a suffix where another run's has the name)."""
    return config.stash[_FOLDER]


def run_report(config: pytest.Config):
    """This run's :class:`gradood.harness.report.Report`."""
    from .report import Report

    if _REPORT not in config.stash:
        config.stash[_REPORT] = Report()
    return config.stash[_REPORT]


def started_report(config: pytest.Config):
    """This run's report if anything asked for it yet, else ``None``."""
    return config.stash.get(_REPORT, None)


def verbosity(config: pytest.Config) -> int:
    """``-v`` counted up, ``-q`` down (0 by default). ``Config.get_verbosity`` needs pytest 8."""
    return config.getoption("verbose")


def say(config: pytest.Config, message: str) -> None:
    """Print a progress line now, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or verbosity(config) < 0:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        reporter.write_line(message)
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(message)


#: ANSI: save the cursor, restore it, erase to the end of the line
_SAVE, _RESTORE, _ERASE = "\x1b7", "\x1b8", "\x1b[K"


@contextmanager
def status_line(config: pytest.Config) -> Iterator[Callable[[str], None]]:
    """A function that shows a progress message on the terminal's current line, after what
    pytest wrote there (the test file's name), each message replacing the last, erased when
    the block ends: progress without lines between pytest's own. Not on a terminal (a file, a
    pipe, a CI log), not without escape codes (``--color=no``), and not with ``-q -q``: nothing
    is shown."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    shown = reporter is not None and verbosity(config) >= 0 and bool(reporter.isatty)
    if not shown or not reporter._tw.hasmarkup:
        yield lambda _message: None
        return
    writer = reporter._tw
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(text: str) -> None:
        # past the writer's own bookkeeping of the line, which pytest's progress column reads
        with capture.global_and_fixture_disabled() if capture else nullcontext():
            writer._file.write(text)
            writer._file.flush()

    def show(message: str) -> None:
        room = writer.fullwidth - writer.width_of_current_line - 4
        text = f"[{message}]"[: max(0, room)]
        write(f"{_ERASE}{_SAVE} {text}{_RESTORE}")

    try:
        yield show
    finally:
        write(_ERASE)


def details_hint(config: pytest.Config) -> str:
    """Where this run's report says what is missing, for a one-line skip reason (the summary
    names the report's folder)."""
    from .report import MISSING_DATA

    return f"see the report's {MISSING_DATA}"


def harness_defaults(hook) -> list:
    """The harness's own implementations of ``hook`` (its defaults, in
    :mod:`gradood.harness.plugin`, and those of ``--gradood-download``)."""
    return [impl.plugin for impl in hook.get_hookimpls() if _is_gradood(impl.plugin)]


def only_gradood_implements(hook) -> bool:
    """Whether every implementation of ``hook`` is gradood's own (no project overrides it)."""
    return all(_is_gradood(impl.plugin) for impl in hook.get_hookimpls())


def _is_gradood(plugin) -> bool:
    return _module(plugin).startswith("gradood.")


def _module(plugin) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__module__
