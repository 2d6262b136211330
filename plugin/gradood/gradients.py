"""Per-sample gradient statistics from one batched forward and one batched backward pass.

For a model :math:`f` in evaluation mode, a per-sample loss :math:`\\ell` and a batch
:math:`x_1, \\dots, x_B`, the per-sample gradient of a parameter tensor :math:`\\theta` is
:math:`g_i = \\partial \\ell(f(x_i)) / \\partial \\theta`. :func:`per_sample_gradient_powers`
returns, for every selected parameter tensor,

.. math::
    P_i(\\theta) = \\sum_j |g_{ij}|^p \\quad (0 < p < \\infty), \\qquad
    P_i(\\theta) = \\max_j |g_{ij}| \\quad (p = \\infty),

exactly (up to rounding), without ever holding the gradients of the whole model per sample.

**How.** One forward pass records, with module hooks, the input of every module that registers
a selected parameter (its *owner*); one backward pass computes activation gradients only (no
parameter gradient is formed, no ``.grad`` is written, frozen parameters work). When the
gradient :math:`\\gamma` of an owner's output arrives, the owner's rule turns the pair
(input, :math:`\\gamma`) into the per-sample statistic of its parameters and frees both:

- ``nn.Linear`` (any leading dims) and ``nn.Conv2d`` (any stride, padding, padding mode,
  dilation, groups; the input is unfolded into patches :math:`a_l`): with positions :math:`l`,
  :math:`g_i = \\sum_l \\gamma_{il} a_{il}^\\top` and the bias gradient
  :math:`\\sum_l \\gamma_{il}`.
- Weight-standardized convolutions (timm's ``StdConv2d``/``StdConv2dSame``, big_transfer's
  ``StdConv2d``): the layer uses :math:`\\hat w_o = (w_o - \\bar w_o) / s_o`,
  :math:`s_o = \\sqrt{\\mathrm{var}(w_o) + \\epsilon}` per output channel (fan-in :math:`n`),
  and the gradient of the raw weight is the exact Jacobian map
  :math:`(v - \\bar v - \\hat w_o \\, (v \\cdot \\hat w_o) / n) / s_o` of the gradient
  :math:`v` with respect to :math:`\\hat w_o`, :math:`\\epsilon` included.
- ``nn.GroupNorm``, ``nn.LayerNorm``, ``nn.BatchNorm1d/2d/3d`` in evaluation mode (optionally
  followed by a ReLU inside the module, as timm's ``GroupNormAct``): the affine weight's
  gradient is :math:`\\sum \\gamma \\odot \\hat x` over the positions that share a weight, with
  :math:`\\hat x` recomputed from the recorded input; the bias's is :math:`\\sum \\gamma`.
- Any other owner (including a model whose own forward uses a parameter it registers directly,
  e.g. a ViT class token): ``torch.func.vmap`` over samples of the ``vjp`` of the owner's own
  forward (``torch.func.functional_call``) on its recorded input and output gradient; a
  per-sample loop of ``torch.autograd.grad`` if ``vmap`` cannot run the module.

A rule is used for a subclass (e.g. timm's layers) only after a float64 probe shows that the
subclass computes exactly the rule's function; otherwise the generic rule applies. A module
called several times (shared weights) and a parameter registered by several modules (tied
weights) get the sum of their contributions, computed after the backward pass.

**Cost model** (``method="auto"``, :math:`p = 2`, Linear/Conv2d, per sample and group, with
:math:`L` positions, fan-in :math:`d_{in}`, :math:`d_{out}` output channels): materializing
:math:`g_i` costs :math:`L d_{in} d_{out}` multiply-adds and :math:`d_{in} d_{out}` memory; the
Gram ("ghost norm") form :math:`\\lVert g_i \\rVert^2 = \\sum_{l, l'} (a_l \\cdot a_{l'})
(\\gamma_l \\cdot \\gamma_{l'})` costs :math:`L^2 (d_{in} + d_{out})` (:math:`L^2 (d_{in} + 2
d_{out})` with weight standardization) and :math:`2 L^2` memory. The cheaper one is used; other
:math:`p` always materialize. Everything runs over chunks of samples whose workspace stays under
``workspace_elements`` (at least one sample per chunk). The Gram form squares the conditioning
of :math:`\\lVert g_i \\rVert` (relative rounding error :math:`\\sim u (\\sum_l \\lVert
\\gamma_l \\rVert \\lVert a_l \\rVert / \\lVert g_i \\rVert)^2` instead of its square root); in
float32 that can matter for gradients that nearly cancel over positions.

**Requirements.** Samples must not interact: a BatchNorm in training mode (or without running
statistics) raises ``ValueError``. Dropout in training mode gives the exact per-sample gradients
of the masks drawn in this pass (dropout acts on each sample alone), so it only warns that the
values are random; a generic-rule owner containing active dropout raises, because its forward
would be re-run with new masks. Every selected parameter must be used inside the forward of a
module that registers it; a use anywhere else is detected and raises ``ValueError`` naming it.
Modules must see the batch in their first dimension. Reductions are done in float64; the result
is float64.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from .validation import check_norm_order

__all__ = [
    "DEFAULT_WORKSPACE_ELEMENTS",
    "per_sample_gradient_powers",
    "per_sample_squared_norms",
    "resolve_parameter_names",
]

#: default bound on the elements of one chunk's temporary tensors (64 MiB in float32)
DEFAULT_WORKSPACE_ELEMENTS = 2**24

_METHODS = ("auto", "ghost", "materialize")

#: fan-in standardization epsilons tried for a conv subclass without an ``eps`` attribute:
#: big_transfer's 1e-10, timm's BiT 1e-8 and default 1e-6, and 1e-5
_STANDARDIZATION_EPSILONS = (1e-10, 1e-8, 1e-6, 1e-5)


# -- parameter selection ---------------------------------------------------------------------


def resolve_parameter_names(model: nn.Module, names: str | Sequence[str] | None) -> list[str]:
    """Qualified parameter names selected by ``names``, in ``model.named_parameters()`` order.

    :param names: ``None`` for all parameters, or names of parameters or modules (a module
        selects all its parameters, e.g. ``"layer4"``)
    :raises ValueError: if a name matches no parameter or module
    """
    all_names = [name for name, _ in model.named_parameters()]
    if names is None:
        return all_names
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
    return [n for n in all_names if n in selected]


# -- public entry points ---------------------------------------------------------------------


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

    :param model: the network, called as ``model(x)``; put it in evaluation mode
    :param per_sample_loss: maps the model's output to the B per-sample losses
    :param x: a batch of inputs, batch first
    :param param_names: names of parameters or modules (see :func:`resolve_parameter_names`);
        ``None`` for all
    :param p: order, a real number > 0 or ``float("inf")``
    :param method: for ``p = 2`` on Linear/Conv2d weights: ``"auto"`` (the cheaper per layer,
        see the module docstring), ``"ghost"`` (Gram form) or ``"materialize"``
    :param workspace_elements: bound on a chunk's temporary elements (>= one sample per chunk)
    :return: float64 tensor of shape B x P, column k for the k-th selected parameter in
        ``model.named_parameters()`` order
    :raises ValueError: on bad arguments, samples that interact (BatchNorm in training mode),
        parameters used outside their module's forward, modules that do not see the batch in
        their first dimension, or a loss that is not one value per sample
    """
    p = check_norm_order(p)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    if method == "ghost" and p != 2:
        raise ValueError(f"method='ghost' computes squared L2 norms only (p = 2), got p = {p:g}")
    if isinstance(workspace_elements, bool) or not isinstance(workspace_elements, int):
        raise ValueError(f"workspace_elements must be an integer >= 1, got {workspace_elements!r}")
    if workspace_elements < 1:
        raise ValueError(f"workspace_elements must be an integer >= 1, got {workspace_elements}")
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise ValueError("x must be a tensor with a batch dimension")
    if torch.is_inference_mode_enabled():
        raise ValueError("per-sample gradients cannot be computed under torch.inference_mode()")
    names = resolve_parameter_names(model, param_names)
    _check_samples_are_independent(model)
    batch = x.shape[0]
    result = torch.zeros(batch, len(names), dtype=torch.float64, device=x.device)
    if batch == 0 or not names:
        return result
    parameters = dict(model.named_parameters())
    targets = _targets(model, {name: parameters[name] for name in names})
    settings = _Settings(batch, p, method, workspace_elements)
    session = _Session(targets, settings, result, {name: k for k, name in enumerate(names)})
    with session.recording(), torch.enable_grad():
        with _ParameterUseGuard(targets, session.active):
            output = model(x)
        losses = per_sample_loss(output)
        _check_losses(losses, batch)
        session.start_backward()
        probes = session.probes()
        if losses.requires_grad and probes:
            torch.autograd.grad(losses.sum(), probes, allow_unused=True)
    session.finish()
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


