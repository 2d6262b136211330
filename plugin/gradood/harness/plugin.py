"""gradood's pytest plugin: options, markers, fixtures, the default hook implementations and
the run's report.

Registered by the ``pytest11`` entry point ``gradood`` (``pip install gradood`` makes the harness
available in any project); the hook specifications are in :mod:`gradood.harness.hooks`.

Options (each with an environment variable; prefixed, so they cannot collide with other
plugins'):

- ``--gradood-gpu``: run on the CUDA device (tests marked ``gradood_gpu`` need it); a usage
  error if none is available; missed speed targets fail.
- ``--gradood-data-root`` (``GRADOOD_DATA_ROOT``, default ``<rootdir>/data``): the datasets,
  laid out as docs/datasets.md says.
- ``--gradood-checkpoint-dir`` (``GRADOOD_CHECKPOINTS``, default ``<rootdir>/checkpoints``): the
  authors' ``BiT-S-R101x1-flat-finetune.pth.tar`` and the trained ``resnet20-cifar10.pt`` /
  ``resnet20-cifar100.pt``.
- ``--gradood-cache-dir`` (``GRADOOD_CACHE_DIR``, default ``<rootdir>/.gradood-cache``): the
  feature cache of :mod:`gradood.features`.
- ``--gradood-report-dir`` (``GRADOOD_REPORT_DIR``, default ``<rootdir>/reports``): each run
  writes its report into a new time-stamped folder there.
- ``--gradood-download`` (``GRADOOD_DOWNLOAD=1``): download the public datasets and checkpoints
  the run needs (:mod:`gradood.harness.downloading`).
- ``--gradood-download-min-speed B``, ``--gradood-download-speed-time S``
  (``GRADOOD_DOWNLOAD_MIN_SPEED``, ``GRADOOD_DOWNLOAD_SPEED_TIME``; default 1024 bytes/s over
  60 s): a download slower than that on average over a whole window ends, naming its rate.
- ``--gradood-train``, ``--gradood-train-epochs N``: train a missing CIFAR ResNet-20 in the run
  (the paper's recipe, or a shortened N-epoch schedule in files of its own); see
  :mod:`gradood.harness.training`.
- ``--gradood-enforce-speed`` (``GRADOOD_ENFORCE_SPEED=1``): a missed speed target fails its
  test on the CPU too; otherwise CPU verdicts are reported only, as a shared CPU's timings say
  little.

Before the first test, the run prints its plan (:mod:`gradood.harness.plan`). This
repository's root ``conftest.py`` adds the short spelling of each (``--gpu``, ...; see
:mod:`gradood.harness.spelling`). A report or cache directory given that cannot be written, and
a data root or checkpoint directory given that does not exist, are usage errors before any test
runs (the defaults are not checked: a project may never use the harness; a report that cannot
be written there is said at the end). The run ends with the summary of
:mod:`gradood.harness.summary` (after pytest's own short summary).

Marker: ``gradood_gpu`` (needs CUDA; skipped without ``--gradood-gpu``). Fixtures: ``device``
(``"cuda"`` with ``--gradood-gpu``, else ``"cpu"``), ``gradood_report`` (the run's
:class:`gradood.harness.report.Report`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from .session import (  # noqa: F401  (the names the harness's modules had from here)
    ENFORCE_VARIABLE,
    GPU_MARKER,
    PATH_OPTIONS,
    apply_environment,
    details_hint,
    enforce_speed_targets,
    flag,
    given,
    only_gradood_implements,
    option_path,
    report_folder,
    run_report,
    say,
    set_report_folder,
    started_report,
    uses_gpu,
)

__all__ = ["GPU_MARKER", "device", "gradood_report", "paper_measurements"]


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    from ..downloads.speed import DEFAULT_MIN_SPEED, DEFAULT_SPEED_TIME
    from .spelling import RecordingGroup

    group = RecordingGroup(parser.getgroup("gradood"))  # records the options' short spellings
    group.addoption(
        flag("gpu"),
        dest="gradood_gpu",
        action="store_true",
        default=False,
        help="run on the CUDA device (tests marked 'gradood_gpu' need it); a usage error "
        "without one; missed speed targets fail",
    )
    for name, (variable, default, what) in PATH_OPTIONS.items():
        group.addoption(
            flag(name),
            dest=f"gradood_{name}",
            default=None,
            metavar="DIR",
            help=f"{what} (environment: {variable}; default: <rootdir>/{default})",
        )
    group.addoption(
        flag("train"),
        dest="gradood_train",
        action="store_true",
        default=False,
        help="train a protocol's missing ResNet-20 checkpoint with the paper's recipe on the "
        "run's device (see gradood.harness.training)",
    )
    group.addoption(
        flag("train_epochs"),
        dest="gradood_train_epochs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="use (and with --gradood-train, train) ResNet-20s of a shortened N-epoch schedule, "
        "named apart from the paper recipe's",
    )
    group.addoption(
        flag("enforce_speed"),
        dest="gradood_enforce_speed",
        action="store_true",
        default=False,
        help=f"fail missed speed targets on the CPU too (environment: {ENFORCE_VARIABLE}=1)",
    )
    group.addoption(
        flag("download"),
        dest="gradood_download",
        action="store_true",
        default=False,
        help="download the public datasets and checkpoints the run needs that are absent "
        "(never ImageNet; nothing is overwritten; environment: GRADOOD_DOWNLOAD=1; see "
        "gradood.harness.downloading)",
    )
    group.addoption(
        flag("download_min_speed"),
        dest="gradood_download_min_speed",
        type=_non_negative_number,
        default=None,
        metavar="BYTES_PER_S",
        help="a download slower than this on average over a whole window ends (0: never; "
        f"environment: GRADOOD_DOWNLOAD_MIN_SPEED; default: {DEFAULT_MIN_SPEED:g})",
    )
    group.addoption(
        flag("download_speed_time"),
        dest="gradood_download_speed_time",
        type=_positive_number,
        default=None,
        metavar="S",
        help="that window, in seconds (environment: GRADOOD_DOWNLOAD_SPEED_TIME; default: "
        f"{DEFAULT_SPEED_TIME:g})",
    )


def _positive_int(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"an integer >= 1, got {text!r}")
    return int(text)


def _non_negative_number(text: str) -> float:
    return _number(text, minimum=0.0, open_below=False)


def _positive_number(text: str) -> float:
    return _number(text, minimum=0.0, open_below=True)


def _number(text: str, minimum: float, open_below: bool) -> float:
    import argparse

    from .downloading import parse_number

    try:
        return parse_number(text, minimum, open_below)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _unwritable(path: Path) -> str | None:
    """Why no directory could be written at ``path`` (created where missing), or ``None``."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def _choose_report_folder(base: Path) -> Path:
    """The time-stamped folder name under ``base``; created at the end, exclusively (another
    run's gets a suffix: :func:`gradood.harness.writing.new_folder`)."""
    return base / time.strftime("%Y%m%d-%H%M%S")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    apply_environment(config)  # first: from here on, the options alone say what the run does
    config.addinivalue_line(
        "markers", f"{GPU_MARKER}: needs a CUDA device; runs only with {flag('gpu', config)}"
    )
    if uses_gpu(config):
        import torch

        if not torch.cuda.is_available():
            gpu = flag("gpu", config)
            raise pytest.UsageError(
                f"{gpu} was given, but torch finds no CUDA device "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                f"run without {gpu}"
            )
    _check_inputs_exist(config)
    for name in ("report_dir", "cache_dir"):
        if not given(config, name):  # the defaults: a project may never use the harness
            continue
        problem = _unwritable(option_path(config, name))
        if problem is not None:
            variable = PATH_OPTIONS[name][0]
            raise pytest.UsageError(
                f"{flag(name, config)} (or {variable}) {option_path(config, name)}: cannot write "
                f"there: {problem}"
            )
    set_report_folder(config, _choose_report_folder(option_path(config, "report_dir")))
    from .downloading import DownloadHooks, download_speed

    folders = (option_path(config, "data_root"), option_path(config, "checkpoint_dir"))
    hooks = DownloadHooks(*folders, speed=download_speed(config))
    config.pluginmanager.register(hooks, "gradood-download")
    if hasattr(config, "workerinput") or config.getoption("dist", "no") != "no":
        from .gather import ReportParts  # pytest-xdist: the workers' reports join in one

        config.pluginmanager.register(ReportParts(config, lambda: run_report(config)))


