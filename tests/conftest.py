"""Settings shared by the unit tests."""

from __future__ import annotations

import pytest
import torch
from _pytest import pytester as pytester_module
from download_server import Served, local_server

from gradood.harness.downloading import SPEED_VARIABLES
from gradood.harness.session import PATH_OPTIONS, SWITCH_VARIABLES

# the variables that the main job reads as its options (docs/harness.md)
HARNESS_VARIABLES = (
    *(variable for variable, _default, _what in PATH_OPTIONS.values()),
    *SWITCH_VARIABLES.values(),
    *SPEED_VARIABLES.values(),
)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests use tiny tensors, which gain nothing from intra-op threads; on a busy machine
    those threads make every operation wait for each other (milliseconds instead of
    microseconds). One thread also makes float reductions independent of the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_harness_variables(monkeypatch):
    """A developer's exported ``GRADOOD_DOWNLOAD=1`` or ``GRADOOD_DATA_ROOT`` counts as the
    option given: the tests' runs, subprocesses included, see none of them (otherwise a test
    could download gigabytes, or read the developer's data)."""
    for variable in HARNESS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


# Libraries an in-process run may import lazily. pytester drops every module a run imported,
# and these fail when imported a second time in one interpreter: their compiled parts stay
# loaded and no longer match the classes made anew (pandas: "AssertionError: StringArray").
LIBRARIES_KEPT_BETWEEN_RUNS = ("numpy", "pandas", "matplotlib", "PIL", "scipy", "sklearn", "torch")


class _SnapshotKeepingLibraries(pytester_module.SysModulesSnapshot):
    def __init__(self, preserve=None) -> None:
        def kept(name: str) -> bool:
            library = name.partition(".")[0]
            return library in LIBRARIES_KEPT_BETWEEN_RUNS or bool(preserve and preserve(name))

        super().__init__(preserve=kept)


@pytest.fixture
def _libraries_kept_between_runs(monkeypatch):
    monkeypatch.setattr(pytester_module, "SysModulesSnapshot", _SnapshotKeepingLibraries)


@pytest.fixture
def pytester(_libraries_kept_between_runs, pytester, monkeypatch):
    """pytester, with runs that keep the libraries they imported (``LIBRARIES_KEPT_BETWEEN_RUNS``)
    and print the same on every machine: 80 columns whatever the terminal, and no CI mode (pytest
    prints the short test summary untruncated when ``CI`` or ``BUILD_NUMBER`` is set)."""
    monkeypatch.setenv("COLUMNS", "80")
    for name in ("CI", "BUILD_NUMBER"):
        monkeypatch.delenv(name, raising=False)
    return pytester


@pytest.fixture
def served(monkeypatch):
    """What a local HTTP server serves (:class:`download_server.Served`, empty at first), every
    download of gradood sent to it for the test's duration."""
    served = Served()
    with local_server(served, monkeypatch):
        yield served
