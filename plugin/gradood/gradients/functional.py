"""The generic rule for any module: ``torch.func.vmap`` of the ``vjp`` of its own forward,
or one ``torch.autograd.grad`` per sample where vmap cannot run it."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .base import Call, Rule, Target, tree_leaves


class FunctionalRule(Rule):
    """Any module: :math:`g_i = \\partial \\langle \\gamma_i, m_\\theta(x_i) \\rangle /
    \\partial \\theta`, the vjp of the module's own forward on sample :math:`i`'s recorded
    inputs and output gradients :math:`\\gamma_i`, vmapped over samples (``torch.func``), or
    one ``torch.autograd.grad`` per sample where vmap cannot run the module. Inputs without the
    batch in their first dim are shared by all samples."""

    streams = False

    def chunk_size(self, target, call, settings):
        parameters = sum(target.module.get_parameter(a).numel() for a, _ in target.params)
        outputs = sum(t[0].numel() for t in call.output_leaves)
        return settings.chunk(parameters + 4 * outputs)

    def materialize(self, target, call, attrs, start, stop):
        module = target.module
        call_module, batched_inputs = _replay(module, call)
        grads = [
            (g if g is not None else torch.zeros_like(t)).detach()
            for g, t in zip(call.grads, call.output_leaves, strict=True)
        ]
        params = {attr: module.get_parameter(attr).detach() for attr in attrs}

        def one_sample(params, values, sample_grads):
            values = [v.unsqueeze(0) for v in values]
            _, pullback = torch.func.vjp(lambda prm: call_module(prm, values), params)
            return pullback(tuple(g.unsqueeze(0) for g in sample_grads))[0]

        values = [v[start:stop] for v in batched_inputs]
        chunk_grads = [g[start:stop] for g in grads]
        try:
            return torch.func.vmap(one_sample, in_dims=(None, 0, 0))(params, values, chunk_grads)
        except Exception as error:
            if "random" in str(error).lower():
                raise ValueError(
                    f"module '{target.name}' ({type(module).__name__}) draws random numbers in "
                    "its forward, which the per-sample gradient of its parameters re-runs; "
                    "call model.eval()"
                ) from error
            _warn_slow_fallback(target, error)
        return _loop_vjp(call_module, params, values, chunk_grads)


#: ``call_module(params, values)``: the probed outputs of a recorded call, re-run with
#: ``params`` and with ``values`` in place of its batched inputs
ModuleCall = Callable[[dict[str, Tensor], list[Tensor]], tuple[Tensor, ...]]


def _replay(module: nn.Module, call: Call) -> tuple[ModuleCall, list[Tensor]]:
    """The recorded call as a function of the parameters and the batched inputs (those with
    the batch in their first dim; the others are kept as recorded), and those inputs."""
    leaves, spec = pytree.tree_flatten((call.args, call.kwargs))
    leaves = [leaf.detach() if isinstance(leaf, Tensor) else leaf for leaf in leaves]
    batch = call.output_leaves[0].shape[0]
    batched = [
        k
        for k, leaf in enumerate(leaves)
        if isinstance(leaf, Tensor) and leaf.ndim > 0 and leaf.shape[0] == batch
    ]

    def call_module(params: dict[str, Tensor], values: list[Tensor]) -> tuple[Tensor, ...]:
        inputs = list(leaves)
        for k, value in zip(batched, values, strict=True):
            inputs[k] = value
        args, kwargs = pytree.tree_unflatten(inputs, spec)
        output = torch.func.functional_call(module, params, args, kwargs)
        flat = tree_leaves(output)
        return tuple(flat[k] for k in call.leaf_positions)

    return call_module, [leaves[k] for k in batched]


def _loop_vjp(
    call_module: ModuleCall,
    params: dict[str, Tensor],
    values: list[Tensor],
    grads: list[Tensor],
) -> dict[str, Tensor]:
    """One ``torch.autograd.grad`` per sample: the fallback when vmap cannot run a module."""
    rows: dict[str, list[Tensor]] = {attr: [] for attr in params}
    for i in range(values[0].shape[0] if values else grads[0].shape[0]):
        leaves = {attr: t.detach().requires_grad_(True) for attr, t in params.items()}
        with torch.enable_grad():
            outputs = call_module(leaves, [v[i : i + 1] for v in values])
            found = torch.autograd.grad(
                outputs,
                list(leaves.values()),
                [g[i : i + 1] for g in grads],
                allow_unused=True,
            )
        for (attr, leaf), grad in zip(leaves.items(), found, strict=True):
            rows[attr].append(torch.zeros_like(leaf) if grad is None else grad)
    return {attr: torch.stack(grads) for attr, grads in rows.items()}


_WARNED_MODULE_TYPES: set[type] = set()


def _warn_slow_fallback(target: Target, error: Exception) -> None:
    kind = type(target.module)
    if kind in _WARNED_MODULE_TYPES:
        return
    _WARNED_MODULE_TYPES.add(kind)
    warnings.warn(
        f"per-sample gradients of {kind.__name__} ('{target.name}') use one backward pass per "
        f"sample: torch.func.vmap cannot run it ({type(error).__name__}: {error})",
        stacklevel=4,
    )