# -- checks ----------------------------------------------------------------------------------


def _check_samples_are_independent(model: nn.Module) -> None:
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


def _check_losses(losses: Any, batch: int) -> None:
    if not isinstance(losses, Tensor) or losses.shape != (batch,):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(
            f"per_sample_loss must return one loss per sample, shape ({batch},), got {shape}"
        )
    if not losses.is_floating_point():
        raise ValueError(f"per_sample_loss must return floating-point losses, got {losses.dtype}")


# -- per-sample reductions -------------------------------------------------------------------


def _powers(gradients: Tensor, p: float) -> Tensor:
    """:math:`\\sum_j |g_{ij}|^p` (max for ``p = inf``) of each row, in float64."""
    rows = gradients.reshape(gradients.shape[0], -1)
    if rows.shape[1] == 0:
        return torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
    if math.isinf(p):
        return rows.abs().amax(dim=1).double()
    norms = torch.linalg.vector_norm(rows, ord=p, dim=1, dtype=torch.float64)
    return norms.square() if p == 2 else norms**p


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


@dataclass(frozen=True)
class _Settings:
    batch: int
    p: float
    method: str
    workspace: int

    def chunk(self, per_sample_elements: int) -> int:
        return max(1, min(self.batch, self.workspace // max(1, per_sample_elements)))


# -- recorded calls --------------------------------------------------------------------------


@dataclass(eq=False)
class _Call:
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


# -- rules -----------------------------------------------------------------------------------


class _Rule:
    """How the per-sample gradients of one module's own parameters follow from a call."""

    #: computed while the backward pass runs (single-tensor input and output)
    streams = True

    def chunk_size(self, target: _Target, call: _Call, settings: _Settings) -> int:
        raise NotImplementedError

    def materialize(
        self, target: _Target, call: _Call, attrs: list[str], start: int, stop: int
    ) -> dict[str, Tensor]:
        """Per-sample gradients of ``attrs`` for samples ``start:stop``."""
        raise NotImplementedError

    def powers(
        self, target: _Target, call: _Call, attrs: list[str], settings: _Settings
    ) -> dict[str, Tensor]:
        """The per-sample statistic of each of ``attrs`` (float64, shape B)."""
        size = self.chunk_size(target, call, settings)
        parts: dict[str, list[Tensor]] = {attr: [] for attr in attrs}
        for start in range(0, settings.batch, size):
            stop = min(settings.batch, start + size)
            for attr, grad in self.materialize(target, call, attrs, start, stop).items():
                parts[attr].append(_powers(grad, settings.p))
        return {attr: torch.cat(chunks) for attr, chunks in parts.items()}

    # probing subclasses: the function of the module that this rule assumes
    def probe_input(self, module: nn.Module, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def reference(self, module: nn.Module, x: Tensor, state: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


def _pad_same(x: Tensor, kernel: tuple, stride: tuple, dilation: tuple) -> Tensor:
    """TensorFlow's SAME padding of the last two dims (extra pixel at the end)."""
    pads = []
    for size, k, s, d in zip(x.shape[-2:], kernel, stride, dilation, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return F.pad(x, (left, right, top, bottom))


def _standardize(weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Rows of ``weight`` (C_out x fan-in) standardized with biased variance, and the scales."""
    rows = weight.reshape(weight.shape[0], -1)
    var, mean = torch.var_mean(rows, dim=1, keepdim=True, correction=0)
    scale = torch.sqrt(var + eps)
    return (rows - mean) / scale, scale.squeeze(1)


@dataclass(frozen=True)
class _OuterProductRule(_Rule):
    """``nn.Linear``/``nn.Conv2d`` and weight-standardized convolutions.

    ``standardized``: the weight is standardized per output channel with ``eps`` (``None``:
    the module's ``eps`` attribute).
    """

    standardized: bool = False
    eps: float | None = None

    def layout(self, module: nn.Module, x: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        """Patches A (n x g x L x d_in) and output gradients G (n x g x L x d_out)."""
        raise NotImplementedError

    def positions(self, module: nn.Module, call: _Call) -> int:
        raise NotImplementedError

    def groups(self, module: nn.Module) -> int:
        return 1

    def unfolds(self) -> bool:
        return False

    def _eps(self, module: nn.Module) -> float:
        return float(module.eps) if self.eps is None else self.eps

    def _sizes(self, module: nn.Module, call: _Call) -> tuple[int, int, int, int]:
        weight = module.weight
        groups = self.groups(module)
        d_out = weight.shape[0] // groups
        d_in = weight[0].numel()
        return self.positions(module, call), groups, d_in, d_out

    def _uses_ghost(self, module: nn.Module, call: _Call, settings: _Settings) -> bool:
        if settings.p != 2 or settings.method == "materialize":
            return False
        if self.standardized and not call.output_unchanged():
            return False  # the Gram form of the standardized weight needs the layer's output
        if settings.method == "ghost":
            return True
        positions, _, d_in, d_out = self._sizes(module, call)
        ghost = positions * positions * (d_in + (2 if self.standardized else 1) * d_out)
        return ghost < positions * d_in * d_out

    def chunk_size(self, target: _Target, call: _Call, settings: _Settings) -> int:
        return settings.chunk(self._per_sample_elements(target.module, call, ghost=False))

    def _per_sample_elements(self, module: nn.Module, call: _Call, ghost: bool) -> int:
        positions, groups, d_in, d_out = self._sizes(module, call)
        patches = groups * positions * d_in if self.unfolds() else 0
        if ghost:
            return patches + groups * positions * (2 * positions + d_out)
        return patches + 3 * groups * d_in * d_out

    def materialize(self, target, call, attrs, start, stop):
        module = target.module
        x, grad = call.input[start:stop], call.grad[start:stop]
        result = {}
        if "weight" in attrs:
            patches, out_grads = self.layout(module, x, grad)
            blocks = out_grads.transpose(-1, -2) @ patches  # n x g x d_out x d_in
            weight_grad = blocks.reshape(blocks.shape[0], module.weight.shape[0], -1)
            if self.standardized:
                weight_grad = self._through_standardization(module, weight_grad)
            result["weight"] = weight_grad.reshape(-1, *module.weight.shape)
        if "bias" in attrs:
            result["bias"] = self.bias_gradient(module, grad)
        return result

    def bias_gradient(self, module: nn.Module, grad: Tensor) -> Tensor:
        raise NotImplementedError

    def _through_standardization(self, module: nn.Module, v: Tensor) -> Tensor:
        """The gradient of the raw weight from ``v``, the gradient of the standardized one."""
        w_hat, scale = _standardize(module.weight.detach().to(v.dtype), self._eps(module))
        fan_in = w_hat.shape[1]
        along = (v * w_hat).sum(dim=-1, keepdim=True) / fan_in
        return (v - v.mean(dim=-1, keepdim=True) - w_hat * along) / scale[:, None]

    def powers(self, target, call, attrs, settings):
        module = target.module
        if "weight" not in attrs or not self._uses_ghost(module, call, settings):
            return super().powers(target, call, attrs, settings)
        result = {"weight": self._ghost_squared_norms(module, call, settings)}
        if "bias" in attrs:
            result["bias"] = _powers(self.bias_gradient(module, call.grad), settings.p)
        return result

    def _ghost_squared_norms(self, module: nn.Module, call: _Call, settings: _Settings) -> Tensor:
        size = settings.chunk(self._per_sample_elements(module, call, ghost=True))
        parts = []
        for start in range(0, settings.batch, size):
            stop = min(settings.batch, start + size)
            patches, grads = self.layout(module, call.input[start:stop], call.grad[start:stop])
            patch_gram = patches @ patches.transpose(-1, -2)  # n x g x L x L
            if self.standardized:
                output = call.output[start:stop]
                parts.append(self._ghost_standardized(module, patches, grads, patch_gram, output))
            else:
                grad_gram = grads @ grads.transpose(-1, -2)
                parts.append((patch_gram * grad_gram).sum(dim=(1, 2, 3)).double())
        return torch.cat(parts)

    def _ghost_standardized(
        self, module: nn.Module, patches: Tensor, grads: Tensor, patch_gram: Tensor, output: Tensor
    ) -> Tensor:
        """:math:`\\sum_o \\lVert J_o^\\top v_o \\rVert^2` from Gram matrices (module docstring):
        :math:`(\\lVert v_o \\rVert^2 - (1^\\top v_o)^2 / n - (2/n - \\lVert \\hat w_o
        \\rVert^2 / n^2) (\\hat w_o \\cdot v_o)^2) / s_o^2`, with :math:`\\hat w_o \\cdot a_l`
        read from the layer's output."""
        w_hat, scale = _standardize(module.weight.detach().to(grads.dtype), self._eps(module))
        fan_in = w_hat.shape[1]
        groups = patches.shape[1]
        # per output channel o (n x g x d_out): ||v_o||^2, 1.v_o and w_hat_o.v_o
        squared = (grads * (patch_gram @ grads)).sum(dim=2)
        ones = (grads * patches.sum(dim=-1, keepdim=True)).sum(dim=2)
        pre_bias = output.to(grads.dtype)
        if module.bias is not None:
            pre_bias = pre_bias - module.bias.detach().to(grads.dtype)[:, None, None]
        projections = _conv_output_layout(pre_bias, groups)
        along = (grads * projections).sum(dim=2)
        w_hat_sq = w_hat.square().sum(dim=1).reshape(groups, -1)
        total = (
            squared - ones.square() / fan_in - (2 / fan_in - w_hat_sq / fan_in**2) * along.square()
        ) / scale.reshape(groups, -1).square()
        # exact arithmetic gives a sum of squares; rounding may leave a tiny negative residue
        return total.sum(dim=(1, 2)).double().clamp_min(0)


def _conv_output_layout(values: Tensor, groups: int) -> Tensor:
    """n x C x H x W -> n x g x L x C/g."""
    n, channels = values.shape[:2]
    return values.reshape(n, groups, channels // groups, -1).transpose(-1, -2)


@dataclass(frozen=True)
class _LinearRule(_OuterProductRule):
    def positions(self, module, call):
        return call.input[0].numel() // module.in_features

    def layout(self, module, x, grad):
        n, dtype = x.shape[0], _compute_dtype(grad)
        patches = x.to(dtype).reshape(n, 1, -1, module.in_features)
        return patches, grad.to(dtype).reshape(n, 1, -1, module.out_features)

    def bias_gradient(self, module, grad):
        return grad.reshape(grad.shape[0], -1, module.out_features).sum(dim=1)

    def probe_input(self, module, generator):
        return torch.randn(2, 3, module.in_features, generator=generator, dtype=torch.float64)

    def reference(self, module, x, state):
        weight = state["weight"]
        if self.standardized:
            weight = _standardize(weight, self._eps(module))[0].reshape_as(weight)
        return F.linear(x, weight, state.get("bias"))


@dataclass(frozen=True)
class _Conv2dRule(_OuterProductRule):
    same_pad: bool = False

    def groups(self, module):
        return module.groups

    def unfolds(self):
        return True

    def positions(self, module, call):
        return call.grad[0, 0].numel() if call.grads else call.output[0, 0].numel()

    def _padded(self, module: nn.Module, x: Tensor) -> tuple[Tensor, Any]:
        if self.same_pad:
            x = _pad_same(x, module.kernel_size, module.stride, module.dilation)
        if module.padding_mode != "zeros":
            return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), 0
        if isinstance(module.padding, str):
            return F.pad(x, module._reversed_padding_repeated_twice), 0
        return x, module.padding

    def layout(self, module, x, grad):
        x, padding = self._padded(module, x.to(_compute_dtype(grad)))
        n = x.shape[0]
        patches = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)
        patches = patches.reshape(n, module.groups, -1, patches.shape[-1]).transpose(-1, -2)
        return patches, _conv_output_layout(grad.to(x.dtype), module.groups)

    def bias_gradient(self, module, grad):
        return grad.sum(dim=(2, 3))

    def probe_input(self, module, generator):
        extent = [
            d * (k - 1) + 2 * s + 2
            for k, s, d in zip(module.kernel_size, module.stride, module.dilation, strict=True)
        ]
        shape = (1, module.in_channels, extent[0], extent[1] + 1)
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    def reference(self, module, x, state):
        weight = state["weight"]
        if self.standardized:
            weight = _standardize(weight, self._eps(module))[0].reshape_as(weight)
        x, padding = self._padded(module, x)
        bias = state.get("bias")
        return F.conv2d(x, weight, bias, module.stride, padding, module.dilation, module.groups)


@dataclass(frozen=True)
class _NormRule(_Rule):
    """GroupNorm / LayerNorm / BatchNorm in evaluation mode, optionally followed by a ReLU."""

    kind: str = "group"  # "group" | "layer" | "batch"
    relu: bool = False

    def _normalized(self, module: nn.Module, x: Tensor) -> Tensor:
        eps = module.eps
        if self.kind == "group":
            grouped = x.reshape(x.shape[0], module.num_groups, -1)
            var, mean = torch.var_mean(grouped, dim=-1, keepdim=True, correction=0)
            return ((grouped - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
        if self.kind == "layer":
            dims = tuple(range(x.ndim - len(module.normalized_shape), x.ndim))
            var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
            return (x - mean) * torch.rsqrt(var + eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = module.running_mean.to(x.dtype).reshape(shape)
        var = module.running_var.to(x.dtype).reshape(shape)
        return (x - mean) * torch.rsqrt(var + eps)

    def _shared_dims(self, module: nn.Module, x: Tensor) -> tuple[int, ...]:
        """The dims summed over: every dim but the batch and the parameter's own."""
        if self.kind == "layer":
            return tuple(range(1, x.ndim - len(module.normalized_shape)))
        return tuple(range(2, x.ndim))

    def _affine(self, module: nn.Module, x_hat: Tensor) -> Tensor:
        if self.kind == "layer":
            weight, bias = module.weight, module.bias
        else:
            shape = (1, -1) + (1,) * (x_hat.ndim - 2)
            weight = module.weight.reshape(shape) if module.weight is not None else None
            bias = module.bias.reshape(shape) if module.bias is not None else None
        y = x_hat if weight is None else x_hat * weight.detach().to(x_hat.dtype)
        return y if bias is None else y + bias.detach().to(x_hat.dtype)

    def chunk_size(self, target, call, settings):
        return settings.chunk(4 * call.input[0].numel())

    def materialize(self, target, call, attrs, start, stop):
        module = target.module
        grad = call.grad[start:stop]
        dtype = _compute_dtype(grad)
        grad = grad.to(dtype)
        x_hat = self._normalized(module, call.input[start:stop].to(dtype))
        if self.relu:
            if call.output_unchanged():
                active = call.output[start:stop] > 0
            else:  # the output was changed in place later: recompute the pre-activation
                active = self._affine(module, x_hat) > 0
            grad = grad * active
        dims = self._shared_dims(module, grad)
        result = {}
        if "weight" in attrs:
            product = grad * x_hat
            result["weight"] = product.sum(dim=dims) if dims else product
        if "bias" in attrs:
            result["bias"] = grad.sum(dim=dims) if dims else grad
        return result

    def probe_input(self, module, generator):
        if self.kind == "layer":
            shape = (2, 3, *module.normalized_shape)
        elif isinstance(module, nn.BatchNorm1d):
            shape = (2, module.num_features, 3)
        elif isinstance(module, nn.BatchNorm3d):
            shape = (2, module.num_features, 2, 3, 4)
        else:
            channels = module.num_channels if self.kind == "group" else module.num_features
            shape = (2, channels, 3, 4)
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    def reference(self, module, x, state):
        weight, bias = state.get("weight"), state.get("bias")
        if self.kind == "group":
            y = F.group_norm(x, module.num_groups, weight, bias, module.eps)
        elif self.kind == "layer":
            y = F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)
        else:
            mean, var = state["running_mean"], state["running_var"]
            y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, module.eps)
        return F.relu(y) if self.relu else y


class _FunctionalRule(_Rule):
    """Any module: vmap over samples of the vjp of its own forward (torch.func)."""

    streams = False

    def chunk_size(self, target, call, settings):
        parameters = sum(target.module.get_parameter(a).numel() for a, _ in target.params)
        outputs = sum(t[0].numel() for t in call.output_leaves)
        return settings.chunk(parameters + 4 * outputs)

    def materialize(self, target, call, attrs, start, stop):
        module = target.module
        leaves, spec = pytree.tree_flatten((call.args, call.kwargs))
        leaves = [leaf.detach() if isinstance(leaf, Tensor) else leaf for leaf in leaves]
        batch = call.output_leaves[0].shape[0]
        batched = [
            k
            for k, leaf in enumerate(leaves)
            if isinstance(leaf, Tensor) and leaf.ndim > 0 and leaf.shape[0] == batch
        ]
        grads = [
            (g if g is not None else torch.zeros_like(t)).detach()
            for g, t in zip(call.grads, call.output_leaves, strict=True)
        ]
        params = {attr: module.get_parameter(attr).detach() for attr in attrs}

        def call_module(params: dict[str, Tensor], values: list[Tensor]) -> tuple[Tensor, ...]:
            inputs = list(leaves)
            for k, value in zip(batched, values, strict=True):
                inputs[k] = value
            args, kwargs = pytree.tree_unflatten(inputs, spec)
            output = torch.func.functional_call(module, params, args, kwargs)
            flat = _tree_leaves(output)
            return tuple(flat[k] for k in call.leaf_positions)

        def one_sample(params, values, sample_grads):
            values = [v.unsqueeze(0) for v in values]
            _, pullback = torch.func.vjp(lambda prm: call_module(prm, values), params)
            return pullback(tuple(g.unsqueeze(0) for g in sample_grads))[0]

        values = [leaves[k][start:stop] for k in batched]
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

    def probe_input(self, module, generator):  # pragma: no cover - never probed
        raise NotImplementedError


def _tree_leaves(tree: Any) -> list[Any]:
    """The leaves of a pytree (``pytree.tree_leaves`` exists only from torch 2.2 on)."""
    return pytree.tree_flatten(tree)[0]


def _loop_vjp(call_module, params, values, grads) -> dict[str, Tensor]:
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


def _warn_slow_fallback(target: _Target, error: Exception) -> None:
    kind = type(target.module)
    if kind in _WARNED_MODULE_TYPES:
        return
    _WARNED_MODULE_TYPES.add(kind)
    warnings.warn(
        f"per-sample gradients of {kind.__name__} ('{target.name}') use one backward pass per "
        f"sample: torch.func.vmap cannot run it ({type(error).__name__}: {error})",
        stacklevel=4,
    )


_FUNCTIONAL = _FunctionalRule()
_EXACT_RULES: dict[type, _Rule] = {
    nn.Linear: _LinearRule(),
    nn.Conv2d: _Conv2dRule(),
    nn.GroupNorm: _NormRule("group"),
    nn.LayerNorm: _NormRule("layer"),
    nn.BatchNorm1d: _NormRule("batch"),
    nn.BatchNorm2d: _NormRule("batch"),
    nn.BatchNorm3d: _NormRule("batch"),
}


def _candidate_rules(module: nn.Module) -> list[_Rule]:
    """Rules that a subclass of a known layer might follow, most plain first."""
    if isinstance(module, nn.Linear):
        return [_LinearRule()]
    if isinstance(module, nn.Conv2d):
        eps = getattr(module, "eps", None)
        epsilons = [None] if isinstance(eps, float) else list(_STANDARDIZATION_EPSILONS)
        return [
            _Conv2dRule(standardized=standardized, eps=e, same_pad=same_pad)
            for same_pad in (False, True)
            for standardized, e in [(False, None)] + [(True, e) for e in epsilons]
        ]
    if isinstance(module, nn.GroupNorm):
        return [_NormRule("group"), _NormRule("group", relu=True)]
    if isinstance(module, nn.LayerNorm):
        return [_NormRule("layer"), _NormRule("layer", relu=True)]
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return [_NormRule("batch"), _NormRule("batch", relu=True)]
    return []


_PROBED: weakref.WeakKeyDictionary[nn.Module, _Rule] = weakref.WeakKeyDictionary()


def _rule_for(module: nn.Module) -> _Rule:
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


def _reproduces(rule: _Rule, module: nn.Module) -> bool:
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


# -- targets: modules that register selected parameters ---------------------------------------


@dataclass(eq=False)
class _Target:
    name: str
    module: nn.Module
    params: list[tuple[str, str]]  # (attribute, qualified name)
    rule: _Rule
    calls: list[_Call] = field(default_factory=list)


def _targets(model: nn.Module, selected: dict[str, nn.Parameter]) -> list[_Target]:
    by_id = {id(param): name for name, param in selected.items()}
    targets = []
    for module_name, module in model.named_modules():
        owned = [
            (attr, by_id[id(param)])
            for attr, param in module.named_parameters(recurse=False, remove_duplicate=False)
            if id(param) in by_id
        ]
        if owned:
            rule = _rule_for(module)
            if isinstance(rule, _FunctionalRule):
                _check_no_active_dropout(module_name, module)
            targets.append(_Target(module_name or type(model).__name__, module, owned, rule))
    return targets


def _check_no_active_dropout(name: str, module: nn.Module) -> None:
    active = [n for n, m in module.named_modules() if _is_active_dropout(m)]
    if active:
        raise ValueError(
            f"module '{name}' ({type(module).__name__}) contains active dropout "
            f"({', '.join(active)}); the per-sample gradients of its parameters re-run its "
            "forward, which would draw new masks; call model.eval()"
        )


class _ParameterUseGuard(TorchFunctionMode):
    """Records selected parameters used by a torch function outside every module that
    registers them; such uses are invisible to the module rules."""

    def __init__(self, targets: list[_Target], active: Counter):
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


# -- the session: hooks, streaming computation, deferred contributions ------------------------


class _Session:
    def __init__(
        self,
        targets: list[_Target],
        settings: _Settings,
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
        key = (like.dtype, like.device)
        if key not in self._probes:
            self._probes[key] = torch.zeros(
                (), dtype=like.dtype, device=like.device
            ).requires_grad_()
        return self._probes[key]

    def probes(self) -> list[Tensor]:
        return list(self._probes.values())

    def _enter(self, target: _Target, module, args, kwargs):
        if self.is_recording:
            self.active[id(module)] += 1

    def _leave(self, target: _Target, module, args, kwargs, output):
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
            leaves[k] = leaves[k] + self._probe(leaves[k])
            probed.append(leaves[k])
        input_versions = [
            (t, t._version) for t in _tree_leaves((args, kwargs)) if isinstance(t, Tensor)
        ]
        call = _Call(
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

    def _on_gradient(self, target: _Target, call: _Call, index: int, grad: Tensor) -> None:
        call.grads[index] = grad
        if id(call) in self.streaming:
            self._compute(target, call)

    def _compute(self, target: _Target, call: _Call) -> None:
        self._check_inputs_unchanged(target, call)
        attrs = [attr for attr, _ in target.params]
        with torch.no_grad():
            powers = target.rule.powers(target, call, attrs, self.settings)
        for attr, name in target.params:
            self.result[:, self.columns[name]] += powers[attr].to(self.result.device)
        call.release()

    def _check_inputs_unchanged(self, target: _Target, call: _Call) -> None:
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

    def _sum_contributions(self, pending: list[tuple[_Target, _Call]]) -> None:
        settings = self.settings
        for target, call in pending:
            self._check_inputs_unchanged(target, call)
        size = min(t.rule.chunk_size(t, c, settings) for t, c in pending)
        names = list(dict.fromkeys(name for t, _ in pending for _, name in t.params))
        for start in range(0, settings.batch, size):
            stop = min(settings.batch, start + size)
            sums: dict[str, Tensor] = {}
            for target, call in pending:
                attrs = [attr for attr, _ in target.params]
                with torch.no_grad():
                    grads = target.rule.materialize(target, call, attrs, start, stop)
                for attr, name in target.params:
                    grad = grads[attr].to(_compute_dtype(grads[attr]))
                    sums[name] = grad if name not in sums else sums[name] + grad
            for name in names:
                self.result[start:stop, self.columns[name]] += _powers(sums[name], settings.p).to(
                    self.result.device
                )
        for _, call in pending:
            call.release()
