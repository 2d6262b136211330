"""gradood's hook specifications: implement them in a ``conftest.py`` or a plugin to run the
harness on other data or models (the first implementation that returns a value wins)."""

from __future__ import annotations

import pytest

__all__ = ["pytest_gradood_load_model", "pytest_gradood_open_protocol"]


@pytest.hookspec(firstresult=True)
def pytest_gradood_open_protocol(config: pytest.Config, name: str):
    """Return the pytorch-ood benchmark of protocol ``name`` (``"imagenet"``, ``"cifar10"``,
    ``"cifar100"``), or call ``pytest.skip`` with what is missing. Default: the protocol on
    ``--gradood-data-root``."""


@pytest.hookspec(firstresult=True)
def pytest_gradood_load_model(config: pytest.Config, protocol: str):
    """Return the model (eval mode, on the CPU) of protocol ``protocol``, or call
    ``pytest.skip`` with what is missing. Default: the checkpoint in
    ``--gradood-checkpoint-dir``."""