#: input directory -> the options (dests) that would create it: it may be absent then
_CREATED_BY = {
    "data_root": ("gradood_download",),
    "checkpoint_dir": ("gradood_download", "gradood_train"),  # the BiT checkpoint; ResNet-20s
}


def _check_inputs_exist(config: pytest.Config) -> None:
    """A data root or checkpoint directory given (flag or environment variable) that is not a
    directory is a usage error (one that exists but lacks datasets makes one-line skips)."""
    for name, creators in _CREATED_BY.items():
        path = option_path(config, name)
        if not given(config, name) or path.is_dir():
            continue
        if not path.exists() and any(config.getoption(c, default=False) for c in creators):
            continue
        problem = "is not a directory" if path.exists() else "does not exist"
        raise pytest.UsageError(
            f"{flag(name, config)} (or {PATH_OPTIONS[name][0]}) {path} {problem}"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if uses_gpu(config):
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA device: run with {flag('gpu', config)}")
    for item in items:
        if item.get_closest_marker(GPU_MARKER) is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """``"cuda"`` with ``--gradood-gpu``, else ``"cpu"``."""
    return "cuda" if uses_gpu(request.config) else "cpu"


@pytest.fixture(scope="session")
def paper_measurements(request: pytest.FixtureRequest, device: str):
    """Measures the paper checks (:class:`gradood.harness.measurements.PaperMeasurements`)."""
    from .measurements import PaperMeasurements

    config = request.config
    cache_dir = option_path(config, "cache_dir")
    return PaperMeasurements(config, device, cache_dir, run_report(config), details_hint(config))


@pytest.fixture(scope="session")
def gradood_report(request: pytest.FixtureRequest):
    """The run's report: add paper comparisons, benchmark tables and speed verdicts to it."""
    return run_report(request.config)


# -- default hook implementations ------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_gradood_open_protocol(config: pytest.Config, name: str):
    from ..protocols import make_protocol, missing
    from .downloading import missing_line
    from .training import record_missing_model

    root = option_path(config, "data_root")
    problems = missing(name, root)
    if problems:
        reason = f"{len(problems)} dataset{'s' if len(problems) > 1 else ''} missing"
        where = f"Under {root} ({flag('data_root', config)}):"
        details = "\n".join(
            [where, *(missing_line(name, p, root, flag("download", config)) for p in problems)]
        )
        run_report(config).add_missing(name, "data", reason, details)
        if only_gradood_implements(config.hook.pytest_gradood_load_model):  # ours: list it too
            record_missing_model(config, name)
        pytest.skip(f"{name}: {reason} ({details_hint(config)})")
    return make_protocol(name, root)


@pytest.hookimpl(trylast=True)
def pytest_gradood_load_model(config: pytest.Config, protocol: str):
    from .training import load_or_train

    return load_or_train(config, protocol)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The plan (what is measured, what is missing, an estimate), before the first test."""
    # without the paper checks' module, no paper check was collected: torch stays unimported
    if session.config.option.collectonly or "gradood.harness.paper_tests" not in sys.modules:
        return
    from .plan import announce

    announce(session.config, session.items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failure shared by many tests is shown in full once, then in one line per test."""
    from .failures import shorten

    report = yield
    shorten(report, call)
    return report


# -- the report ------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, config: pytest.Config):
    """Outermost, so that the summary comes after pytest's short test summary: last."""
    result = yield
    report = started_report(config)
    if (
        hasattr(config, "workerinput")  # an xdist worker: the controller reports
        or report is None
        or report.is_empty()
    ):
        return result
    from .summary import summary_lines
    from .writing import write_run_report

    lines, problem = write_run_report(report, report_folder(config), summary_lines)
    if problem is not None:
        terminalreporter.write_line(problem)
    terminalreporter.section("gradood summary")
    for line in lines:
        terminalreporter.write_line(line)
    return result
