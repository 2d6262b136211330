"""One object per (model, key), kept only as long as something else holds it.

pytorch-ood's ``Benchmark.evaluate`` and ``GridSearch`` cache an encoder's outputs by the
encoder's identity, so detectors built on the same model and settings should share one encoder
object. The cache references neither the model nor the objects strongly: it never keeps a model
alive.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import TypeVar

from torch import nn

__all__ = ["shared_for"]

#: the type of the shared object (what ``build`` returns)
T = TypeVar("T")

_SHARED: weakref.WeakKeyDictionary[nn.Module, weakref.WeakValueDictionary] = (
    weakref.WeakKeyDictionary()
)


def shared_for(model: nn.Module, key: Hashable, build: Callable[[], T]) -> T:
    """The live object stored for ``(model, key)``, or ``build()``'s, stored (weakly) now."""
    per_model = _SHARED.setdefault(model, weakref.WeakValueDictionary())
    found = per_model.get(key)
    if found is None:
        found = build()
        per_model[key] = found
    return found
