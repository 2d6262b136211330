"""gradood's pytest plugin: the ``--gpu`` option and the ``gpu`` marker.

Loaded once, by the repository's root ``conftest.py`` (``pytest_plugins``), so that
``pytest tests`` and ``pytest benchmarks`` share it.

- ``--gpu``: run on the CUDA device; a usage error if none is available.
- ``@pytest.mark.gpu``: the test needs a CUDA device; it is skipped without ``--gpu``.
- fixture ``device``: ``"cuda"`` with ``--gpu``, else ``"cpu"``.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradood")
    group.addoption(
        "--gpu",
        action="store_true",
        default=False,
        help="run on the CUDA device (tests marked 'gpu' need it); a usage error without one",
    )


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
