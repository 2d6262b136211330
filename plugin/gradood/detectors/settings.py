"""How a detector shows its settings: its constructor's parameters as the class's signature
(``inspect.signature``, ``help()``, the API reference) and its settings in its ``repr``,
``GradNorm(p=2, temperature=4, head='fc')``."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["InitSignature", "ShowsSettings", "settings_repr"]

#: a list longer than this is shown by its first and last items and its length
_LONGEST_SHOWN = 6


class InitSignature:
    """``__signature__ = InitSignature()`` in a class body: the class's signature is its
    ``__init__``'s without ``self``, also where a ``__new__(cls, *args, **kwargs)`` would hide
    it. Read through a subclass, it is that subclass's ``__init__``'s; an instance has none of
    its own (its signature is its ``__call__``'s)."""

    def __get__(self, instance: object, owner: type) -> inspect.Signature:
        if instance is not None:
            raise AttributeError("__signature__")
        signature = inspect.signature(owner.__init__)
        parameters = list(signature.parameters.values())[1:]
        return signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty)


class ShowsSettings:
    """Mixin: ``repr(detector)`` is ``Name(setting=value, ...)`` with the settings of
    ``_settings()``; ``Name`` is the class's own ``_repr_name`` (the constructor users call,
    where it is another class), else the class's name."""

    def _settings(self) -> dict[str, Any]:
        """The settings that determine the scores, in the constructor's order."""
        raise NotImplementedError

    def __repr__(self) -> str:
        name = type(self).__dict__.get("_repr_name", type(self).__name__)
        return settings_repr(name, self._settings())


def settings_repr(name: str, settings: Mapping[str, Any]) -> str:
    """``name(key=value, ...)``: strings quoted, floats in ``%g`` (``2.0`` is ``2``), long
    lists shortened to their ends and length."""
    return f"{name}({', '.join(f'{key}={_shown(value)}' for key, value in settings.items())})"


def _shown(value: Any) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return f"{float(value):g}"
    if isinstance(value, (list, tuple)):
        items = [_shown(v) for v in value]
        if len(items) > _LONGEST_SHOWN:
            items = [*items[:2], f"... ({len(items)} in all)", items[-1]]
        ends = "[]" if isinstance(value, list) else "()"
        trailing = "," if isinstance(value, tuple) and len(value) == 1 else ""
        return f"{ends[0]}{', '.join(items)}{trailing}{ends[1]}"
    return repr(value)
