"""Lee & AlRegib, *Gradients as a Measure of Uncertainty in Neural Networks* (ICIP 2020), as the
GradNorm paper ran it (its Appendix E, Table 9).

**Features.** With logits :math:`z \\in \\mathbb{R}^C` and the confounding label of all ones, the
loss is the binary cross-entropy of :math:`\\sigma(z)` against 1, summed over the classes,

.. math::
    \\mathcal{L}(x) = \\sum_{c=1}^{C} -\\log \\sigma(z_c) = \\sum_{c=1}^{C}
    \\mathrm{softplus}(-z_c)

(not softmax followed by BCE, whose logit gradient :math:`C\\,\\mathrm{softmax}(z) - 1` is
GradNorm's). For every parameter tensor :math:`\\theta_k` of the model (each weight and each bias,
in ``model.named_parameters()`` order) the feature is the squared L2 norm of the per-sample
gradient, :math:`\\phi_k(x) = \\lVert \\partial \\mathcal{L}(x) / \\partial \\theta_k \\rVert_2^2`
(306 features for BiT-S-R101x1), computed exactly from one batched forward and backward pass per
micro-batch (:mod:`gradood.gradients`).

**Detector.** The features span orders of magnitude, so they are log-transformed and
standardized with the training split's statistics,
:math:`u_k = (\\log(\\phi_k + \\epsilon) - \\mu_k) / \\sigma_k`, and a classifier of two fully
connected layers, :math:`s(x) = w_2^\\top \\mathrm{ReLU}(W_1 u + b_1) + b_2`, is trained with
binary cross-entropy to give OOD samples the higher logit. :math:`s(x)` is the outlier score.

**Training data.** ID samples are those of the ID loader (labels >= 0); OOD samples are those
labelled < 0 and those of an OOD loader. Without OOD data, the surrogate OOD of Appendix E is
uniform noise: one image per ID sample, of the ID inputs' shape, uniform in [0, 1] in pixel space
and normalized like the model's inputs, :math:`(u - \\mathrm{mean}) / \\mathrm{std}` per channel
(BiT's mean = std = 0.5 gives [-1, 1]); noise image :math:`i` depends only on ``seed`` and
:math:`i`. The samples are split, per class, 40 % / 40 % / 20 % into training, validation and
held-out parts with ``seed``; the epoch with the lowest validation loss is kept, and the held-out
AUROC is reported as ``heldout_auroc_``.

Choices that neither paper publishes are constructor arguments: hidden width (128), ReLU,
Adam (lr 1e-3, no weight decay), 100 epochs, batch size 256, :math:`\\epsilon = 10^{-12}`, noise
range, checkpoint selection by validation loss, one noise image per ID image, unweighted classes.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from pytorch_ood.api import (
    DetectorInfo,
    GradientDetector,
    ModelNotSetException,
    Paper,
    RequiresFittingException,
    Task,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..grad_mode import autograd_enabled, ordinary
from ..gradients import per_sample_squared_norms, resolve_parameter_names
from ..metrics import paper_metrics
from ..shared import shared_for
from ..validation import (
    check_channel_values,
    check_finite,
    check_input_batch,
    check_loader_batch,
    check_logits,
    check_number,
    check_positive_int,
)
from .settings import ShowsSettings

__all__ = ["GradientFeatures", "LeeAlRegib", "confounding_label_loss", "gradient_feature_encoder"]

_STATE_VERSION = 1


def confounding_label_loss(logits: Tensor) -> Tensor:
    """Per-sample BCE of :math:`\\sigma(z)` against all ones, summed over classes (shape B)."""
    check_finite(check_logits(logits), "logits")
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits of shape B x C, got {tuple(logits.shape)}")
    return torch.nn.functional.softplus(-logits).sum(dim=1)


class GradientFeatures(nn.Module):
    """``x -> B x P``: the squared L2 norm of each selected parameter tensor's per-sample
    gradient of :func:`confounding_label_loss` (float64), ``micro_batch_size`` samples per
    backward pass. Runs with gradients enabled even under ``torch.no_grad()`` and
    ``torch.inference_mode()``."""

    def __init__(self, model: nn.Module, names: Sequence[str], micro_batch_size: int = 32):
        super().__init__()
        self.model = model
        self.names = list(names)
        self.micro_batch_size = micro_batch_size

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 1:
            raise ValueError("x must be a tensor with a batch dimension")
        check_finite(x, "inputs")
        parts = [
            per_sample_squared_norms(
                self.model,
                confounding_label_loss,
                x[start : start + self.micro_batch_size],
                self.names,
            )
            for start in range(0, x.shape[0], self.micro_batch_size)
        ]
        if not parts:
            return torch.empty(0, len(self.names), dtype=torch.float64, device=x.device)
        return torch.cat(parts)


def gradient_feature_encoder(
    model: nn.Module,
    params: str | Sequence[str] | None = None,
    micro_batch_size: int = 32,
    param_filter: Callable[[str], bool] | None = None,
) -> GradientFeatures:
    """The shared :class:`GradientFeatures` encoder of ``model`` for these settings (one per
    model and settings, as for the penultimate encoder).

    :raises ValueError: if ``params`` and ``param_filter`` select no parameter
    """
    names = resolve_parameter_names(model, params, param_filter)
    key = ("gradient features", tuple(names), micro_batch_size)
    return shared_for(model, key, lambda: GradientFeatures(model, names, micro_batch_size))


def _seed_for(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0])


_NOISE_STREAM, _SPLIT_STREAM, _TRAINING_STREAM = 1, 2, 3


class LeeAlRegib(ShowsSettings, GradientDetector):
    """Lee & AlRegib's gradient-feature classifier (see the module docstring for the math, the
    data and every default).

    A ``GradientDetector`` (it needs the gradients of every selected parameter, so it scores
    model inputs, like pytorch-ood's ``GradUncertainty``); the same scores under
    ``torch.no_grad()`` and ``torch.inference_mode()``. Its own feature level:
    ``gradient_encoder`` (:meth:`gradient_features`) makes the squared gradient norms,
    :meth:`fit_gradient_features` and :meth:`predict_gradient_features` take them.
    """

    info = DetectorInfo(
        paper=Paper(
            title="Gradients as a Measure of Uncertainty in Neural Networks",
            venue="ICIP",
            year=2020,
            url="https://arxiv.org/abs/2008.08030",
        ),
        tasks={Task.CLASSIFICATION},
        ai_coded=True,
    )

    requires_fit = True

    def __init__(
        self,
        model: nn.Module,
        param_filter: Callable[[str], bool] | None = None,
        *,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        input_shape: Sequence[int] | None = None,
        hidden_width: int = 128,
        epochs: int = 100,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 256,
        log_epsilon: float = 1e-12,
        split: Sequence[float] = (0.4, 0.4, 0.2),
        seed: int = 0,
        params: str | Sequence[str] | None = None,
        micro_batch_size: int = 32,
        progress: bool = False,
    ):
        """
        :param model: the classifier, in evaluation mode; its output is the logits B x C
        :param param_filter: keeps the parameters whose qualified names it accepts (pytorch-ood's
            ``GradUncertainty`` argument; among ``params`` if both are given); ``None``: all
        :param mean: per-channel mean (or one value) of the model's input normalization, for
            the uniform-noise surrogate OOD (pixel values in [0, 1])
        :param std: per-channel std (or one value) of that normalization
        :param input_shape: shape of one input (e.g. ``(3, 480, 480)``) for the noise; taken from
            the ID data by :meth:`fit`; needed by :meth:`fit_gradient_features` without OOD rows
        :param hidden_width: width of the classifier's hidden layer (ReLU)
        :param epochs: training epochs (Adam)
        :param lr: Adam's learning rate
        :param weight_decay: Adam's weight decay
        :param batch_size: classifier training batch size
        :param log_epsilon: :math:`\\epsilon` of :math:`\\log(\\phi + \\epsilon)`
        :param split: fractions of training, validation and held-out samples (per class)
        :param seed: seeds the noise, the split, the classifier's initialization and the order
            of the training samples
        :param params: parameters or modules whose gradients are features (``None``: all)
        :param micro_batch_size: samples per backward pass when computing features
        :param progress: show progress bars while fitting (features, noise, epochs); off by
            default, as pytorch-ood's detectors show none
        :raises ~pytorch_ood.api.ModelNotSetException: if ``model`` is ``None``
        :raises ValueError: on an invalid argument, or a selection of no parameter
        """
        super().__init__()
        if model is None:
            raise ModelNotSetException("LeeAlRegib needs a model")
        self.model = model
        self.mean = check_channel_values(mean, "mean")
        self.std = check_channel_values(std, "std", positive=True)
        #: shape of one input, for the uniform-noise surrogate: the ``input_shape`` argument, else
        #: taken from the ID inputs by :meth:`fit`; ``None`` until then
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        self.hidden_width = check_positive_int(hidden_width, "hidden_width")
        self.epochs = check_positive_int(epochs, "epochs")
        self.lr = check_number(lr, "lr")
        self.weight_decay = check_number(weight_decay, "weight_decay", allow_zero=True)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.log_epsilon = check_number(log_epsilon, "log_epsilon")
        self.split = self._check_split(split)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.progress = bool(progress)
        micro_batch_size = check_positive_int(micro_batch_size, "micro_batch_size")
        self.gradient_encoder = gradient_feature_encoder(
            model, params, micro_batch_size, param_filter
        )
        self.classifier: nn.Sequential | None = None
        self.feature_mean: Tensor | None = None
        self.feature_std: Tensor | None = None
        self.heldout_auroc_: float | None = None
        self.validation_loss_: float | None = None
        self.best_epoch_: int | None = None
        self._noise_cache: tuple[tuple, Tensor] | None = None

    @staticmethod
    def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
        values = tuple(float(v) for v in split)
        if len(values) != 3 or any(v <= 0 for v in values) or abs(sum(values) - 1) > 1e-9:
            raise ValueError(
                f"split must be three fractions > 0 that sum to 1 (train, validation, held-out), "
                f"got {tuple(split)}"
            )
        return values

    def _settings(self) -> dict[str, Any]:
        names = ("mean", "std", "input_shape", "hidden_width", "epochs", "lr", "weight_decay")
        more = ("batch_size", "log_epsilon", "split", "seed")
        shown = {name: getattr(self, name) for name in (*names, *more)}
        encoder = self.gradient_encoder
        return {**shown, "params": encoder.names, "micro_batch_size": encoder.micro_batch_size}

    @property
    def feature_names(self) -> list[str]:
        """The parameter names, one per feature (``model.named_parameters()`` order)."""
        return list(self.gradient_encoder.names)

    # -- features ------------------------------------------------------------------------------

    def gradient_features(self, x: Tensor) -> Tensor:
        """The squared gradient norms :math:`\\phi(x)`, float64 of shape B x P.

        :raises ValueError: if ``x`` is not a batch with the axes of :attr:`input_shape`
        """
        x = check_input_batch(x, self.input_shape, "LeeAlRegib")
        device = self.device
        return self.gradient_encoder(x.to(device) if device is not None else x)

    def _model_dtype(self) -> torch.dtype:
        param = next(self.model.parameters(), None)
        return param.dtype if param is not None and param.is_floating_point() else torch.float32

    def _noise(self, start: int, stop: int) -> Tensor:
        """Noise images ``start:stop``: uniform in [0, 1], normalized like the model's inputs."""
        shape = self.input_shape
        channels = shape[0] if shape else 1
        mean, std = (torch.tensor(v, dtype=torch.float64) for v in (self.mean, self.std))
        if len(self.mean) not in (1, channels) or len(self.std) not in (1, channels):
            raise ValueError(
                f"mean and std need 1 or {channels} values (the inputs' channels, shape "
                f"{shape}), got {len(self.mean)} and {len(self.std)}"
            )
        view = (-1,) + (1,) * (len(shape) - 1) if shape else (-1,)
        images = [
            torch.rand(
                shape,
                generator=torch.Generator().manual_seed(_seed_for(self.seed, _NOISE_STREAM, i)),
                dtype=torch.float64,
            )
            for i in range(start, stop)
        ]
        normalized = (torch.stack(images) - mean.view(view)) / std.view(view)
        return normalized.to(self._model_dtype())

    def noise(self, count: int) -> Tensor:
        """The first ``count`` surrogate-OOD inputs (needs :attr:`input_shape`)."""
        if self.input_shape is None:
            raise ValueError(
                "the noise needs input_shape (given, or taken from the ID data by fit)"
            )
        return self._noise(0, count)

    def _noise_features(self, count: int) -> Tensor:
        if self.input_shape is None:
            raise ValueError(
                "no OOD sample (label < 0) to train on and no input_shape for the uniform-noise "
                "surrogate: pass input_shape=... to LeeAlRegib, or call fit(loader) on inputs"
            )
        key = (count, self.input_shape, self.seed, self.mean, self.std, self.device)
        if self._noise_cache is not None and self._noise_cache[0] == key:
            return self._noise_cache[1]
        size = self.gradient_encoder.micro_batch_size
        starts = self._bar(range(0, count, size), "LeeAlRegib: noise features", "batch")
        parts = [self.gradient_features(self._noise(s, min(count, s + size))) for s in starts]
        features = torch.cat(parts)
        self._noise_cache = (key, features)
        return features

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, id_loader: DataLoader, ood_loader: Iterable | None = None) -> LeeAlRegib:
        """Compute features and train the classifier.

        :param id_loader: batches ``(x, y)``; samples with ``y < 0`` count as OOD
        :param ood_loader: optional OOD batches, ``(x, ...)`` or ``x``; without any OOD sample,
            uniform noise is the surrogate (module docstring)
        :raises ValueError: if there is no ID sample, on a batch that is not ``(x, y)`` with
            inputs B x C x H x W (B x ... for a model of other inputs), or inconsistent shapes
        """
        features, labels = [], []
        for batch in self._bar(id_loader, "LeeAlRegib: ID features", "batch"):
            x, y = check_loader_batch(batch, "LeeAlRegib.fit")
            self._remember_shape(x)
            features.append(self.gradient_features(x))
            labels.append(torch.where(y.cpu() < 0, -1, 0))
        ood_batches = (
            () if ood_loader is None else self._bar(ood_loader, "LeeAlRegib: OOD features", "batch")
        )
        for batch in ood_batches:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            features.append(self.gradient_features(x))
            labels.append(torch.full((x.shape[0],), -1))
        if not features or not any(bool((y >= 0).any()) for y in labels):
            raise ValueError("fit: the ID loader yields no ID sample (label >= 0)")
        return self.fit_gradient_features(torch.cat(features), torch.cat(labels))

    def _bar(self, items: Iterable, desc: str, unit: str) -> Iterable:
        """``items`` with a progress bar, unless ``progress`` is off."""
        return tqdm(items, desc=desc, unit=unit, leave=False, disable=not self.progress)

    def _remember_shape(self, x: Tensor) -> None:
        shape = tuple(x.shape[1:])
        if self.input_shape is None:
            self.input_shape = shape
        elif self.input_shape != shape:
            raise ValueError(
                f"the ID inputs have shape {shape} per sample, but the noise is made for "
                f"{self.input_shape} (input_shape); all inputs must have one shape"
            )

    def fit_gradient_features(self, x: Tensor, y: Tensor) -> LeeAlRegib:
        """Train the classifier on gradient features ``x`` (N x P) with labels ``y`` (< 0 =
        OOD); without OOD rows, the uniform-noise surrogate is added (needs
        :attr:`input_shape`).

        :raises ValueError: on a wrong shape, non-finite or negative features, or too few
            samples for the split
        """
        features = self._checked_features(x)
        labels = torch.as_tensor(y).reshape(-1).to(features.device)
        if labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"fit_gradient_features: {features.shape[0]} feature rows but "
                f"{labels.shape[0]} labels"
            )
        is_ood = labels < 0
        if not bool(is_ood.any()):
            noise = self._noise_features(int(labels.shape[0])).to(features.device)
            features = torch.cat([features, noise])
            is_ood = torch.cat(
                [is_ood, torch.ones(noise.shape[0], dtype=torch.bool, device=is_ood.device)]
            )
        return self._train(features, is_ood)

    def _checked_features(self, x: Tensor) -> Tensor:
        width = len(self.gradient_encoder.names)
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != width:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"features must have shape B x {width} (one squared gradient norm per parameter "
                f"tensor), got {shape}"
            )
        check_finite(x, "features")
        if bool((x < 0).any()):
            raise ValueError("features are squared norms and must be >= 0")
        return x.double()

    def _split(self, is_ood: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        generator = torch.Generator().manual_seed(_seed_for(self.seed, _SPLIT_STREAM))
        parts: list[list[Tensor]] = [[], [], []]
        for members in (
            torch.nonzero(~is_ood.cpu()).flatten(),
            torch.nonzero(is_ood.cpu()).flatten(),
        ):
            n = members.numel()
            n_train, n_val = round(self.split[0] * n), round(self.split[1] * n)
            if min(n_train, n_val, n - n_train - n_val) < 1:
                raise ValueError(
                    f"the {self.split} split needs at least one ID and one OOD sample in each "
                    f"part; got {int((~is_ood).sum())} ID and {int(is_ood.sum())} OOD samples"
                )
            shuffled = members[torch.randperm(n, generator=generator)]
            for k, part in enumerate(torch.split(shuffled, [n_train, n_val, n - n_train - n_val])):
                parts[k].append(part)
        return tuple(torch.cat(p).to(is_ood.device) for p in parts)

    def _build_classifier(self, width: int, generator: torch.Generator | None) -> nn.Sequential:
        classifier = nn.Sequential(
            nn.Linear(width, self.hidden_width, dtype=torch.float64),
            nn.ReLU(),
            nn.Linear(self.hidden_width, 1, dtype=torch.float64),
        )
        if generator is not None:
            for layer in (classifier[0], classifier[2]):
                _default_linear_init(layer, generator)
        return classifier

    def _transform(self, features: Tensor) -> Tensor:
        return (torch.log(features + self.log_epsilon) - self.feature_mean) / self.feature_std

    def _train(self, features: Tensor, is_ood: Tensor) -> LeeAlRegib:
        with autograd_enabled():  # training needs autograd, also under inference mode
            return self._train_classifier(ordinary(features), ordinary(is_ood))

    def _train_classifier(self, features: Tensor, is_ood: Tensor) -> LeeAlRegib:
        train, validation, heldout = self._split(is_ood)
        logs = torch.log(features + self.log_epsilon)
        self.feature_mean = logs[train].mean(dim=0)
        std = logs[train].std(dim=0, correction=0)
        self.feature_std = torch.where(std > 0, std, torch.ones_like(std))  # constant features
        inputs, targets = self._transform(features), is_ood.double()
        generator = torch.Generator().manual_seed(_seed_for(self.seed, _TRAINING_STREAM))
        classifier = self._build_classifier(features.shape[1], generator).to(features.device)
        optimizer = torch.optim.Adam(
            classifier.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        loss = nn.BCEWithLogitsLoss()
        best = (math.inf, -1, None)
        with torch.enable_grad():
            for epoch in self._bar(range(self.epochs), "LeeAlRegib: classifier", "epoch"):
                classifier.train()
                order = train[torch.randperm(train.numel(), generator=generator).to(train.device)]
                for batch in torch.split(order, self.batch_size):
                    optimizer.zero_grad(set_to_none=True)
                    loss(classifier(inputs[batch]).squeeze(1), targets[batch]).backward()
                    optimizer.step()
                classifier.eval()
                with torch.no_grad():
                    value = float(
                        loss(classifier(inputs[validation]).squeeze(1), targets[validation])
                    )
                if value < best[0]:
                    best = (value, epoch, copy.deepcopy(classifier.state_dict()))
        classifier.load_state_dict(best[2])
        self.classifier = classifier.eval()
        self.validation_loss_, self.best_epoch_ = best[0], best[1]
        with torch.no_grad():
            scores = self.classifier(inputs[heldout]).squeeze(1)
        labels = torch.where(is_ood[heldout], -1, 0)
        self.heldout_auroc_ = paper_metrics(scores.cpu(), labels.cpu())["AUROC"]
        return self

    # -- scoring -------------------------------------------------------------------------------

    def predict(self, x: Tensor) -> Tensor:
        """Outlier scores (float64, shape B): the classifier's OOD logit of the gradient features.

        :raises ~pytorch_ood.api.RequiresFittingException: before :meth:`fit`
        """
        self._check_fitted()
        return self.predict_gradient_features(self.gradient_features(x))

    def predict_gradient_features(self, x: Tensor) -> Tensor:
        """Outlier scores from gradient features (B x P, as :meth:`gradient_features` makes
        them).

        :raises ~pytorch_ood.api.RequiresFittingException: before :meth:`fit`
        :raises ValueError: on a wrong shape, non-finite or negative features
        """
        self._check_fitted()
        features = self._checked_features(x)
        with torch.no_grad():
            return self.classifier(self._transform(features)).squeeze(1)

    def _check_fitted(self) -> None:
        if self.classifier is None:
            raise RequiresFittingException("LeeAlRegib must be fitted: call fit(id_loader) first")

    # -- saving --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The fitted detector without the model: classifier, feature statistics, settings."""
        self._check_fitted()
        return {
            "version": _STATE_VERSION,
            "feature_names": self.feature_names,
            "log_epsilon": self.log_epsilon,
            "hidden_width": self.hidden_width,
            "feature_mean": self.feature_mean.cpu(),
            "feature_std": self.feature_std.cpu(),
            "classifier": {k: v.cpu() for k, v in self.classifier.state_dict().items()},
            "heldout_auroc": self.heldout_auroc_,
            "validation_loss": self.validation_loss_,
            "best_epoch": self.best_epoch_,
            "input_shape": self.input_shape,
            "mean": self.mean,
            "std": self.std,
        }

    def load_state_dict(self, state: dict[str, Any]) -> LeeAlRegib:
        """Restore a detector saved by :meth:`state_dict` (for a model with the same
        parameter names).

        :raises ValueError: if the state is not a LeeAlRegib state or its features differ
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"not a LeeAlRegib state (version {_STATE_VERSION} expected)")
        names = list(state["feature_names"])
        if names != self.feature_names:
            differ = next(
                (
                    f"'{a}' vs '{b}'"
                    for a, b in zip(names, self.feature_names, strict=False)
                    if a != b
                ),
                f"{len(names)} vs {len(self.feature_names)} features",
            )
            raise ValueError(
                f"the state's features are not this model's parameters (first difference: "
                f"{differ}; saved vs this model)"
            )
        device = self.device or torch.device("cpu")
        self.hidden_width = int(state["hidden_width"])
        self.log_epsilon = float(state["log_epsilon"])
        self.classifier = self._build_classifier(len(names), None)
        self.classifier.load_state_dict(state["classifier"])
        self.classifier = self.classifier.to(device).eval()
        self.feature_mean = state["feature_mean"].to(device, torch.float64)
        self.feature_std = state["feature_std"].to(device, torch.float64)
        self.heldout_auroc_ = state["heldout_auroc"]
        self.validation_loss_ = state["validation_loss"]
        self.best_epoch_ = state["best_epoch"]
        shape = state["input_shape"]
        self.input_shape = None if shape is None else tuple(shape)
        self.mean, self.std = tuple(state["mean"]), tuple(state["std"])
        return self


def _default_linear_init(layer: nn.Linear, generator: torch.Generator) -> None:
    """``nn.Linear``'s default initialization drawn from ``generator``: the weight as
    ``kaiming_uniform_(a=sqrt(5))`` draws it, U(-b, b) with b = sqrt(3) gain / sqrt(fan_in)
    (= 1 / sqrt(fan_in) up to rounding), the bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    ``Tensor.uniform_`` because ``nn.init`` takes a generator only from torch 2.2 on; the bound
    is computed as ``kaiming_uniform_`` computes it, so the draws are the same bit for bit.
    """
    fan_in = layer.in_features
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    weight_bound = math.sqrt(3.0) * (gain / math.sqrt(fan_in))
    bias_bound = 1 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.uniform_(-weight_bound, weight_bound, generator=generator)
        layer.bias.uniform_(-bias_bound, bias_bound, generator=generator)
