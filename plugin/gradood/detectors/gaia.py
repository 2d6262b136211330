"""GAIA (Chen et al., NeurIPS 2023), its two detectors exact to the official code
(``JGEthanChen/GAIA-OOD``: ``cal_method.py``, ``hook.py``), one batched pass per micro-batch.

Notation: :math:`z \\in \\mathbb{R}^C` the logits, :math:`f` the head's input (the pooled
"before-head" feature), :math:`A^{(l)}` the output of inspected layer :math:`l` with channels
:math:`k` and :math:`N_l` spatial positions :math:`s`, and for a scalar :math:`L`,
:math:`\\bar g^{(l)}_k(L) = \\frac{1}{N_l} \\sum_s \\partial L / \\partial A^{(l)}_{k,s}`, its
channel's spatially averaged gradient. The layers are the inner layers
:math:`l = 1 \\dots m` and the output layer :math:`o`
(:mod:`gradood.detectors.gaia_layers`). All gradients are of activations, never of parameters:
each sample's statistics come from the gradient of a sum over the batch.

**GAIA-A** (``cal_grad_value``, channel-wise average abnormality): with
:math:`L_1 = \\sum_c \\log \\mathrm{softmax}(z)_c` and :math:`L_2 = \\sum_d f_d`,

.. math::
    u = \\sqrt{\\frac{1}{K_o} \\sum_k \\bigl|\\bar g^{(o)}_k(L_1)\\bigr|}, \\qquad
    S_A(x) = \\frac{1}{K} \\sum_{l=1}^{m} \\sum_k
    \\left( \\frac{|\\bar g^{(l)}_k(L_2)|}{u} \\right)^2

over the :math:`K = \\sum_l K_l` channels of the inner layers: two backward passes.

**GAIA-Z** (``cal_zero``, zero-deflation abnormality): with :math:`L_3 = \\max_c z_c`, the
fraction of *non-zero* gradient entries of each channel, over the inner layers and the output
layer together (:math:`K` channels),

.. math::
    \\rho^{(l)}_k = \\frac{1}{N_l} \\sum_s
    \\mathbb{1}\\left[\\partial L_3 / \\partial A^{(l)}_{k,s} \\neq 0\\right], \\qquad
    S_Z(x) = \\frac{1}{K} \\sum_{l} \\sum_k \\left(\\rho^{(l)}_k\\right)^2

from one backward pass. The official code returns these values and negates them into an ID
score (``Methods.cal_score``); the outlier scores here are :math:`S_A` and :math:`S_Z`
themselves (higher = more OOD), in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pytorch_ood.api import DetectorInfo, GradientDetector, ModelNotSetException, Paper, Task
from torch import Tensor, nn

from ..capture import layer_outputs
from ..grad_mode import autograd_enabled, ordinary
from ..gradients.checks import check_samples_are_independent
from ..heads import check_output_is_head_output, find_head, forward_logits, module_name
from ..validation import (
    check_finite,
    check_finite_scores,
    check_inputs,
    check_positive_int,
    warn_if_training,
)
from .gaia_layers import CHOICES, LayerChoice, choose_layers
from .settings import ShowsSettings

__all__ = ["GAIA", "GAIA_PAPER", "VARIANTS", "gaia_a_scores", "gaia_z_scores"]

#: Chen, Li, Qu, Wang, Wan, Xiao: GAIA (NeurIPS 2023)
GAIA_PAPER = Paper(
    title="GAIA: Delving into Gradient-based Attribution Abnormality for Out-of-distribution "
    "Detection",
    venue="NeurIPS",
    year=2023,
    url="https://arxiv.org/abs/2311.09620",
    code="https://github.com/JGEthanChen/GAIA-OOD",
)
#: variant -> the official function it reproduces
VARIANTS = {"A": "cal_grad_value", "Z": "cal_zero"}


def _head_io(inputs: tuple, output: Tensor) -> tuple[Tensor, Tensor]:
    return inputs[0], output


def _channel_means(tensor: Tensor) -> Tensor:
    """B x K: the mean over every axis after the channel axis (none for B x K), in float64."""
    values = tensor.double()
    return values.mean(dim=tuple(range(2, values.ndim))) if values.ndim > 2 else values


def _gradients(loss: Tensor, tensors: list[Tensor], retain: bool = False) -> list[Tensor]:
    """``d loss / d tensor`` for each tensor (zeros for one the loss does not depend on)."""
    grads = torch.autograd.grad(loss, tensors, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads, strict=True)]


def gaia_a_scores(logits: Tensor, feature: Tensor, inner: list[Tensor], output: Tensor) -> Tensor:
    """:math:`S_A` per sample from a pass's graph (module docstring): ``feature`` is the head's
    input :math:`f`, ``inner`` and ``output`` the inspected layers' outputs."""
    (output_gradient,) = _gradients(torch.log_softmax(logits, dim=1).sum(), [output], retain=True)
    output_component = _channel_means(output_gradient).abs().mean(dim=1).sqrt()
    inner_gradients = _gradients(feature.sum(), inner)
    inner_component = torch.cat([_channel_means(g).abs() for g in inner_gradients], dim=1)
    return (inner_component / output_component[:, None]).pow(2).mean(dim=1)


