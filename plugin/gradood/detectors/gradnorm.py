"""GradNorm, exactly as the official code computes it, at the cost of one forward pass.

The official algorithm, per sample (batch size 1): with logits :math:`z \\in \\mathbb{R}^C` and
temperature :math:`T`,

.. math::
    \\mathcal{L}(x) = \\sum_{c=1}^{C} -\\log \\mathrm{softmax}(z / T)_c, \\qquad
    S(x) = \\left\\lVert \\frac{\\partial \\mathcal{L}}{\\partial W} \\right\\rVert_p

where :math:`W` (C x D) is the weight of the final layer (not its bias) and
:math:`\\lVert \\cdot \\rVert_p` the entrywise :math:`L_p` "norm"
:math:`(\\sum |g|^p)^{1/p}` (any :math:`p > 0`; the maximum for :math:`p = \\infty`). Higher
:math:`S` means more in-distribution.

Since :math:`z = W h + b` for the penultimate feature :math:`h`, the gradient is the rank-one
matrix :math:`g \\, h^\\top` with :math:`g = (C \\, \\mathrm{softmax}(z/T) - 1) / T`, so

.. math::
    S(x) = \\lVert g \\rVert_p \\, \\lVert h \\rVert_p,

which one forward pass gives, for every :math:`p` and :math:`T`. The outlier score returned by
:class:`GradNorm` is :math:`-S(x)`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from pytorch_ood.api import (
    Detector,
    DetectorInfo,
    FeaturesDetector,
    GradientDetector,
    ModelNotSetException,
    Task,
)
from torch import Tensor, nn

from ..gradients import per_sample_gradient_powers, resolve_parameter_names
from ..heads import (
    Head,
    PenultimateEncoder,
    find_head,
    forward_with_features,
    penultimate_encoder,
)
from ..paper import GRADNORM_PAPER
from ..validation import (
    check_finite,
    check_finite_scores,
    check_inputs,
    check_logits,
    check_norm_order,
    check_positive_int,
    check_temperature,
    settings_text,
    warn_if_training,
)
from .settings import InitSignature, ShowsSettings

__all__ = [
    "PAPER_NORMS",
    "PAPER_TEMPERATURES",
    "GradNorm",
    "HeadGradNorm",
    "ParameterGradNorm",
    "gradnorm_factor",
    "gradnorm_factors",
    "gradnorm_score",
    "uniform_loss",
]

#: the norms of the paper's Table 7
PAPER_NORMS: list[float] = [0.3, 0.5, 0.8, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, math.inf]
#: sums of powers computed without loss of precision: float64's normal range with a margin
_SAFE_POWERS = (1e-290, 1e290)
#: the temperatures of the paper's Table 8, 2^-4 ... 2^10
PAPER_TEMPERATURES: list[float] = [2.0**k for k in range(-4, 11)]
_UNIFORM = (
    "softmax(z / T) is uniform to float64 precision for every sample (V = 0): its logits are "
    "equal, or too close for this temperature (their spread / T below float64's resolution, "
    "2.2e-16), which a smaller temperature resolves"
)


def uniform_loss(logits: Tensor, temperature: float) -> Tensor:
    """Per-sample official loss, :math:`\\sum_c -\\log \\mathrm{softmax}(z / T)_c` (shape B)."""
    return -torch.log_softmax(logits / temperature, dim=1).sum(dim=1)


def _log_norm(rows: Tensor, p: float) -> Tensor:
    """``log`` of the entrywise L_p norm of each row, computed without overflow."""
    magnitudes = rows.abs()
    if math.isinf(p):
        return magnitudes.amax(dim=1).log()
    return torch.logsumexp(p * magnitudes.log(), dim=1) / p


def gradnorm_factors(
    logits: Tensor, features: Tensor, p: float = 1.0, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """GradNorm's two factors, :math:`U = \\lVert h \\rVert_p` and
    :math:`V = \\lVert g \\rVert_p` with :math:`g = (C \\, \\mathrm{softmax}(z/T) - 1) / T`
    (see :func:`gradnorm_score`), the split of the paper's Section 5.

    :return: float64 tensors ``(U, V)`` of shape B, without an autograd graph
    :raises ValueError: if a factor overflows float64 (only for tiny ``p``), or the model has
        one output class (then :math:`V = 0` for every input)
    :warns RuntimeWarning: if a factor is 0 for the whole batch, naming why
    """
    _check_classes(logits.shape[1])
    log_u, log_v = _log_factors(logits, features, p, temperature)
    return (
        _finite_exp(log_u, p, temperature, _FACTORS[0]),
        _finite_exp(log_v, p, temperature, _FACTORS[1]),
    )


def gradnorm_factor(
    logits: Tensor, features: Tensor, factor: int, p: float = 1.0, temperature: float = 1.0
) -> Tensor:
    """One of :func:`gradnorm_factors`: ``factor`` 0 for :math:`U`, 1 for :math:`V` (a warning
    only for that one). :math:`U` is defined for a one-class model too."""
    if factor == 1:
        _check_classes(logits.shape[1])
    log_factor = _log_factors(logits, features, p, temperature)[factor]
    return _finite_exp(log_factor, p, temperature, _FACTORS[factor])


def gradnorm_score(
    logits: Tensor, features: Tensor, p: float = 1.0, temperature: float = 1.0
) -> Tensor:
    """The official GradNorm value :math:`\\lVert g \\rVert_p \\lVert h \\rVert_p` (higher = ID),
    computed in logarithms (:math:`\\log \\lVert C \\mathrm{softmax}(z/T) - 1 \\rVert_p - \\log T
    + \\log \\lVert h \\rVert_p`): no power over- or underflows, at any ``p`` and ``T``.

    :param logits: :math:`z`, shape B x C
    :param features: penultimate features :math:`h` entering the final layer, shape B x D
    :param p: order of the entrywise norm, > 0 or ``math.inf``
    :param temperature: :math:`T > 0`
    :return: float64 scores of shape B, without an autograd graph
    :raises ValueError: if :math:`z / T` overflows float64 (a temperature that underflows), or
        a score does not fit float64 (only for tiny ``p``)
    """
    _check_classes(logits.shape[1])
    log_u, log_v = _log_factors(logits, features, p, temperature)
    return _finite_exp(log_u + log_v, p, temperature, "gradient")


def _log_factors(
    logits: Tensor, features: Tensor, p: float, temperature: float
) -> tuple[Tensor, Tensor]:
    """``(log U, log V)`` in float64 (see :func:`gradnorm_factors`); V of a one-class model
    is 0, so the callers that use V refuse it (:func:`_check_classes`)."""
    p, temperature = check_norm_order(p), check_temperature(temperature)
    z, h = logits.detach().double(), features.detach().double()
    num_classes = z.shape[1]
    _check_temperature_fits(z, temperature)
    centered = num_classes * torch.softmax(z / temperature, dim=1) - 1
    # log V = log ||centered||_p - log T: no division by a tiny T before the logarithm
    return _log_norm(h, p), _log_norm(centered, p) - math.log(temperature)


def _check_classes(num_classes: int) -> None:
    """One output class is an error: then :math:`\\mathrm{softmax}(z / T) = 1`, so
    :math:`V = 0` and every score is 0 whatever the input."""
    if num_classes < 2:
        raise ValueError(
            f"GradNorm needs a model with at least 2 output classes, got {num_classes}: with one, "
            "softmax(z / T) = 1, so the logit gradient C softmax(z / T) - 1 is 0 and every score "
            "is 0 (V = 0 for every input)"
        )


def _check_temperature_fits(z: Tensor, temperature: float) -> None:
    """A temperature so small that :math:`z / T` overflows float64 is an error saying so."""
    overflowing = ~torch.isfinite(z / temperature) & torch.isfinite(z)
    if bool(overflowing.any()):
        samples = int(overflowing.any(dim=1).sum())
        raise ValueError(
            f"the temperature T = {temperature!r} underflows: z / T overflows float64 for "
            f"{samples} of {len(z)} samples; use a larger temperature"
        )


def _finite_exp(log_values: Tensor, p: float, temperature: float, what: str) -> Tensor:
    """``exp(log_values)``: an error naming the setting where a value exceeds float64."""
    values = torch.exp(log_values)
    settings = {"p": p, "temperature": temperature}
    if bool(torch.isinf(values).any()):
        bad = int(torch.isinf(values).sum())
        raise ValueError(
            f"GradNorm ({settings_text(settings)}): {bad} of {len(values)} {what} norms exceed "
            f"float64 (above 1.8e308)" + ("; use a larger p" if p < 1 else "")
        )
    _warn_if_all_zero(values, settings, what)
    return check_finite_scores(values, "GradNorm", settings)


#: the names of GradNorm's factors U and V in messages
_FACTORS = ("feature", "logit-gradient")
#: why every norm of a batch is 0, by the norm
_ZERO_CAUSES = {
    "feature": "the penultimate features h are 0",
    "logit-gradient": _UNIFORM,
    "gradient": f"{_UNIFORM}; or the features h are 0 (U = 0)",
}


def _warn_if_all_zero(values: Tensor, settings: dict, what: str) -> None:
    """A ``RuntimeWarning`` naming the setting where every norm of a batch is 0: the scores are
    one constant, which ranks nothing (as :func:`_finite_exp` errs on norms above float64)."""
    if values.numel() == 0 or bool(values.any()):
        return
    warnings.warn(
        f"GradNorm ({settings_text(settings)}): all {values.numel()} {what} norms of this batch "
        f"are 0 in float64, so the scores are one constant and rank nothing: "
        f"{_ZERO_CAUSES[what]}",
        RuntimeWarning,
        stacklevel=4,
    )


class GradNorm(ShowsSettings, Detector):
    """GradNorm of *On the Importance of Gradients for Detecting Distributional Shifts in the
    Wild*, exact to the official code, from one forward pass (see the module docstring).

    The outlier score is :math:`-\\lVert \\partial \\mathcal{L} / \\partial W \\rVert_p`.
    ``GradNorm(...)`` makes one of two subclasses, by mode, so that pytorch-ood's
    type-dispatching loops route it to a method that works:

    - the head mode (neither ``params`` nor ``param_filter``): a :class:`HeadGradNorm`, a
      ``FeaturesDetector``: :meth:`HeadGradNorm.predict_features` gives the same score from
      pooled penultimate features (``encoder`` produces them), so pytorch-ood's
      ``Benchmark.evaluate`` and ``GridSearch`` over ``p`` and ``temperature`` reuse one forward
      pass;
    - the parameter mode: a :class:`ParameterGradNorm`, a ``GradientDetector`` (like
      pytorch-ood's ``GradNorm``): it needs the model's inputs.

    With ``params`` (e.g. ``["layer4"]``, the paper's ablation on other layers) or
    ``param_filter`` (pytorch-ood's: a function of a parameter's qualified name, e.g.
    ``lambda name: name.startswith("layer4.")``), the score is the entrywise :math:`L_p` norm
    of the per-sample gradient of the same loss with respect to all selected parameters
    together; it is computed exactly with one batched backward pass per micro-batch of at most
    ``micro_batch_size`` samples, so memory does not grow with the caller's batch size. That
    mode needs the raw inputs (``encoder`` is ``None``).

    Selection: neither ``params`` nor ``param_filter``: the head's weight (the paper's score,
    from one forward pass); ``params``: those parameters or modules; ``param_filter``: the
    parameters whose names it accepts (among ``params``, if both are given). pytorch-ood's
    ``GradNorm(model, param_filter=f)`` gives :math:`-\\lVert \\cdot \\rVert_1 / C` of the
    same gradients (its loss averages over the :math:`C` classes, the official code's sums), so
    ours at ``p=1`` is :math:`C` times its score; without a filter it uses all parameters, ours
    the head weight. An empty selection is a ``ValueError``.

    The model is called as it is: put it in evaluation mode, as the official code does.
    """

    info = DetectorInfo(
        paper=GRADNORM_PAPER,
        tasks={Task.CLASSIFICATION},
        ai_coded=True,
    )

    hyperparameter_space = {"p": PAPER_NORMS, "temperature": PAPER_TEMPERATURES}

    # the parameters of __init__, not __new__'s (*args, **kwargs)
    __signature__ = InitSignature()

    def __new__(cls, *args: object, **kwargs: object) -> GradNorm:
        if cls is GradNorm:  # the mode decides the type (class docstring)
            selects = kwargs.get("params") is not None or _param_filter(args, kwargs) is not None
            cls = ParameterGradNorm if selects else HeadGradNorm
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        param_filter: Callable[[str], bool] | None = None,
        micro_batch_size: int = 32,
        temperature: float = 1.0,
        *,
        p: float = 1.0,
        head: str | nn.Module | None = None,
        params: Sequence[str] | None = None,
    ):
        """The first four arguments are pytorch-ood's ``GradNorm``'s.

        :param model: the classifier; in the head mode its output must be the output of ``head``
        :param param_filter: selects parameters by qualified name (see the class docstring);
            ``None`` with ``params=None`` for the paper's head-weight score
        :param micro_batch_size: samples per backward pass when parameters are selected
        :param temperature: softmax temperature :math:`T > 0`
        :param p: order of the entrywise norm, > 0 or ``float("inf")``
        :param head: the final layer (module or qualified name) of the head mode; found
            automatically if ``None`` (see :func:`gradood.heads.find_head`); ``None`` (the
            attribute too) when parameters are selected
        :param params: names of modules or parameters whose gradients to use instead of the
            head's weight
        :raises ValueError: on invalid ``p``, ``temperature`` or ``micro_batch_size``, a
            selection of no parameter, an unknown name in ``params``, or if no head is found
        """
        super().__init__()
        if model is None:
            raise ModelNotSetException("GradNorm needs a model")
        self.model = model
        self.p = p
        self.temperature = temperature
        self.micro_batch_size = check_positive_int(micro_batch_size, "micro_batch_size")
        self.head: Head | None = None
        #: the head mode's encoder of pooled penultimate features
        #: (:func:`gradood.heads.penultimate_encoder`); ``None`` when parameters are selected
        self.encoder: PenultimateEncoder | None = None
        self.params: list[str] | None = None
        selects = params is not None or param_filter is not None
        if selects != isinstance(self, ParameterGradNorm):
            mode = "head" if isinstance(self, HeadGradNorm) else "parameter"
            raise ValueError(
                f"{type(self).__name__} is GradNorm's {mode} mode; make the detector with "
                "GradNorm(...), which picks the mode's class from params= and param_filter="
            )
        if selects:
            if head is not None:
                raise ValueError("head= is for the head-weight score; params mode needs no head")
            self.params = resolve_parameter_names(model, params, param_filter)
        else:
            self.head = find_head(model, head)
            self.encoder = penultimate_encoder(model, self.head.module)

    @property
    def p(self) -> float:
        """Order of the entrywise norm."""
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_norm_order(value)

    @property
    def temperature(self) -> float:
        """Softmax temperature :math:`T`."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(value)

    def _settings(self) -> dict[str, object]:
        if self.head is not None:
            return {"p": self.p, "temperature": self.temperature, "head": self.head.name}
        return {
            "p": self.p,
            "temperature": self.temperature,
            "params": self.params,
            "micro_batch_size": self.micro_batch_size,
        }

    def _empty(self, x: Tensor) -> Tensor:
        return torch.empty(0, dtype=torch.float64, device=x.device)

    def predict(self, x: Tensor) -> Tensor:
        """Outlier scores :math:`-S(x)` (float64, shape B) for a batch of model inputs; the same
        under ``torch.no_grad()`` and ``torch.inference_mode()``.

        :raises ValueError: if ``x`` or the logits are not finite, or ``x`` has no batch axis
        """
        x = check_inputs(x, self.device, "GradNorm")
        if x.shape[0] == 0:
            return self._empty(x)
        warn_if_training(self.model, "GradNorm")
        return -self._gradient_norms(x)

    def _gradient_norms(self, x: Tensor) -> Tensor:
        """:math:`S(x)` for a non-empty batch of finite inputs on the detector's device."""
        raise NotImplementedError


def _param_filter(args: tuple, kwargs: dict) -> object:
    """``param_filter`` of ``GradNorm(model, param_filter, ...)``, given by position or name."""
    return args[1] if len(args) > 1 else kwargs.get("param_filter")


class HeadGradNorm(GradNorm, FeaturesDetector):
    """:class:`GradNorm` of the head's weight, the paper's score, from one forward pass; a
    ``FeaturesDetector`` (make it with ``GradNorm(model, ...)``)."""

    _repr_name = "GradNorm"

    def _gradient_norms(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            logits, features = forward_with_features(self.model, self.head, x)
        check_finite(logits, "logits")
        return self._value(logits, features)

    def _value(self, logits: Tensor, features: Tensor) -> Tensor:
        """:math:`S(x)` from the head's output and input (a factor's subclass gives its own)."""
        return gradnorm_score(logits, features, self.p, self.temperature)

    def predict_features(self, x: Tensor) -> Tensor:
        """Outlier scores :math:`-S(x)` from pooled penultimate features ``x`` (B x D, or
        B x D x 1 x 1), as :attr:`~GradNorm.encoder` makes them.

        :raises ValueError: if ``x`` has the wrong shape or non-finite values
        """
        if not isinstance(x, Tensor):
            raise ValueError("features must be a tensor of shape B x D")
        if x.ndim == 4 and x.shape[2:] == (1, 1):
            x = x.flatten(1)
        if x.ndim != 2 or x.shape[1] != self.head.in_features:
            raise ValueError(
                f"features must have shape B x {self.head.in_features} (the input of the head "
                f"'{self.head.name}'), got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            return self._empty(x)
        check_finite(x, "features")
        with torch.no_grad():
            logits = self.head.logits(x)
        check_finite(logits, "logits")
        return -self._value(logits, x)


class ParameterGradNorm(GradNorm, GradientDetector):
    """:class:`GradNorm` of selected parameters (``params=`` or ``param_filter=``), exact per
    sample by batched backward passes; a ``GradientDetector``, like pytorch-ood's ``GradNorm``
    (make it with ``GradNorm(model, param_filter=...)``)."""

    _repr_name = "GradNorm"

    def _gradient_norms(self, x: Tensor) -> Tensor:
        """Exact per-sample :math:`\\lVert \\partial \\mathcal{L} / \\partial \\theta \\rVert_p`
        over all selected parameters together; one forward and backward pass per micro-batch.

        Where a sum of powers :math:`\\sum |g_j|^p` leaves float64's normal range (large ``p``),
        it is computed again with the sample's gradient scaled before the power, as head mode
        computes in logarithms: :math:`\\lVert g \\rVert_p = m \\lVert g / m \\rVert_p` with
        :math:`m = \\max_j |g_j|` (scaling the loss scales its gradient)."""
        settings = {"p": self.p, "temperature": self.temperature}
        chunks = []
        for start in range(0, x.shape[0], self.micro_batch_size):
            inputs = x[start : start + self.micro_batch_size]
            sums = self._power_sums(inputs, self.p)
            if math.isinf(self.p):
                chunks.append(sums)
                continue
            norms = sums ** (1 / self.p)
            unsafe = ~((sums > _SAFE_POWERS[0]) & (sums < _SAFE_POWERS[1]))  # 0: underflow?
            if bool(unsafe.any()):
                norms[unsafe] = self._scaled_norms(inputs[unsafe])
            chunks.append(norms)
        norms = torch.cat(chunks)
        _warn_if_all_zero(norms, settings, "gradient")
        return check_finite_scores(norms, "GradNorm", settings)

    def _power_sums(self, x: Tensor, p: float, scale: Tensor | None = None) -> Tensor:
        """Per sample, :math:`\\sum_j |g_j / s|^p` over the selected parameters (the maximum
        for ``p = inf``), ``s`` the sample's ``scale`` (1 if ``None``)."""
        temperature = self.temperature

        def loss(logits: Tensor) -> Tensor:
            check_finite(check_logits(logits), "logits")
            _check_classes(logits.shape[1] if logits.ndim > 1 else 1)
            _check_temperature_fits(logits.detach().double(), temperature)
            values = uniform_loss(logits, temperature)
            return values if scale is None else values / scale.to(values)

        powers = per_sample_gradient_powers(self.model, loss, x, self.params, p)
        return powers.amax(dim=1) if math.isinf(p) else powers.sum(dim=1)

    def _scaled_norms(self, x: Tensor) -> Tensor:
        largest = self._power_sums(x, math.inf)
        scale = torch.where(largest > 0, largest, torch.ones_like(largest))
        return largest * self._power_sums(x, self.p, scale) ** (1 / self.p)
