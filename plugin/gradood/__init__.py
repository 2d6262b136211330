"""gradood: gradient-based OOD detectors for pytorch-ood, and the GradNorm paper's protocols.

The public names are imported on first use (PEP 562), so that importing a submodule (the pytest
plugin :mod:`gradood.harness.plugin`, loaded in every pytest run where gradood is installed)
does not import torch, pytorch-ood, torchvision or timm.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .detectors import GAIA, GradNorm, LeeAlRegib, MahalanobisEnsemble
    from .evaluate import evaluate
    from .metrics import paper_metrics
    from .registry import available_detectors, build_and_fit, create_detector

#: public name -> the submodule that defines it
_PUBLIC = {
    "GAIA": ".detectors",
    "GradNorm": ".detectors",
    "LeeAlRegib": ".detectors",
    "MahalanobisEnsemble": ".detectors",
    "available_detectors": ".registry",
    "build_and_fit": ".registry",
    "create_detector": ".registry",
    "evaluate": ".evaluate",
    "paper_metrics": ".metrics",
}

__all__ = [
    "GAIA",
    "GradNorm",
    "LeeAlRegib",
    "MahalanobisEnsemble",
    "available_detectors",
    "build_and_fit",
    "create_detector",
    "evaluate",
    "paper_metrics",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'gradood' has no attribute '{name}'")
    value = getattr(import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


class _Package(types.ModuleType):
    """Keeps a public name bound to its object when the submodule of the same name
    (``gradood.evaluate``) is imported: the import system sets the package attribute to the
    submodule after loading it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