def gaia_z_scores(logits: Tensor, layers: list[Tensor]) -> Tensor:
    """:math:`S_Z` per sample from a pass's graph (module docstring): the fraction of non-zero
    gradient entries of each channel of ``layers``' outputs."""
    gradients = _gradients(logits.max(dim=1).values.sum(), layers)
    fractions = torch.cat([_channel_means(g != 0) for g in gradients], dim=1)
    return fractions.pow(2).mean(dim=1)


class GAIA(ShowsSettings, GradientDetector):
    """GAIA-A (``variant="A"``) or GAIA-Z (``variant="Z"``), exact to the official code (the
    math in the module docstring); a ``GradientDetector``: it scores model inputs, with
    gradients enabled for its pass also under ``torch.no_grad()`` and
    ``torch.inference_mode()``. Nothing to fit.

    Layers: ``layers`` is a named choice of :mod:`gradood.detectors.gaia_layers`
    (``"norms"``, the general rule, by default; ``"before_head"``, ``"bn"``, ``"textures"``: the
    official ones for ResNet and BiT) or a sequence of modules or qualified module names (the
    inner layers); ``output_layer`` (a module or its name) replaces the choice's output layer,
    whose default is the head's input. Each inspected layer must run once per forward pass.
    Its output is recorded as the layer returns it (the model goes on with a copy), so an
    in-place operation after it (``ReLU(inplace=True)``) does not change the gradient taken, as
    the official tensor hooks see it.
    """

    info = DetectorInfo(paper=GAIA_PAPER, tasks={Task.CLASSIFICATION}, ai_coded=True)

    def __init__(
        self,
        model: nn.Module,
        variant: str = "A",
        layers: str | Sequence[str | nn.Module] | None = None,
        output_layer: str | nn.Module | None = None,
        head: str | nn.Module | None = None,
        micro_batch_size: int = 32,
    ):
        """
        :param model: the classifier, in evaluation mode; its output is the head's
        :param variant: ``"A"`` (``cal_grad_value``) or ``"Z"`` (``cal_zero``)
        :param layers: the inner layers: a named choice or modules / qualified names (class
            docstring); ``None``: ``"norms"``
        :param output_layer: the output layer (module or name); ``None``: the choice's
        :param head: the final layer (module or qualified name); found automatically if
            ``None`` (:func:`gradood.heads.find_head`)
        :param micro_batch_size: samples per forward and backward pass (the official code
            ran batches of 16 on ImageNet, 128 on CIFAR; the scores do not depend on it)
        :raises ValueError: on an unknown variant or layer choice, a name that is no module of
            ``model``, no inner layer, or if no head is found
        """
        super().__init__()
        if model is None:
            raise ModelNotSetException("GAIA needs a model")
        if variant not in VARIANTS:
            raise ValueError(f"GAIA's variant must be 'A' or 'Z', got {variant!r}")
        self.model = model
        self.variant = variant
        self.micro_batch_size = check_positive_int(micro_batch_size, "micro_batch_size")
        self.head = find_head(model, head)
        choice = _layer_choice(model, layers, output_layer)
        #: qualified names of the inner layers
        self.layers: list[str] = list(choice.inner)
        #: qualified name of the output layer; ``None``: the head's input
        self.output_layer: str | None = choice.output

    def _settings(self) -> dict[str, object]:
        return {
            "variant": self.variant,
            "layers": self.layers,
            "output_layer": self.output_layer,
            "head": self.head.name,
        }

    def predict(self, x: Tensor) -> Tensor:
        """Outlier scores :math:`S_A` or :math:`S_Z` (float64, shape B) of a batch of inputs.

        :raises ValueError: if ``x`` has no batch axis or is not finite, a BatchNorm uses batch
            statistics, an inspected layer does not run exactly once or returns no tensor (an
            LSTM's tuple), the model's output is not its head's, or a score is not finite
        """
        x = check_inputs(x, self.device, "GAIA")
        if x.shape[0] == 0:
            return torch.empty(0, dtype=torch.float64, device=x.device)
        check_samples_are_independent(self.model)
        warn_if_training(self.model, "GAIA")
        scores = torch.cat(
            [
                self._scores(x[start : start + self.micro_batch_size])
                for start in range(0, x.shape[0], self.micro_batch_size)
            ]
        )
        return check_finite_scores(scores, f"GAIA-{self.variant}", {"layers": self.layers})

    def _scores(self, x: Tensor) -> Tensor:
        """One forward and one (Z) or two (A) backward passes over a micro-batch."""
        names = [*self.layers, *([self.output_layer] if self.output_layer else [])]
        with autograd_enabled():
            inputs = ordinary(x).detach().requires_grad_()
            with (
                layer_outputs(
                    self.model, {name: name for name in names}, copy_output=True
                ) as outputs,
                layer_outputs(self.model, {"head": self.head.module}, _head_io) as head_calls,
            ):
                logits = forward_logits(self.model, inputs)
            tensors = [self._single_output(name, outputs[name]) for name in names]
            feature = self._head_input(head_calls["head"], logits)
            check_finite(logits.detach(), "logits")
            output = tensors.pop() if self.output_layer else feature
            if self.variant == "A":
                return gaia_a_scores(logits, feature, tensors, output).detach()
            return gaia_z_scores(logits, [*tensors, output]).detach()

    def _single_output(self, name: str, calls: list) -> Tensor:
        if len(calls) == 1 and isinstance(calls[0], Tensor):
            return calls[0]
        problem = f"it ran {len(calls)} times"
        if len(calls) == 1:
            problem = f"it returns {_kind(calls[0])}, not one tensor"
        raise ValueError(
            f"GAIA inspects layer '{name}', which must return one tensor exactly once per "
            f"forward pass; {problem}"
        )

    def _head_input(self, calls: list, logits: Tensor) -> Tensor:
        if not calls:
            raise ValueError(f"the head '{self.head.name}' was not called in the forward pass")
        feature, head_output = calls[-1]
        check_output_is_head_output(self.model, self.head, logits, head_output.detach())
        return feature


def _kind(value: object) -> str:
    """``a tuple of 2``, ``a dict``, ...: what a layer returned instead of a tensor."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _layer_choice(
    model: nn.Module,
    layers: str | Sequence[str | nn.Module] | None,
    output_layer: str | nn.Module | None,
) -> LayerChoice:
    if layers is None or isinstance(layers, str):
        choice = choose_layers(model, layers or "norms")
    else:
        inner = tuple(module_name(model, layer, "the layer") for layer in layers)
        choice = LayerChoice(inner, None)
    if not choice.inner:
        raise ValueError(
            f"GAIA needs at least one inner layer; layer choices: {', '.join(CHOICES)}"
        )
    if output_layer is not None:
        choice = LayerChoice(choice.inner, module_name(model, output_layer, "the output layer"))
    return choice
