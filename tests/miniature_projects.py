"""Projects for inner runs of the main job on a generated miniature: hooks that open it for
one protocol and skip the others, and the harness's folders under the test's ``tmp_path``."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from gradood.testing import make_cifar_layout

__all__ = [
    "CIFAR10_HOOKS",
    "MINIATURE_FILE",
    "harness_options",
    "make_cifar10_project",
    "only_protocol_hooks",
]

# the pickled miniature, beside the file of the hooks that open it
MINIATURE_FILE = "miniature.pkl"

# each folder of the harness, and its option
_FOLDERS = {
    "checkpoints": "--gradood-checkpoint-dir",
    "cache": "--gradood-cache-dir",
    "reports": "--gradood-report-dir",
}


def only_protocol_hooks(protocol: str, label: str) -> str:
    """The source of hooks that open the miniature in ``MINIATURE_FILE`` for ``protocol`` and
    skip every other protocol with "only the <label> miniature"."""
    return f"""
import pickle
from pathlib import Path

import pytest

MINIATURE = pickle.loads(Path(__file__).with_name({MINIATURE_FILE!r}).read_bytes())


@pytest.hookimpl(tryfirst=True)
def pytest_gradood_open_protocol(config, name):
    if name != {protocol!r}:
        pytest.skip("only the {label} miniature")
    return MINIATURE.open()
"""


CIFAR10_HOOKS = only_protocol_hooks("cifar10", "CIFAR-10")


def make_cifar10_project(pytester: pytest.Pytester, tmp_path: Path) -> pytest.Pytester:
    """``pytester`` set up to run Table 6 on a CIFAR-10 miniature of 8 test and 20 training
    images (the CIFAR-100 rows skipped)."""
    layouts = make_cifar_layout(tmp_path / "data", test_images=8, train_images=20)
    (pytester.path / MINIATURE_FILE).write_bytes(pickle.dumps(layouts["cifar10"]))
    pytester.makeconftest(CIFAR10_HOOKS)
    pytester.makepyfile(test_paper="from gradood.harness.paper_tests import test_table6\n")
    for folder in _FOLDERS:
        (tmp_path / folder).mkdir()  # a folder given and absent is a usage error
    return pytester


def harness_options(tmp_path: Path) -> list[str]:
    """The options of an inner run: the harness's folders under ``tmp_path``, no Mahalanobis
    rows (their fit is the slowest part and tells these tests nothing)."""
    options = ["-p", "no:cacheprovider", "-k", "not Mahalanobis"]
    return options + [f"{option}={tmp_path / folder}" for folder, option in _FOLDERS.items()]
