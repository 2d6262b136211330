"""What a rule works on and provides: the settings of one computation, the recorded
calls of a module, the modules that register selected parameters, the rule interface, and the
per-sample reductions."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

# -- per-sample reductions -------------------------------------------------------------------


def row_powers(gradients: Tensor, p: float) -> Tensor:
    """:math:`\\sum_j |g_{ij}|^p` (max for ``p = inf``) of each row, in float64."""
    rows = gradients.reshape(gradients.shape[0], -1)
    if rows.shape[1] == 0:
        return torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
    if math.isinf(p):
        return rows.abs().amax(dim=1).double()
    norms = torch.linalg.vector_norm(rows, ord=p, dim=1, dtype=torch.float64)
    return norms.square() if p == 2 else norms**p


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype rules compute in: the tensor's, at least float32."""
    return torch.promote_types(tensor.dtype, torch.float32)


@dataclass(frozen=True)
class Settings:
    """One computation's batch size, order ``p``, method and workspace bound (elements)."""

    batch: int
    p: float
    method: str
    workspace: int

    def chunk(self, per_sample_elements: int) -> int:
        """Samples per chunk: as many as fit the workspace, at least one."""
        return max(1, min(self.batch, self.workspace // max(1, per_sample_elements)))

    def spans(self, size: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of consecutive chunks of ``size`` samples covering the batch."""
        for start in range(0, self.batch, size):
            yield start, min(self.batch, start + size)


# -- recorded calls --------------------------------------------------------------------------


@dataclass(eq=False)
class Call:
    """One call of an owner module: its inputs, probed output leaves and their gradients."""

    args: tuple
    kwargs: dict
    output_leaves: list[Tensor]
    output_versions: list[int]
    input_versions: list[tuple[Tensor, int]]
    grads: list[Tensor | None] = field(default_factory=list)
    leaf_positions: list[int] = field(default_factory=list)
    output_spec: Any = None
    done: bool = False

    @property
    def input(self) -> Tensor:
        return self.args[0] if self.args else self.kwargs["input"]

    @property
    def output(self) -> Tensor:
        return self.output_leaves[0]

    @property
    def grad(self) -> Tensor:
        return self.grads[0]

    def has_gradient(self) -> bool:
        return any(g is not None for g in self.grads)

    def output_unchanged(self) -> bool:
        return all(
            t._version == v for t, v in zip(self.output_leaves, self.output_versions, strict=True)
        )

    def release(self) -> None:
        self.args, self.kwargs, self.output_leaves, self.grads = (), {}, [], []
        self.input_versions = []
        self.done = True


@dataclass(eq=False)
class Target:
    """A module that registers selected parameters, the rule for it, and its recorded calls."""

    name: str
    module: nn.Module
    params: list[tuple[str, str]]  # (attribute, qualified name)
    rule: Rule
    calls: list[Call] = field(default_factory=list)


# -- rules -----------------------------------------------------------------------------------


class Rule:
    """How the per-sample gradients of one module's own parameters follow from a call."""

    #: computed while the backward pass runs (single-tensor input and output)
    streams = True

    def chunk_size(self, target: Target, call: Call, settings: Settings) -> int:
        raise NotImplementedError

    def materialize(
        self, target: Target, call: Call, attrs: list[str], start: int, stop: int
    ) -> dict[str, Tensor]:
        """Per-sample gradients of ``attrs`` for samples ``start:stop``."""
        raise NotImplementedError

    def powers(
        self, target: Target, call: Call, attrs: list[str], settings: Settings
    ) -> dict[str, Tensor]:
        """The per-sample statistic of each of ``attrs`` (float64, shape B)."""
        parts: dict[str, list[Tensor]] = {attr: [] for attr in attrs}
        for start, stop in settings.spans(self.chunk_size(target, call, settings)):
            for attr, grad in self.materialize(target, call, attrs, start, stop).items():
                parts[attr].append(row_powers(grad, settings.p))
        return {attr: torch.cat(chunks) for attr, chunks in parts.items()}

    # probing subclasses: the function of the module that this rule assumes
    def probe_input(self, module: nn.Module, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def reference(self, module: nn.Module, x: Tensor, state: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


def tree_leaves(tree: Any) -> list[Any]:
    """The leaves of a pytree (``pytree.tree_leaves`` exists only from torch 2.2 on)."""
    return pytree.tree_flatten(tree)[0]
