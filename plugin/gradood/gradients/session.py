"""One forward and backward pass: hooks record each call of a target, rules compute while
the backward pass runs where they can, and shared modules and tied parameters are summed
afterwards."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .base import Call, Settings, Target, compute_dtype, row_powers, tree_leaves
from .checks import ParameterUseGuard, check_losses


class Session:
    """Adds each target's per-sample statistics into ``result`` (B x P, column
    ``columns[name]`` for a parameter) during one pass over the model (:meth:`run`)."""

    def __init__(
        self,
        targets: list[Target],
        settings: Settings,
        result: Tensor,
        columns: dict[str, int],
    ):
        self.targets = targets
        self.settings = settings
        self.result = result
        self.columns = columns
        self.active: Counter = Counter()
        self.is_recording = False
        self.streaming: set[int] = set()
        self._probes: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self._input_node: Any = None
        self._reaches_input: dict[Any, bool] = {}

    def run(self, model: nn.Module, per_sample_loss: Callable[[Any], Tensor], x: Tensor) -> None:
        """One forward pass that records the targets' calls, one backward pass from the summed
        losses to the probes (activation gradients only), then the deferred contributions."""
        with self.recording(), torch.enable_grad():
            x = self._probed_input(x)
            with ParameterUseGuard(self.targets, self.active):
                output = model(x)
            losses = per_sample_loss(output)
            check_losses(losses, self.settings.batch)
            self.start_backward()
            probes = self.probes()
            if losses.requires_grad and probes:
                torch.autograd.grad(losses.sum(), probes, allow_unused=True)
        self._input_node, self._reaches_input = None, {}
        self.finish()

    def _probed_input(self, x: Tensor) -> Tensor:
        """``x`` plus its probe (floating ``x``): every output computed from it is reached by
        the backward pass to the probe, and needs no probe of its own (:meth:`_leave`)."""
        if not x.is_floating_point():
            return x
        x = x + self._probe(x)
        self._input_node = x.grad_fn
        return x

    def _depends_on_input(self, leaf: Tensor) -> bool:
        """Whether the autograd graph of ``leaf`` reaches the probed input (graph nodes seen
        before are remembered for this pass)."""
        if self._input_node is None or leaf.grad_fn is None:
            return False
        known, start = self._reaches_input, leaf.grad_fn
        seen, frontier = {start}, [start]
        while frontier:
            node = frontier.pop()
            if node is self._input_node or known.get(node):
                known[start] = True
                return True
            for child, _ in node.next_functions:
                if child is not None and child not in seen and known.get(child) is not False:
                    seen.add(child)
                    frontier.append(child)
        known.update(dict.fromkeys(seen, False))
        return False

    @contextmanager
    def recording(self) -> Iterator[None]:
        handles = []
        try:
            for target in self.targets:
                module = target.module
                handles.append(
                    module.register_forward_pre_hook(
                        partial(self._enter, target), prepend=True, with_kwargs=True
                    )
                )
                handles.append(
                    module.register_forward_hook(
                        partial(self._leave, target), prepend=True, with_kwargs=True
                    )
                )
            self.is_recording = True
            yield
        finally:
            self.is_recording = False
            self.streaming.clear()
            for handle in handles:
                handle.remove()

    def _probe(self, like: Tensor) -> Tensor:
        """A zero scalar (one per dtype and device) added to the input and to every recorded
        output not computed from it: the backward pass differentiates with respect to the
        probes only, so it forms activation gradients (seen by the outputs' hooks) and no
        parameter gradient; an output computed from the probed input needs no copy."""
        key = (like.dtype, like.device)
        if key not in self._probes:
            self._probes[key] = torch.zeros(
                (), dtype=like.dtype, device=like.device
            ).requires_grad_()
        return self._probes[key]

    def probes(self) -> list[Tensor]:
        return list(self._probes.values())

    def _enter(self, target: Target, module, args, kwargs):
        if self.is_recording:
            self.active[id(module)] += 1

    def _leave(self, target: Target, module, args, kwargs, output):
        if not self.is_recording:
            return None
        self.active[id(module)] -= 1
        if not torch.is_grad_enabled():
            raise ValueError(
                f"module '{target.name}' ran with gradients disabled (torch.no_grad or reentrant "
                "checkpointing inside the model): its parameters' per-sample gradients cannot be "
                "followed; leave them out of the selection"
            )
        leaves, spec = pytree.tree_flatten(output)
        positions = [
            k
            for k, leaf in enumerate(leaves)
            if isinstance(leaf, Tensor) and leaf.is_floating_point()
        ]
        self._check_batch(target, leaves, positions, args, kwargs)
        probed = []
        for k in positions:
            if not self._depends_on_input(leaves[k]):
                leaves[k] = leaves[k] + self._probe(leaves[k])
            probed.append(leaves[k])
        input_versions = [
            (t, t._version) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)
        ]
        call = Call(
            args=args,
            kwargs=kwargs,
            output_leaves=probed,
            output_versions=[t._version for t in probed],
            input_versions=input_versions,
            grads=[None] * len(probed),
            leaf_positions=positions,
            output_spec=spec,
        )
        target.calls.append(call)
        for index, leaf in enumerate(probed):
            leaf.register_hook(partial(self._on_gradient, target, call, index))
        return pytree.tree_unflatten(leaves, spec)

    def _check_batch(self, target, leaves, positions, args, kwargs) -> None:
        batch = self.settings.batch
        for k in positions:
            if leaves[k].ndim == 0 or leaves[k].shape[0] != batch:
                raise ValueError(
                    f"module '{target.name}' ({type(target.module).__name__}) returned a tensor "
                    f"of shape {tuple(leaves[k].shape)}: per-sample gradients need the batch "
                    f"({batch}) in the first dimension of every output of a module that registers "
                    "a selected parameter"
                )
        if target.rule.streams:
            first = args[0] if args else kwargs.get("input")
            if not isinstance(first, Tensor) or first.ndim == 0 or first.shape[0] != batch:
                shape = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
                raise ValueError(
                    f"module '{target.name}' ({type(target.module).__name__}) was called on "
                    f"input of shape {shape}; per-sample gradients need the batch ({batch}) in "
                    "its first dimension"
                )

    def start_backward(self) -> None:
        """Decide which calls are computed while the backward pass runs: fast rules whose
        parameters receive one contribution only."""
        contributions = Counter(
            name for target in self.targets for _ in target.calls for _, name in target.params
        )
        for target in self.targets:
            if (
                target.rule.streams
                and len(target.calls) == 1
                and all(contributions[name] == 1 for _, name in target.params)
            ):
                self.streaming.add(id(target.calls[0]))

    def _on_gradient(self, target: Target, call: Call, index: int, grad: Tensor) -> None:
        call.grads[index] = grad
        if id(call) in self.streaming:
            self._compute(target, call)

    def _compute(self, target: Target, call: Call) -> None:
        self._check_inputs_unchanged(target, call)
        attrs = [attr for attr, _ in target.params]
        with torch.no_grad():
            powers = target.rule.powers(target, call, attrs, self.settings)
        for attr, name in target.params:
            self.result[:, self.columns[name]] += powers[attr].to(self.result.device)
        call.release()

    def _check_inputs_unchanged(self, target: Target, call: Call) -> None:
        if any(t._version != v for t, v in call.input_versions):
            raise ValueError(
                f"the input of module '{target.name}' was modified in place after the module "
                "ran; per-sample gradients need the values it saw"
            )

    def finish(self) -> None:
        """Contributions not computed during the backward pass: generic rules, shared modules
        and tied parameters (summed over their calls before the reduction)."""
        pending = [
            (target, call)
            for target in self.targets
            for call in target.calls
            if not call.done and call.has_gradient()
        ]
        counts = Counter(name for target, call in pending for _, name in target.params)
        single = [(t, c) for t, c in pending if all(counts[n] == 1 for _, n in t.params)]
        for target, call in single:
            self._compute(target, call)
        shared = [(t, c) for t, c in pending if not c.done]
        if shared:
            self._sum_contributions(shared)

    def _sum_contributions(self, pending: list[tuple[Target, Call]]) -> None:
        settings = self.settings
        for target, call in pending:
            self._check_inputs_unchanged(target, call)
        size = min(t.rule.chunk_size(t, c, settings) for t, c in pending)
        names = list(dict.fromkeys(name for t, _ in pending for _, name in t.params))
        for start, stop in settings.spans(size):
            sums: dict[str, Tensor] = {}
            for target, call in pending:
                attrs = [attr for attr, _ in target.params]
                with torch.no_grad():
                    grads = target.rule.materialize(target, call, attrs, start, stop)
                for attr, name in target.params:
                    grad = grads[attr].to(compute_dtype(grads[attr]))
                    sums[name] = grad if name not in sums else sums[name] + grad
            for name in names:
                powers = row_powers(sums[name], settings.p)
                self.result[start:stop, self.columns[name]] += powers.to(self.result.device)
        for _, call in pending:
            call.release()
