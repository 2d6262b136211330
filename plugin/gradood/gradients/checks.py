"""Checks that the per-sample gradients are defined: samples do not interact, losses are one
per sample, generic-rule owners draw no random masks, and every selected parameter is used
inside its own module's forward."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.overrides import TorchFunctionMode

from .base import Target


def check_samples_are_independent(model: nn.Module) -> None:
    """Raises if a BatchNorm couples the samples (batch statistics); warns on active dropout,
    whose per-sample gradients are those of this pass's random masks."""
    coupled = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        and (module.training or module.running_mean is None or module.running_var is None)
    ]
    if coupled:
        raise ValueError(
            "per-sample gradients are undefined when samples interact through batch "
            f"statistics: {', '.join(coupled)} normalize with the batch's statistics (training "
            "mode or no running statistics); call model.eval()"
        )
    dropout = [name for name, module in model.named_modules() if _is_active_dropout(module)]
    if dropout:
        warnings.warn(
            f"dropout is active in {', '.join(dropout)} (training mode): the per-sample "
            "gradients are those of the random masks drawn in this pass; call model.eval() for "
            "deterministic values",
            stacklevel=3,
        )


def _is_active_dropout(module: nn.Module) -> bool:
    return isinstance(module, _DropoutNd) and module.training and module.p > 0


def check_losses(losses: Any, batch: int) -> None:
    """Raises unless ``losses`` is a floating-point tensor of shape ``(batch,)``."""
    if not isinstance(losses, Tensor) or losses.shape != (batch,):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(
            f"per_sample_loss must return one loss per sample, shape ({batch},), got {shape}"
        )
    if not losses.is_floating_point():
        raise ValueError(f"per_sample_loss must return floating-point losses, got {losses.dtype}")


def check_no_active_dropout(name: str, module: nn.Module) -> None:
    """Raises if ``module``, whose forward the generic rule re-runs, contains active dropout."""
    active = [n for n, m in module.named_modules() if _is_active_dropout(m)]
    if active:
        raise ValueError(
            f"module '{name}' ({type(module).__name__}) contains active dropout "
            f"({', '.join(active)}); the per-sample gradients of its parameters re-run its "
            "forward, which would draw new masks; call model.eval()"
        )


class ParameterUseGuard(TorchFunctionMode):
    """Records selected parameters used by a torch function outside every module that
    registers them; such uses are invisible to the module rules."""

    def __init__(self, targets: list[Target], active: Counter):
        super().__init__()
        self.owners: dict[int, set[int]] = {}
        self.names: dict[int, str] = {}
        for target in targets:
            for attr, name in target.params:
                param = target.module.get_parameter(attr)
                self.owners.setdefault(id(param), set()).add(id(target.module))
                self.names[id(param)] = name
        self.active = active
        self.misused: dict[str, str] = {}

    def _check(self, value: Any, func: Any) -> None:
        owners = self.owners.get(id(value))
        if owners is not None and not any(self.active[m] for m in owners):
            self.misused.setdefault(self.names[id(value)], getattr(func, "__name__", str(func)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if isinstance(result, Tensor) and result.is_floating_point():
            for value in (*args, *kwargs.values()):
                if isinstance(value, (list, tuple)):
                    for inner in value:
                        self._check(inner, func)
                else:
                    self._check(value, func)
        return result

    def __exit__(self, exc_type, exc, traceback):
        super().__exit__(exc_type, exc, traceback)
        if exc_type is None and self.misused:
            uses = ", ".join(f"{name} (in {func})" for name, func in self.misused.items())
            raise ValueError(
                f"parameters used outside the forward of the module that registers them: {uses}. "
                "Per-sample gradients follow each parameter through its own module's calls; "
                "move the computation into that module, or leave these parameters out"
            )
        return False
