"""The rule of GroupNorm, LayerNorm and BatchNorm (evaluation mode), optionally followed by
a ReLU inside the module."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Rule, compute_dtype


@dataclass(frozen=True)
class NormRule(Rule):
    """GroupNorm / LayerNorm / BatchNorm in evaluation mode, optionally followed by a ReLU.

    With :math:`\\hat x` the input normalized as the layer does it (recomputed from the
    recorded input; BatchNorm with its running statistics) and :math:`\\gamma` the output
    gradient (masked by :math:`y > 0` after a ReLU), the per-sample gradients are
    :math:`\\sum \\gamma \\odot \\hat x` for the weight and :math:`\\sum \\gamma` for the
    bias, summed over the dims that share a weight entry. BatchNorm's weight without the
    ReLU: :math:`(\\sum \\gamma \\odot x - \\mu \\sum \\gamma) / \\sqrt{\\sigma^2 +
    \\epsilon}` per channel, the same sum without forming :math:`\\hat x` (one pass over
    :math:`\\gamma` and :math:`x`).
    """

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
        dtype = compute_dtype(grad)
        grad = grad.to(dtype)
        x_hat = None
        if self.relu:
            x_hat = self._normalized(module, call.input[start:stop].to(dtype))
            if call.output_unchanged():
                active = call.output[start:stop] > 0
            else:  # the output was changed in place later: recompute the pre-activation
                active = self._affine(module, x_hat) > 0
            grad = grad * active
        dims = self._shared_dims(module, grad)
        summed = grad.sum(dim=dims) if dims else grad  # the bias's gradient
        result = {"bias": summed} if "bias" in attrs else {}
        if "weight" in attrs:
            x = call.input[start:stop].to(dtype)
            if self.kind == "batch" and not self.relu and dims:
                result["weight"] = self._batch_norm_weight_gradient(module, x, grad, summed)
            else:
                product = grad * (self._normalized(module, x) if x_hat is None else x_hat)
                result["weight"] = product.sum(dim=dims) if dims else product
        return result

    @staticmethod
    def _batch_norm_weight_gradient(
        module: nn.Module, x: Tensor, grad: Tensor, summed: Tensor
    ) -> Tensor:
        """n x C: :math:`(\\sum \\gamma \\odot x - \\mu \\sum \\gamma) / \\sqrt{\\sigma^2 +
        \\epsilon}` over the positions of each channel (running statistics), with ``summed``
        the sums of :math:`\\gamma`."""
        mean = module.running_mean.to(grad.dtype)
        scale = torch.rsqrt(module.running_var.to(grad.dtype) + module.eps)
        return (torch.linalg.vecdot(grad.flatten(2), x.flatten(2)) - mean * summed) * scale

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
