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

**Forms, chosen by time** (``method="auto"``, Linear/Conv2d weights): every form is exact;
which is fastest depends on the shapes and the device more than on multiply-adds. Per sample
and group, with :math:`L` positions, fan-in :math:`d_{in}`, :math:`d_{out}` output channels:
``materialize`` unfolds the patches (:math:`L d_{in}` memory) and forms :math:`g_i` in
:math:`L d_{in} d_{out}` multiply-adds; ``conv-backward`` (convolutions) forms :math:`g_i` with
one convolution backward per sample (``torch.func.vmap``), without unfolding; ``ghost``
(:math:`p = 2`), the Gram form :math:`\\lVert g_i \\rVert^2 = \\sum_{l, l'} (a_l \\cdot
a_{l'}) (\\gamma_l \\cdot \\gamma_{l'})`, costs :math:`L^2 (d_{in} + d_{out})` (:math:`L^2
(d_{in} + 2 d_{out})` with weight standardization) and :math:`2 L^2` memory; ``padded-gram``
(plain convolutions, :math:`p = 2`) forms the same sum from the Gram matrix of the padded
input's :math:`P` pixels, :math:`P^2 d_{in} / k^2 + L^2 d_{out} + k^2 L^2` multiply-adds for
:math:`k^2` kernel offsets and :math:`P^2 + L^2` memory, without unfolding: the cheapest
where maps are small (ResNet-20's 64-channel 8 x 8 layers). On first use of a
(layer, input shape, dtype, device, order) each applicable form whose workspace per sample is
within 4x of the smallest (the convolution backward only where positions outnumber output
channels) runs twice, alternating, and the fastest run's form is cached in memory
(``choice``); the choice may differ between
machines, the result does not (up to rounding). Everything runs over chunks of samples whose
workspace stays under ``workspace_elements`` (at least one sample per chunk). The Gram form
squares the conditioning of :math:`\\lVert g_i \\rVert` (relative rounding error :math:`\\sim u
(\\sum_l \\lVert \\gamma_l \\rVert \\lVert a_l \\rVert / \\lVert g_i \\rVert)^2` instead of its
square root); in float32 that can matter for gradients that nearly cancel over positions.

**Requirements.** Samples must not interact: a BatchNorm in training mode (or without running
statistics) raises ``ValueError``. Dropout in training mode gives the exact per-sample gradients
of the masks drawn in this pass (dropout acts on each sample alone), so it only warns that the
values are random; a generic-rule owner containing active dropout raises, because its forward
would be re-run with new masks. Every selected parameter must be used inside the forward of a
module that registers it; a use anywhere else is detected and raises ``ValueError`` naming it.
Modules must see the batch in their first dimension. Reductions are done in float64; the result
is float64.

**Layout.** ``api``: the entry points, parameter selection, argument checks; ``session``: the
recording hooks and the pass, contributions computed during the backward pass or summed after
it; ``base``: settings, recorded calls, targets, the rule interface and the reductions;
``outer_product``, ``norm``, ``functional``: the rules; ``choice``: the timed choice of a
rule's form; ``dispatch``: which rule a module gets
(the subclass probe); ``checks``: what makes per-sample gradients undefined. Imports point from
``api`` down to ``base``.
"""

from __future__ import annotations

from .api import (
    DEFAULT_WORKSPACE_ELEMENTS,
    per_sample_gradient_powers,
    per_sample_squared_norms,
    resolve_parameter_names,
)

__all__ = [
    "DEFAULT_WORKSPACE_ELEMENTS",
    "per_sample_gradient_powers",
    "per_sample_squared_norms",
    "resolve_parameter_names",
]
