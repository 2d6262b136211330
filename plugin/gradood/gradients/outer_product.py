"""The rules of ``nn.Linear`` and ``nn.Conv2d``, plain and weight-standardized, each in up to
four exact forms: per-sample outer products of unfolded patches and output gradients, their
Gram (ghost norm) form, the Gram form from the padded input's pixels (convolutions), or one
convolution backward per sample; the fastest is timed and cached (:mod:`.choice`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .base import Call, Rule, Settings, Target, compute_dtype, row_powers
from .choice import fastest

#: the exact forms of a weight's statistic (also the ``method`` that asks for one)
GHOST, UNFOLD, CONV_BACKWARD = "ghost", "materialize", "conv-backward"
PADDED_GRAM = "padded-gram"
#: ``auto`` times the forms whose workspace per sample is at most this times the smallest
MEMORY_SPREAD = 4


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
class OuterProductRule(Rule):
    """``nn.Linear``/``nn.Conv2d`` and weight-standardized convolutions.

    With patches :math:`a_{il}` and output gradients :math:`\\gamma_{il}` at positions
    :math:`l` (per group), the weight's per-sample gradient is :math:`g_i = \\sum_l
    \\gamma_{il} a_{il}^\\top` and the bias's :math:`\\sum_l \\gamma_{il}`. Forms of the
    weight's statistic: ``materialize`` (:math:`g_i` from unfolded patches), ``conv-backward``
    (convolutions: :math:`g_i` from one convolution backward per sample, no unfolding) and,
    for ``p = 2``, ``ghost``, the Gram form :math:`\\lVert g_i \\rVert^2 = \\sum_{l, l'}
    (a_{il} \\cdot a_{il'}) (\\gamma_{il} \\cdot \\gamma_{il'})`, and for plain convolutions
    ``padded-gram``, the same sum without patches: a patch is the padded input :math:`\\tilde
    x_i` read at pixels :math:`s l + d \\delta` for the kernel offsets :math:`\\delta`, so
    :math:`a_{il} \\cdot a_{il'} = \\sum_\\delta K_i[s l + d \\delta, s l' + d \\delta]` with the
    Gram matrix :math:`K_i[q, q'] = \\sum_c \\tilde x_{icq} \\tilde x_{icq'}` of the padded
    pixels (per group): cheaper than unfolding where the maps are small. ``method="auto"`` runs
    the fastest, timed on first use (:func:`.choice.fastest`).

    ``standardized``: the layer uses the weight standardized per output channel with ``eps``
    (``None``: the module's ``eps`` attribute); the raw weight's gradient is the Jacobian map
    :math:`(v - \\bar v - \\hat w_o (v \\cdot \\hat w_o) / n) / s_o` of the gradient
    :math:`v` with respect to the standardized one.
    """

    standardized: bool = False
    eps: float | None = None

    def layout(self, module: nn.Module, x: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        """Patches A (n x g x L x d_in) and output gradients G (n x g x L x d_out)."""
        raise NotImplementedError

    def positions(self, module: nn.Module, call: Call) -> int:
        raise NotImplementedError

    def groups(self, module: nn.Module) -> int:
        return 1

    def unfolds(self) -> bool:
        return False

    def _eps(self, module: nn.Module) -> float:
        return float(module.eps) if self.eps is None else self.eps

    def _as_used(self, module: nn.Module, weight: Tensor) -> Tensor:
        """The weight as the layer applies it: standardized per output channel, or as is."""
        if not self.standardized:
            return weight
        return _standardize(weight, self._eps(module))[0].reshape_as(weight)

    def _sizes(self, module: nn.Module, call: Call) -> tuple[int, int, int, int]:
        weight = module.weight
        groups = self.groups(module)
        d_out = weight.shape[0] // groups
        d_in = weight[0].numel()
        return self.positions(module, call), groups, d_in, d_out

    def forms(self, module: nn.Module, call: Call, settings: Settings) -> list[str]:
        """The exact forms of the weight's statistic that apply and ``settings.method`` allows
        (a form that does not apply falls back to ``materialize``). ``auto`` tries the
        convolution backward only where the patches outnumber the gradient's entries (more
        positions than output channels): elsewhere unfolding is cheap, and torch's batched
        convolution backward takes far more memory than the gradients; and only the forms
        whose workspace per sample is within :data:`MEMORY_SPREAD` of the smallest."""
        available = [UNFOLD]
        if self.unfolds():
            positions, _, _, d_out = self._sizes(module, call)
            if settings.method == CONV_BACKWARD or positions > d_out:
                available.append(CONV_BACKWARD)
        # the Gram form of the standardized weight reads the layer's output
        if settings.p == 2 and (not self.standardized or call.output_unchanged()):
            available.insert(0, GHOST)
        if settings.p == 2 and self.unfolds() and not self.standardized:
            available.insert(1, PADDED_GRAM)
        if settings.method != "auto":
            return [settings.method] if settings.method in available else [UNFOLD]
        memory = {form: self._per_sample_elements(module, call, form) for form in available}
        smallest = min(memory.values())
        return [form for form in available if memory[form] <= MEMORY_SPREAD * smallest]

    def chunk_size(self, target: Target, call: Call, settings: Settings) -> int:
        return settings.chunk(self._per_sample_elements(target.module, call, UNFOLD))

    def _per_sample_elements(self, module: nn.Module, call: Call, form: str) -> int:
        """The workspace of one sample in ``form`` (elements)."""
        positions, groups, d_in, d_out = self._sizes(module, call)
        if form == PADDED_GRAM:
            pixels = self.padded_pixels(module, call)
            # the pixels' Gram matrix and its row sums, the patches' and the gradients' Grams
            return 2 * groups * (pixels * pixels + positions * positions)
        patches = groups * positions * d_in if self.unfolds() and form != CONV_BACKWARD else 0
        if form == GHOST:
            return patches + groups * positions * (2 * positions + d_out)
        return patches + 3 * groups * d_in * d_out

    def materialize(self, target, call, attrs, start, stop):
        module = target.module
        x, grad = call.input[start:stop], call.grad[start:stop]
        result = {}
        if "weight" in attrs:
            weight_grad = self._weight_gradient(UNFOLD, module, x, grad)
            result["weight"] = weight_grad.reshape(-1, *module.weight.shape)
        if "bias" in attrs:
            result["bias"] = self.bias_gradient(module, grad)
        return result

    def _weight_gradient(self, form: str, module: nn.Module, x: Tensor, grad: Tensor) -> Tensor:
        """Per-sample gradients of the raw weight, n x C_out x fan-in, in ``form``."""
        if form == CONV_BACKWARD:
            blocks = self.conv_backward(module, x, grad)
        else:
            patches, out_grads = self.layout(module, x, grad)
            blocks = out_grads.transpose(-1, -2) @ patches  # n x g x d_out x d_in
        weight_grad = blocks.reshape(blocks.shape[0], module.weight.shape[0], -1)
        if self.standardized:
            weight_grad = self._through_standardization(module, weight_grad)
        return weight_grad

    def conv_backward(self, module: nn.Module, x: Tensor, grad: Tensor) -> Tensor:
        """Per-sample gradients of the weight as the layer uses it (n x weight shape)."""
        raise NotImplementedError

    def padded_pixels(self, module: nn.Module, call: Call) -> int:
        """Pixels of one channel of the padded input (convolutions)."""
        raise NotImplementedError

    def padded_gram_squared_norms(self, module: nn.Module, x: Tensor, grad: Tensor) -> Tensor:
        """Squared norms of the per-sample weight gradients in the ``padded-gram`` form."""
        raise NotImplementedError

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
        if "weight" not in attrs:
            return super().powers(target, call, attrs, settings)
        forms = self.forms(module, call, settings)
        candidates = {f: partial(self._weight_powers, f, module, call, settings) for f in forms}
        key = self._choice_key(module, call, settings, forms)
        result = {"weight": fastest(key, candidates, call.grad.device)}
        if "bias" in attrs:
            result["bias"] = row_powers(self.bias_gradient(module, call.grad), settings.p)
        return result

    def _choice_key(self, module: nn.Module, call: Call, settings: Settings, forms: list) -> tuple:
        """What the forms' times depend on: the rule, the layer's hyperparameters, the call's
        shapes, dtypes and device, the order, the workspace and the forms."""
        tensors = [(tuple(t.shape), t.dtype, t.device) for t in (call.input, call.grad)]
        return (self, repr(module), *tensors, settings.p, settings.workspace, tuple(forms))

    def _weight_powers(self, form: str, module: nn.Module, call: Call, settings: Settings):
        """The weight's per-sample statistic in ``form``, over chunks of the batch."""
        if form == GHOST:
            return self._ghost_squared_norms(module, call, settings)
        size = settings.chunk(self._per_sample_elements(module, call, form))
        parts = []
        for start, stop in settings.spans(size):
            x, grad = call.input[start:stop], call.grad[start:stop]
            if form == PADDED_GRAM:
                parts.append(self.padded_gram_squared_norms(module, x, grad))
            else:
                weight_grad = self._weight_gradient(form, module, x, grad)
                parts.append(row_powers(weight_grad, settings.p))
        return torch.cat(parts)

    def _ghost_squared_norms(self, module: nn.Module, call: Call, settings: Settings) -> Tensor:
        size = settings.chunk(self._per_sample_elements(module, call, GHOST))
        parts = []
        for start, stop in settings.spans(size):
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
        """:math:`\\sum_o \\lVert J_o^\\top v_o \\rVert^2` from Gram matrices (class docstring):
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


def _sum_of(tensors: Iterable[Tensor]) -> Tensor:
    """The sum of the tensors, added into the first (a new one)."""
    iterator = iter(tensors)
    total = next(iterator).clone()
    for tensor in iterator:
        total += tensor
    return total


def _offset_pixels(offset: int, stride: int, count: int) -> slice:
    """The padded input's rows (or columns) that output positions ``0 .. count - 1`` read at
    one kernel offset."""
    return slice(offset, offset + stride * (count - 1) + 1, stride)


def _conv_output_layout(values: Tensor, groups: int) -> Tensor:
    """n x C x H x W -> n x g x L x C/g."""
    n, channels = values.shape[:2]
    return values.reshape(n, groups, channels // groups, -1).transpose(-1, -2)


@dataclass(frozen=True)
class LinearRule(OuterProductRule):
    """``nn.Linear`` with any leading dims: each input row is a patch, one position each."""

    def positions(self, module, call):
        return call.input[0].numel() // module.in_features

    def layout(self, module, x, grad):
        n, dtype = x.shape[0], compute_dtype(grad)
        patches = x.to(dtype).reshape(n, 1, -1, module.in_features)
        return patches, grad.to(dtype).reshape(n, 1, -1, module.out_features)

    def bias_gradient(self, module, grad):
        return grad.reshape(grad.shape[0], -1, module.out_features).sum(dim=1)

    def probe_input(self, module, generator):
        return torch.randn(2, 3, module.in_features, generator=generator, dtype=torch.float64)

    def reference(self, module, x, state):
        return F.linear(x, self._as_used(module, state["weight"]), state.get("bias"))


@dataclass(frozen=True)
class Conv2dRule(OuterProductRule):
    """``nn.Conv2d`` (any stride, padding, padding mode, dilation, groups): the patches are the
    unfolded padded input, one position per output pixel. ``same_pad``: TensorFlow's SAME
    padding first (timm's ``StdConv2dSame``)."""

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
        x, padding = self._padded(module, x.to(compute_dtype(grad)))
        n = x.shape[0]
        patches = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)
        patches = patches.reshape(n, module.groups, -1, patches.shape[-1]).transpose(-1, -2)
        return patches, _conv_output_layout(grad.to(x.dtype), module.groups)

    def bias_gradient(self, module, grad):
        return grad.sum(dim=(2, 3))

    def _fully_padded(self, module: nn.Module, x: Tensor) -> Tensor:
        x, padding = self._padded(module, x)
        pad_h, pad_w = _pair(padding)
        return F.pad(x, (pad_w, pad_w, pad_h, pad_h)) if pad_h or pad_w else x

    def padded_pixels(self, module, call):
        padded = isinstance(module.padding, str) or self.same_pad
        extents = [
            size + (d * (k - 1) if padded else 2 * pad)
            for size, k, d, pad in zip(
                call.input.shape[-2:],
                module.kernel_size,
                module.dilation,
                (0, 0) if padded else _pair(module.padding),
                strict=True,
            )
        ]
        return extents[0] * extents[1]

    def padded_gram_squared_norms(self, module, x, grad):
        dtype = compute_dtype(grad)
        x = self._fully_padded(module, x.to(dtype))
        n, groups = x.shape[0], module.groups
        (height, width), (out_h, out_w) = x.shape[-2:], grad.shape[-2:]
        pixels = x.reshape(n, groups, -1, height * width)
        pixel_gram = (pixels.transpose(-1, -2) @ pixels).view(
            n, groups, height, width, height, width
        )
        grads = grad.to(dtype).reshape(n, groups, -1, out_h * out_w)
        grad_gram = grads.transpose(-1, -2) @ grads
        # the kernel offsets are separable: sum the row shifts, then the column shifts
        rows = [
            _offset_pixels(kh * module.dilation[0], module.stride[0], out_h)
            for kh in range(module.kernel_size[0])
        ]
        cols = [
            _offset_pixels(kw * module.dilation[1], module.stride[1], out_w)
            for kw in range(module.kernel_size[1])
        ]
        row_sums = _sum_of(pixel_gram[:, :, r, :, r, :] for r in rows)
        patch_gram = _sum_of(row_sums[:, :, :, c, :, c] for c in cols)
        return torch.linalg.vecdot(patch_gram.flatten(1), grad_gram.flatten(1)).double()

    def conv_backward(self, module, x, grad):
        dtype = compute_dtype(grad)
        x, padding = self._padded(module, x.to(dtype))
        weight = module.weight.detach().to(dtype)
        geometry = (list(module.stride), list(_pair(padding)), list(module.dilation))

        def one_sample(sample: Tensor, sample_grad: Tensor) -> Tensor:
            return torch.ops.aten.convolution_backward(
                sample_grad[None], sample[None], weight, None, *geometry,
                False, [0, 0], module.groups, [False, True, False],
            )[1]  # fmt: skip

        return torch.func.vmap(one_sample)(x, grad.to(dtype))

    def probe_input(self, module, generator):
        extent = [
            d * (k - 1) + 2 * s + 2
            for k, s, d in zip(module.kernel_size, module.stride, module.dilation, strict=True)
        ]
        shape = (1, module.in_channels, extent[0], extent[1] + 1)
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    def reference(self, module, x, state):
        weight, bias = self._as_used(module, state["weight"]), state.get("bias")
        x, padding = self._padded(module, x)
        return F.conv2d(x, weight, bias, module.stride, padding, module.dilation, module.groups)
