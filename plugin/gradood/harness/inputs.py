"""The protocols' benchmarks, opened once per run through the ``pytest_gradood_open_protocol``
hook, for the plan, the training and the measurements alike; a skip is repeated, an error is
reported in full once (:mod:`.failures`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from .failures import shared_failures

__all__ = ["hook_model", "load_model", "open_benchmark"]

_OPENED = pytest.StashKey[dict]()
_LOADED = pytest.StashKey[dict]()


@dataclass(frozen=True)
class _Skipped:
    reason: str


def open_benchmark(config: pytest.Config, name: str):
    """The benchmark of protocol ``name`` from the hook, opened on the first call; a skip (what
    is missing) is remembered and repeated; an error is raised in full once, then in one line."""
    return _once(
        config,
        _OPENED,
        name,
        lambda: config.hook.pytest_gradood_open_protocol(config=config, name=name),
    )


def load_model(config: pytest.Config, protocol: str):
    """The model of ``protocol`` from the ``pytest_gradood_load_model`` hook, loaded (or
    trained) on the first call; a skip is remembered and repeated."""
    return _once(
        config,
        _LOADED,
        protocol,
        lambda: config.hook.pytest_gradood_load_model(config=config, protocol=protocol),
    )


def hook_model(config: pytest.Config, protocol: str):
    """The model of ``protocol`` from an implementation of ``pytest_gradood_load_model`` other
    than the harness's own (which may train or download), kept for :func:`load_model`; ``None``
    if none returns one."""
    from .session import harness_defaults

    defaults = harness_defaults(config.hook.pytest_gradood_load_model)
    caller = config.pluginmanager.subset_hook_caller(
        "pytest_gradood_load_model", remove_plugins=defaults
    )
    loaded = config.stash.setdefault(_LOADED, {})
    failures = shared_failures(config)
    if failures.failed((_LOADED, protocol)):
        failures.raise_again((_LOADED, protocol))
    if protocol in loaded:
        return _repeated(loaded[protocol])
    try:
        model = caller(config=config, protocol=protocol)
    except pytest.skip.Exception as skipped:
        loaded[protocol] = _Skipped(str(skipped.msg))
        raise
    except Exception as error:  # the first test that loads the model shows it in full
        failures.record((_LOADED, protocol), error)
        raise
    if model is not None:
        loaded[protocol] = model
    return model


def _once(config: pytest.Config, key: pytest.StashKey[dict], name: str, make: Callable):
    done = config.stash.setdefault(key, {})
    if name not in done:
        try:
            done[name] = shared_failures(config).call((key, name), make)
        except pytest.skip.Exception as skipped:
            done[name] = _Skipped(str(skipped.msg))
    return _repeated(done[name])


def _repeated(value):
    """``value`` as it was first made: a skip is repeated."""
    if isinstance(value, _Skipped):
        pytest.skip(value.reason)
    return value
