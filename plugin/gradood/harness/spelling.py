"""The short spellings of gradood's pytest options: ``--gpu`` for ``--gradood-gpu``.

The installed plugin registers only prefixed names (``--gradood-...``), because it loads in every
project where gradood is installed and must not collide with other plugins' options. This
repository's root ``conftest.py`` calls :func:`add_short_spellings`, which adds, for every
prefixed option the plugin registered (through :class:`RecordingGroup`), the same option without
the prefix: same destination, action, default and type, so both spellings mean one thing. Messages
then name the spelling the run accepts (:func:`spelled`).

Imports only pytest and the standard library (the plugin's load must stay cheap).
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

__all__ = ["PREFIX", "RecordingGroup", "add_short_spellings", "short_form", "spelled"]

PREFIX = "--gradood-"
#: set (to True) only where :func:`add_short_spellings` ran
_ACTIVE_DEST = "gradood_short_spellings"
#: prefixed option -> the attributes it was registered with (registration is idempotent)
_REGISTERED: dict[str, dict[str, Any]] = {}


class RecordingGroup:
    """pytest's option group, recording every prefixed option it adds for
    :func:`add_short_spellings`."""

    def __init__(self, group: pytest.OptionGroup):
        self._group = group

    def addoption(self, *names: str, **attrs: Any) -> None:
        self._group.addoption(*names, **attrs)
        for name in names:
            if name.startswith(PREFIX):
                dest = attrs.get("dest") or name[2:].replace("-", "_")
                _REGISTERED[name] = {**attrs, "dest": dest}


def short_form(name: str) -> str:
    """``--gradood-data-root`` -> ``--data-root``."""
    return "--" + name.removeprefix(PREFIX)


def add_short_spellings(parser: pytest.Parser) -> list[str]:
    """Add the short spelling of every prefixed option the plugin registered; return them.

    A short name that another plugin already uses is left out (its prefixed name still works).
    """
    group = parser.getgroup("gradood")
    added = []
    for name, attrs in _REGISTERED.items():
        short = short_form(name)
        try:
            group.addoption(short, **{**attrs, "help": f"this repository's spelling of {name}"})
        except (ValueError, argparse.ArgumentError):  # the name is taken
            continue
        added.append(short)
    group.addoption(
        PREFIX + "short-spellings",
        dest=_ACTIVE_DEST,
        action="store_true",
        default=True,
        help=argparse.SUPPRESS,
    )
    return added


def spelled(config: pytest.Config | None, name: str) -> str:
    """``name`` (a prefixed option) as this run spells it: short where
    :func:`add_short_spellings` ran (this repository) unless the user typed the prefixed name,
    else prefixed."""
    if config is None or not config.getoption(_ACTIVE_DEST, default=False):
        return name
    typed = [str(arg).split("=", 1)[0] for arg in config.invocation_params.args]
    return name if name in typed else short_form(name)  # the spelling the user typed
