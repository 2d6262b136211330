"""The entry points: parameter selection, argument checks and one pass over the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..grad_mode import autograd_enabled, ordinary
from ..validation import check_norm_order
from .base import Settings, Target
from .checks import (
    check_no_active_dropout,
    check_samples_are_independent,
)
from .dispatch import rule_for
from .functional import FunctionalRule
from .session import Session

#: default bound on the elements of one chunk's temporary tensors (64 MiB in float32)
DEFAULT_WORKSPACE_ELEMENTS = 2**24

_METHODS = ("auto", "ghost", "padded-gram", "materialize", "conv-backward")


def resolve_parameter_names(
    model: nn.Module,
    names: str | Sequence[str] | None,
    param_filter: Callable[[str], bool] | None = None,
) -> list[str]:
    """Qualified parameter names selected by ``names`` and ``param_filter``, in
    ``model.named_parameters()`` order.

    :param names: ``None`` for all parameters, or names of parameters or modules (a module
        selects all its parameters, e.g. ``"layer4"``)
    :param param_filter: keeps a selected parameter if ``param_filter(qualified name)`` is true
        (pytorch-ood's ``param_filter``); ``None`` keeps all
    :raises ValueError: if a name matches no parameter or module, or nothing is selected
    """
    all_names = [name for name, _ in model.named_parameters()]
    selected = set(all_names) if names is None else _named_selection(model, all_names, names)
    if param_filter is not None:
        if not callable(param_filter):
            raise TypeError(f"param_filter must be a function of a name, got {param_filter!r}")
        selected = {name for name in selected if param_filter(name)}
    if not selected:
        asked = "" if names is None else f" of {names!r}"
        by = " that param_filter accepts" if param_filter is not None else ""
        raise ValueError(
            f"the selection{asked} holds no parameter{by}: {type(model).__name__} has "
            f"{len(all_names)} parameters; select at least one"
        )
    return [n for n in all_names if n in selected]


def _named_selection(
    model: nn.Module, all_names: list[str], names: str | Sequence[str]
) -> set[str]:
    """The parameters that ``names`` (parameter or module names) select."""
    if isinstance(names, str):
        names = [names]
    selected: set[str] = set()
    for wanted in names:
        matches = [n for n in all_names if n == wanted or n.startswith(f"{wanted}.")]
        if not matches:
            top = sorted({n.split(".")[0] for n in all_names})
            raise ValueError(
                f"'{wanted}' names no parameter or module of {type(model).__name__}; "
                f"top-level modules: {', '.join(top) or 'none'}"
            )
        selected.update(matches)
    return selected


def per_sample_gradient_powers(
    model: nn.Module,
    per_sample_loss: Callable[[Any], Tensor],
    x: Tensor,
    param_names: str | Sequence[str] | None = None,
    p: float = 2.0,
    *,
    method: str = "auto",
    workspace_elements: int = DEFAULT_WORKSPACE_ELEMENTS,
) -> Tensor:
    """Per-sample :math:`\\sum_j |g_{ij}|^p` (or :math:`\\max_j |g_{ij}|` for ``p = inf``) of
    each selected parameter tensor, from one batched forward and backward pass.

    Gradients are enabled for the pass, also under ``torch.no_grad()`` and
    ``torch.inference_mode()`` (left for the pass: an inference tensor ``x`` is copied).

    :param model: the network, called as ``model(x)``; put it in evaluation mode
    :param per_sample_loss: maps the model's output to the B per-sample losses
    :param x: a batch of inputs, batch first
    :param param_names: names of parameters or modules (see :func:`resolve_parameter_names`);
        ``None`` for all
    :param p: order, a real number > 0 or ``float("inf")``
    :param method: the form of Linear/Conv2d weights' statistic (all exact): ``"auto"`` (the
        fastest per layer, timed on first use and cached, see :mod:`gradood.gradients`),
        ``"ghost"`` (Gram form, ``p = 2``), ``"padded-gram"`` (Gram form from the padded
        input's pixels, ``p = 2``; Conv2d only, else ``"materialize"``), ``"materialize"`` (from
        unfolded patches) or ``"conv-backward"`` (one convolution backward per sample; Linear:
        ``"materialize"``)
    :param workspace_elements: bound on a chunk's temporary elements (>= one sample per chunk)
    :return: float64 tensor of shape B x P, column k for the k-th selected parameter in
        ``model.named_parameters()`` order
    :raises ValueError: on bad arguments, an empty selection, samples that interact (BatchNorm
        in training mode), parameters used outside their module's forward, modules that do not
        see the batch in their first dimension, or a loss that is not one value per sample
    """
    p = check_norm_order(p)
    _check_arguments(x, p, method, workspace_elements)
    names = resolve_parameter_names(model, param_names)
    check_samples_are_independent(model)
    batch = x.shape[0]
    with autograd_enabled():
        result = torch.zeros(batch, len(names), dtype=torch.float64, device=x.device)
        if batch == 0:
            return result
        parameters = dict(model.named_parameters())
        targets = _targets(model, {name: parameters[name] for name in names})
        settings = Settings(batch, p, method, workspace_elements)
        session = Session(targets, settings, result, {name: k for k, name in enumerate(names)})
        session.run(model, per_sample_loss, ordinary(x))
    return result


def per_sample_squared_norms(
    model: nn.Module,
    per_sample_loss: Callable[[Any], Tensor],
    x: Tensor,
    param_names: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> Tensor:
    """Squared L2 norms of the per-sample gradients, B x P (``p = 2`` of
    :func:`per_sample_gradient_powers`, which takes the same keyword arguments)."""
    return per_sample_gradient_powers(model, per_sample_loss, x, param_names, 2.0, **kwargs)


def _check_arguments(x: Tensor, p: float, method: str, workspace_elements: int) -> None:
    """Raises ``ValueError`` naming the first bad argument."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    if method in ("ghost", "padded-gram") and p != 2:
        raise ValueError(f"method={method!r} computes squared L2 norms only (p = 2), got p = {p:g}")
    if isinstance(workspace_elements, bool) or not isinstance(workspace_elements, int):
        raise ValueError(f"workspace_elements must be an integer >= 1, got {workspace_elements!r}")
    if workspace_elements < 1:
        raise ValueError(f"workspace_elements must be an integer >= 1, got {workspace_elements}")
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise ValueError("x must be a tensor with a batch dimension")


def _targets(model: nn.Module, selected: dict[str, nn.Parameter]) -> list[Target]:
    """The modules that register ``selected`` parameters (tied ones: every such module), each
    with its rule; a generic-rule module must not contain active dropout."""
    by_id = {id(param): name for name, param in selected.items()}
    targets = []
    for module_name, module in model.named_modules():
        owned = [
            (attr, by_id[id(param)])
            for attr, param in module.named_parameters(recurse=False, remove_duplicate=False)
            if id(param) in by_id
        ]
        if owned:
            rule = rule_for(module)
            if isinstance(rule, FunctionalRule):
                check_no_active_dropout(module_name, module)
            targets.append(Target(module_name or type(model).__name__, module, owned, rule))
    return targets
