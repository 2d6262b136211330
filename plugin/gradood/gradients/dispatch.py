"""Which rule a module gets: exact types get theirs, a subclass of a known layer gets a rule
only after a float64 probe shows it computes that rule's function, anything else the generic
rule."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from .base import Rule
from .functional import FunctionalRule
from .norm import NormRule
from .outer_product import Conv2dRule, LinearRule

#: fan-in standardization epsilons tried for a conv subclass without an ``eps`` attribute:
#: big_transfer's 1e-10, timm's BiT 1e-8 and default 1e-6, and 1e-5
_STANDARDIZATION_EPSILONS = (1e-10, 1e-8, 1e-6, 1e-5)


#: the norm layers and the normalization (:class:`NormRule` kind) each computes
_NORM_KINDS: dict[type, str] = {
    nn.GroupNorm: "group",
    nn.LayerNorm: "layer",
    nn.BatchNorm1d: "batch",
    nn.BatchNorm2d: "batch",
    nn.BatchNorm3d: "batch",
}

_FUNCTIONAL = FunctionalRule()
_EXACT_RULES: dict[type, Rule] = {
    nn.Linear: LinearRule(),
    nn.Conv2d: Conv2dRule(),
    **{layer: NormRule(kind) for layer, kind in _NORM_KINDS.items()},
}


def _candidate_rules(module: nn.Module) -> list[Rule]:
    """Rules that a subclass of a known layer might follow, most plain first."""
    if isinstance(module, nn.Linear):
        return [LinearRule()]
    if isinstance(module, nn.Conv2d):
        eps = getattr(module, "eps", None)
        epsilons = [None] if isinstance(eps, float) else list(_STANDARDIZATION_EPSILONS)
        return [
            Conv2dRule(standardized=standardized, eps=e, same_pad=same_pad)
            for same_pad in (False, True)
            for standardized, e in [(False, None)] + [(True, e) for e in epsilons]
        ]
    kind = next((k for layer, k in _NORM_KINDS.items() if isinstance(module, layer)), None)
    return [] if kind is None else [NormRule(kind), NormRule(kind, relu=True)]


_PROBED: weakref.WeakKeyDictionary[nn.Module, Rule] = weakref.WeakKeyDictionary()


def rule_for(module: nn.Module) -> Rule:
    """The rule for ``module``'s own parameters: the generic rule if it registers any other
    than ``weight`` and ``bias``; its type's rule for an exact known type; for a subclass the
    first candidate rule that the float64 probe confirms (cached per module), else generic."""
    own = {name for name, _ in module.named_parameters(recurse=False, remove_duplicate=False)}
    if not own <= {"weight", "bias"}:
        return _FUNCTIONAL
    exact = _EXACT_RULES.get(type(module))
    if exact is not None:
        return exact
    rule = _PROBED.get(module)
    if rule is None:
        candidates = _candidate_rules(module)
        rule = next((r for r in candidates if _reproduces(r, module)), _FUNCTIONAL)
        _PROBED[module] = rule
    return rule


def _probe_parameter(tensor: Tensor, generator: torch.Generator) -> Tensor:
    values = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
    if tensor.ndim >= 2:  # rows of very different variance pin down a standardization epsilon
        scales = torch.logspace(-7, 0, tensor.shape[0], dtype=torch.float64)
        values = values * scales.reshape(-1, *([1] * (tensor.ndim - 1)))
    return values


def _probe_buffer(name: str, tensor: Tensor, generator: torch.Generator) -> Tensor:
    if not tensor.is_floating_point():
        return tensor.cpu()
    values = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
    return values + 0.5 if "var" in name else values - 0.5


def _close(expected: Tensor, ours: Tensor) -> bool:
    # float64 rounding is ~1e-16 of the largest terms; a wrong candidate differs by O(1)
    if not isinstance(expected, Tensor) or expected.shape != ours.shape:
        return False
    tolerance = 1e-9 * float(expected.abs().max()) + 1e-300
    return bool(((expected - ours).abs() <= 1e-7 * expected.abs() + tolerance).all())


def _reproduces(rule: Rule, module: nn.Module) -> bool:
    """Whether ``module`` computes exactly ``rule``'s function, and its gradient with respect
    to the parameters (no detach, no custom backward), on a float64 probe."""
    generator = torch.Generator().manual_seed(0)
    params = {n: _probe_parameter(t, generator) for n, t in module.named_parameters(recurse=False)}
    buffers = {
        n: _probe_buffer(n, t, generator)
        for n, t in module.named_buffers(recurse=False)
        if t is not None
    }
    try:
        x = rule.probe_input(module, generator)
        expected, module_vjp = torch.func.vjp(
            lambda p: torch.func.functional_call(module, {**p, **buffers}, (x,)), params
        )
        ours, rule_vjp = torch.func.vjp(
            lambda p: rule.reference(module, x, {**p, **buffers}), params
        )
        if not _close(expected, ours):
            return False
        cotangent = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
        (expected_grads,), (our_grads,) = module_vjp(cotangent), rule_vjp(cotangent)
    except Exception:
        return False
    return all(_close(expected_grads[n], our_grads[n]) for n in params)
