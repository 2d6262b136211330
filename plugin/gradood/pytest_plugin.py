"""gradood's pytest plugin: options, markers, hooks and the side-by-side report.

Loaded once, by the repository's root ``conftest.py`` (``pytest_plugins``), so that
``pytest tests`` and ``pytest benchmarks`` share it.

Options (each with an environment variable):

- ``--gpu``: run on the CUDA device; a usage error if none is available.
- ``--data-root`` (``GRADOOD_DATA_ROOT``, default ``<rootdir>/data``): the datasets, laid out
  as the README's "Datasets" section says.
- ``--checkpoint-dir`` (``GRADOOD_CHECKPOINTS``, default ``<rootdir>/checkpoints``): the
  authors' ``BiT-S-R101x1-flat-finetune.pth.tar`` and the trained ``resnet20-cifar10.pt`` /
  ``resnet20-cifar100.pt``.
- ``--cache-dir`` (``GRADOOD_CACHE_DIR``, default ``<rootdir>/.gradood-cache``): the feature
  cache of :mod:`gradood.features`.
- ``--report-dir`` (``GRADOOD_REPORT_DIR``, default ``<rootdir>/reports``): each run writes its
  report into a new time-stamped folder there.
- ``--enforce-speed-targets`` (``GRADOOD_ENFORCE_SPEED_TARGETS=1``): a missed speed target
  fails its test on the CPU too (with ``--gpu`` it always does); otherwise CPU verdicts are
  reported only, as a shared CPU's timings say little.

An unwritable ``--report-dir`` or ``--cache-dir`` is a usage error before any test runs. The
run ends with the summary of :mod:`gradood.harness.summary` (after pytest's own short summary).

Markers: ``gpu`` (needs CUDA; skipped without ``--gpu``). Fixtures: ``device`` (``"cuda"``
with ``--gpu``, else ``"cpu"``), ``gradood_report`` (the run's :class:`gradood.report.Report`).

Hooks (implement them in a ``conftest.py`` or a ``-p`` plugin to evaluate other data or
models): ``pytest_gradood_open_protocol(config, name)`` and
``pytest_gradood_load_model(config, protocol)``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

__all__ = [
    "CHECKPOINT_FILES",
    "HookSpecs",
    "details_hint",
    "enforce_speed_targets",
    "option_path",
    "report_folder",
    "run_report",
    "say",
]

#: the checkpoint file of each protocol's model under ``--checkpoint-dir``
CHECKPOINT_FILES = {
    "imagenet": "BiT-S-R101x1-flat-finetune.pth.tar",
    "cifar10": "resnet20-cifar10.pt",
    "cifar100": "resnet20-cifar100.pt",
}

_PATH_OPTIONS = {
    "data_root": ("--data-root", "GRADOOD_DATA_ROOT", "data", "the datasets"),
    "checkpoint_dir": (
        "--checkpoint-dir",
        "GRADOOD_CHECKPOINTS",
        "checkpoints",
        "the models' checkpoints",
    ),
    "cache_dir": ("--cache-dir", "GRADOOD_CACHE_DIR", ".gradood-cache", "the feature cache"),
    "report_dir": ("--report-dir", "GRADOOD_REPORT_DIR", "reports", "the run reports"),
}
_REPORT = pytest.StashKey["object"]()
_FOLDER = pytest.StashKey[Path]()
_ENFORCE_VARIABLE = "GRADOOD_ENFORCE_SPEED_TARGETS"


class HookSpecs:
    """gradood's hooks; the first implementation that returns a value wins."""

    @pytest.hookspec(firstresult=True)
    def pytest_gradood_open_protocol(self, config: pytest.Config, name: str):
        """Return the pytorch-ood benchmark of protocol ``name`` (``"imagenet"``, ``"cifar10"``,
        ``"cifar100"``), or call ``pytest.skip`` with what is missing. Default: the protocol
        on ``--data-root``."""

    @pytest.hookspec(firstresult=True)
    def pytest_gradood_load_model(self, config: pytest.Config, protocol: str):
        """Return the model (eval mode, on the CPU) of protocol ``protocol``, or call
        ``pytest.skip`` with what is missing. Default: the checkpoint in ``--checkpoint-dir``."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(HookSpecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradood")
    group.addoption(
        "--gpu",
        action="store_true",
        default=False,
        help="run on the CUDA device (tests marked 'gpu' need it); a usage error without one",
    )
    for dest, (flag, variable, default, what) in _PATH_OPTIONS.items():
        group.addoption(
            flag,
            dest=dest,
            default=None,
            metavar="DIR",
            help=f"{what} (environment: {variable}; default: <rootdir>/{default})",
        )
    group.addoption(
        "--enforce-speed-targets",
        action="store_true",
        default=False,
        help=f"fail missed speed targets on the CPU too (environment: {_ENFORCE_VARIABLE}=1); "
        "with --gpu they always fail",
    )


def option_path(config: pytest.Config, name: str) -> Path:
    """The directory of path option ``name`` (``"data_root"``, ``"checkpoint_dir"``,
    ``"cache_dir"``, ``"report_dir"``): the option, else its environment variable, else the
    default under pytest's rootdir."""
    _flag, variable, default, _what = _PATH_OPTIONS[name]
    value = config.getoption(name) or os.environ.get(variable)
    return Path(value).expanduser() if value else Path(config.rootpath) / default


def enforce_speed_targets(config: pytest.Config) -> bool:
    """Whether a missed speed target fails: with ``--gpu`` or ``--enforce-speed-targets``."""
    return bool(
        config.getoption("gpu")
        or config.getoption("enforce_speed_targets")
        or os.environ.get(_ENFORCE_VARIABLE) == "1"
    )


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
    """A new time-stamped folder name under ``base`` (not created here)."""
    folder = base / time.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while folder.exists():  # never write into an earlier run's folder
        folder = folder.with_name(f"{folder.name.split('.')[0]}.{suffix}")
        suffix += 1
    return folder


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; runs only with --gpu")
    if config.getoption("gpu"):
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError(
                "--gpu was given, but torch finds no CUDA device "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                "run without --gpu"
            )
    for name in ("report_dir", "cache_dir"):
        problem = _unwritable(option_path(config, name))
        if problem is not None:
            flag, variable = _PATH_OPTIONS[name][:2]
            raise pytest.UsageError(
                f"{flag} (or {variable}) {option_path(config, name)}: cannot write there: {problem}"
            )
    config.stash[_FOLDER] = _choose_report_folder(option_path(config, "report_dir"))


def report_folder(config: pytest.Config) -> Path:
    """This run's report folder (written at the end of the run, if there is anything to say)."""
    return config.stash[_FOLDER]


def run_report(config: pytest.Config):
    """This run's :class:`gradood.report.Report`."""
    from .report import Report

    if _REPORT not in config.stash:
        config.stash[_REPORT] = Report()
    return config.stash[_REPORT]


def say(config: pytest.Config, message: str) -> None:
    """Print a progress line now, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() < 0:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        reporter.write_line(message)
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(message)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("gpu"):
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: run with --gpu")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """``"cuda"`` with ``--gpu``, else ``"cpu"``."""
    return "cuda" if request.config.getoption("gpu") else "cpu"


@pytest.fixture(scope="session")
def gradood_report(request: pytest.FixtureRequest):
    """The run's report: add paper comparisons, benchmark tables and speed verdicts to it."""
    return run_report(request.config)


# -- default hook implementations ------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_gradood_open_protocol(config: pytest.Config, name: str):
    from .protocols import make_protocol, missing

    root = option_path(config, "data_root")
    problems = missing(name, root)
    if problems:
        reason = f"{len(problems)} dataset{'s' if len(problems) > 1 else ''} missing"
        details = "\n".join([f"Under {root} (--data-root):", *(f"- {p}" for p in problems)])
        run_report(config).add_missing(name, "data", reason, details)
        pytest.skip(f"{name}: {reason} ({details_hint(config)})")
    return make_protocol(name, root)


def details_hint(config: pytest.Config) -> str:
    """Where this run's report says what is missing, for a one-line skip reason."""
    from .harness.summary import shown_path
    from .report import MISSING_DATA

    return f"details: {shown_path(report_folder(config) / MISSING_DATA)}"


@pytest.hookimpl(trylast=True)
def pytest_gradood_load_model(config: pytest.Config, protocol: str):
    from .models import BIT_S_R101X1_URL, bit_s_r101x1, load_resnet20

    path = option_path(config, "checkpoint_dir") / CHECKPOINT_FILES[protocol]
    if not path.is_file():
        if protocol == "imagenet":
            how = f"download the authors' fine-tuned checkpoint {BIT_S_R101X1_URL} there"
        else:
            how = (
                f"train it: python -m gradood.models.train --dataset {protocol} "
                f"--data-root <data root> --out {path}"
            )
        reason = f"model {path.name} missing"
        run_report(config).add_missing(protocol, "model", reason, f"- {path} is missing: {how}")
        pytest.skip(f"{protocol}: {reason} ({details_hint(config)})")
    if protocol == "imagenet":
        return bit_s_r101x1(path)
    return load_resnet20(path)


# -- the report ------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, config: pytest.Config):
    """Outermost, so that the summary comes after pytest's short test summary: last."""
    result = yield
    report = config.stash.get(_REPORT, None)
    if report is None or not (
        report.tables or report.comparisons or report.speed or report.skipped
    ):
        return result
    from .files import atomic_write_text
    from .harness.summary import summary_lines

    folder = report_folder(config)
    try:
        report.write(folder)
    except OSError as error:
        terminalreporter.write_line(f"gradood: the report could not be written: {error}")
        folder = None
    lines = summary_lines(report, folder)
    if folder is not None:
        atomic_write_text(folder / "summary.txt", "\n".join(lines) + "\n")
    terminalreporter.section("gradood summary")
    for line in lines:
        terminalreporter.write_line(line)
    return result
