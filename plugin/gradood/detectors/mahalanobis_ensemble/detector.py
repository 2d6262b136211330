"""The detector: Gaussians per layer, per-layer input preprocessing, the regression against
FGSM examples, and the magnitude tuned by the official criterion (see the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from pytorch_ood.utils import is_known
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from typing_extensions import Self

from ...metrics import paper_metrics
from ...validation import (
    check_channel_values,
    check_finite,
    check_loader_batch,
    check_number,
    check_positive_int,
    warn_if_training,
)
from ..settings import ShowsSettings
from .gaussians import TiedGaussianAccumulator, check_labels, tied_gaussians
from .layers import default_layers, layer_features, spatial_mean
from .perturbation import (
    ADVERSARIAL_STEP,
    check_channels,
    fgsm,
    gradients_enabled,
    input_gradient,
    signed_step,
)
from .regression import fit_logistic_regression, log_odds

__all__ = ["PAPER_MAGNITUDES", "TUNING_SAMPLES", "MahalanobisEnsemble"]

#: the official candidate noise magnitudes, in the order they are tried (on equal FPR95 the
#: earlier one wins)
PAPER_MAGNITUDES: tuple[float, ...] = (0.0, 0.01, 0.005, 0.002, 0.0014, 0.001, 0.0005)
#: size of each of the two tuning splits (ID samples; as many FGSM copies are added)
TUNING_SAMPLES = 500


class MahalanobisEnsemble(ShowsSettings, GradientDetector):
    """Lee et al.'s Mahalanobis detector over several layers, with input preprocessing and a
    logistic regression, as the GradNorm paper ran it (see the module docstring).

    Fitting has two stages:

    1. :meth:`fit_features` (or the first half of :meth:`fit`): class means and tied covariance
       of every layer, from ID training data.
    2. :meth:`fit_regression` (the second half of :meth:`fit`): the logistic regression on
       ``samples`` ID inputs and their FGSM copies. With ``magnitude=None`` the magnitude is
       chosen as the official tuning script does: the first ``samples`` inputs train one
       regression per candidate magnitude, the next ``samples`` (with their FGSM copies) are
       scored, and the magnitude with the lowest FPR95 (ID positive, score
       ``-P(adversarial)``) wins, the earlier candidate on ties. With a fixed ``magnitude``
       only the first ``samples`` inputs are used: that is the regression the official script
       keeps for its chosen magnitude.

    The outlier score is the regression's log-odds (higher = more OOD). With ``magnitude == 0``
    the detector also scores cached per-layer features (:meth:`predict_features`); a positive
    magnitude needs the raw inputs (:meth:`predict`).
    """

    info = DetectorInfo(
        paper=Paper(
            title="A Simple Unified Framework for Detecting Out-of-Distribution Samples and "
            "Adversarial Attacks",
            venue="NeurIPS",
            year=2018,
            url="https://arxiv.org/abs/1807.03888",
            code="https://github.com/pokaxpoka/deep_Mahalanobis_detector",
        ),
        tasks={Task.CLASSIFICATION},
        ai_coded=True,
    )

    requires_fit = True

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        *,
        magnitude: float | None = None,
        magnitudes: Sequence[float] = PAPER_MAGNITUDES,
        norm_std: Sequence[float] | None = None,
        norm_mean: Sequence[float] | None = None,
        adversarial_step: float = ADVERSARIAL_STEP,
        adversarial_clamp: tuple[float, float] | None = None,
        samples: int = TUNING_SAMPLES,
        batch_size: int = 32,
        progress: bool = False,
    ):
        """
        :param model: the classifier (in evaluation mode), returning logits
        :param layers: qualified names of the feature modules; ``None`` for
            :func:`default_layers`
        :param magnitude: the preprocessing magnitude :math:`\\varepsilon`; ``None`` to choose it
            among ``magnitudes`` in :meth:`fit_regression`
        :param magnitudes: the candidates, tried in order
        :param norm_std: per-channel std of the input normalization: magnitudes and the FGSM
            step are then in pixel units; ``None``: in model-input units (official ImageNet code)
        :param norm_mean: per-channel mean of the input normalization (to clamp in pixel units)
        :param adversarial_step: the FGSM perturbation size :math:`\\delta`
        :param adversarial_clamp: ``(low, high)`` bounds of the FGSM examples (see :func:`fgsm`)
        :param samples: ID samples per tuning split
        :param batch_size: inputs per forward/backward pass inside :meth:`fit_regression`
        :param progress: show progress bars while fitting (Gaussians, magnitude candidates);
            off by default, as pytorch-ood's detectors show none
        :raises ValueError: on an unknown layer or an invalid setting
        """
        super().__init__()
        if model is None:
            raise ModelNotSetException("MahalanobisEnsemble needs a model")
        self.model = model
        self.layers = self._resolve_layers(model, layers)
        self.magnitude = (
            None if magnitude is None else check_number(magnitude, "magnitude", allow_zero=True)
        )
        self.magnitudes = [
            check_number(m, "each candidate magnitude", allow_zero=True) for m in magnitudes
        ]
        if self.magnitude is None and not self.magnitudes:
            raise ValueError("give a magnitude or at least one candidate in magnitudes")
        self.norm_std = (
            None if norm_std is None else check_channel_values(norm_std, "norm_std", positive=True)
        )
        self.norm_mean = None if norm_mean is None else [float(v) for v in norm_mean]
        if adversarial_clamp is not None and self.norm_std is not None and norm_mean is None:
            raise ValueError("adversarial_clamp in pixel units (norm_std given) needs norm_mean")
        self.adversarial_step = check_number(adversarial_step, "adversarial_step", allow_zero=True)
        self.adversarial_clamp = None if adversarial_clamp is None else tuple(adversarial_clamp)
        self.samples = check_positive_int(samples, "samples")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.progress = bool(progress)
        self.means: dict[str, Tensor] | None = None
        self.precisions: dict[str, Tensor] | None = None
        self._projected_means: dict[str, Tensor] = {}
        self._mean_norms: dict[str, Tensor] = {}
        self.coef: Tensor | None = None
        self.intercept: Tensor | None = None
        #: FPR95 on the second split for each candidate, filled when the magnitude is tuned
        self.tuning_fpr95: dict[float, float] = {}

    def _settings(self) -> dict[str, Any]:
        names = ("layers", "magnitude", "magnitudes", "norm_std", "norm_mean", "adversarial_step")
        return {name: getattr(self, name) for name in (*names, "adversarial_clamp", "samples")}

    @staticmethod
    def _resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
        names = default_layers(model) if layers is None else list(layers)
        if isinstance(layers, str) or not names:
            raise ValueError("layers must be a non-empty list of module names")
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            top = ", ".join(n for n, _ in model.named_children())
            raise ValueError(f"layers {unknown} are not modules of the model (top level: {top})")
        if len(set(names)) != len(names):
            raise ValueError(f"layers must be distinct, got {names}")
        return names

    # -- stage 1: Gaussians ------------------------------------------------------------------

    def fit(self, data_loader: DataLoader, tuning_loader: DataLoader | None = None) -> Self:
        """Fit the Gaussians on ``data_loader`` (ID training data; OOD labels < 0 are skipped),
        then the regression on the first ID samples of ``tuning_loader`` (default: the same
        loader; the official ImageNet script takes the first 1,000 images of the ImageNet
        validation list, Lee et al.'s and ATOM's CIFAR scripts training images).
        """
        warn_if_training(self.model, "MahalanobisEnsemble")
        accumulators = {name: TiedGaussianAccumulator() for name in self.layers}
        with torch.no_grad():
            for batch in tqdm(
                data_loader, desc="Mahalanobis: Gaussians", leave=False, disable=not self.progress
            ):
                x, y = check_loader_batch(batch, "MahalanobisEnsemble.fit")
                known = is_known(y)
                if not bool(known.any()):
                    continue
                x, y = self._to_device(x[known]), self._to_device(y[known]).long()
                features = layer_features(self.model, self.layers, x)
                for name in self.layers:
                    accumulators[name].add(features[name], y)
        if accumulators[self.layers[0]].shift is None:
            raise ValueError("the data loader yielded no ID sample (label >= 0)")
        self._set_gaussians({n: a.finish() for n, a in accumulators.items()})
        loader = data_loader if tuning_loader is None else tuning_loader
        x, y = self._first_samples(loader, self._regression_size)
        return self.fit_regression(x, y)

    def fit_features(self, features: Mapping[str, Tensor], labels: Tensor) -> Self:
        """Fit the Gaussians on cached per-layer features of ID training data.

        :param features: layer name -> N x C (or N x C x H x W, spatially averaged here)
        :param labels: N class indices covering 0 ... C-1
        :return: self; :meth:`fit_regression` still has to run
        """
        pooled = self._check_features(features)
        labels = check_labels(labels, next(iter(pooled.values())).shape[0])
        self._set_gaussians({n: tied_gaussians(z, labels.to(z.device)) for n, z in pooled.items()})
        return self

    def _set_gaussians(self, fitted: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        precisions = {n: torch.linalg.pinv(cov, hermitian=True) for n, (_, cov) in fitted.items()}
        self._set_statistics({n: mean for n, (mean, _) in fitted.items()}, precisions)

    def _set_statistics(self, means: Mapping[str, Tensor], precisions: Mapping[str, Tensor]):
        """Store float64 means and precisions, and the per-class terms of the distances."""
        device = self.device
        self.means = {n: means[n].double().to(device) for n in self.layers}
        self.precisions = {n: precisions[n].double().to(device) for n in self.layers}
        self._projected_means = {n: self.means[n] @ self.precisions[n] for n in self.layers}
        self._mean_norms = {
            n: (self._projected_means[n] * self.means[n]).sum(dim=1) for n in self.layers
        }
        self.coef = self.intercept = None

    # -- stage 2: regression -----------------------------------------------------------------

    @property
    def _regression_size(self) -> int:
        return self.samples if self.magnitude is not None else 2 * self.samples

    def fit_regression(self, x: Tensor, y: Tensor) -> Self:
        """Train the logistic regression (and choose the magnitude if it is not fixed) on the
        first ``samples`` (fixed magnitude) or ``2 * samples`` ID inputs ``x`` with labels
        ``y`` and their FGSM copies (see the class docstring).

        :raises ValueError: if there are fewer inputs than needed, or the Gaussians are not fitted
        """
        self._require_gaussians()
        warn_if_training(self.model, "MahalanobisEnsemble")
        needed = self._regression_size
        if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] < needed:
            found = x.shape[0] if isinstance(x, Tensor) and x.ndim >= 1 else 0
            raise ValueError(
                f"the regression needs {needed} ID inputs ({self.samples} per split), got {found}"
            )
        x, y = self._to_device(x[:needed]), self._to_device(y[:needed]).long()
        check_finite(x, "inputs")
        adversarial = self._batched(
            lambda xb, yb: fgsm(
                self.model,
                xb,
                yb,
                self.adversarial_step,
                norm_std=self.norm_std,
                norm_mean=self.norm_mean,
                clamp=self.adversarial_clamp,
            ),
            x,
            y,
        )
        m = self.samples
        train = torch.cat([x[:m], adversarial[:m]])
        is_adversarial = np.r_[np.zeros(m), np.ones(m)]
        if self.magnitude is not None:
            self._set_regression(fit_logistic_regression(self._scores(train), is_adversarial))
            return self
        return self._tune_magnitude(train, torch.cat([x[m:], adversarial[m:]]), is_adversarial)

    def _tune_magnitude(self, train: Tensor, held_out: Tensor, is_adversarial: np.ndarray) -> Self:
        ood_labels = torch.as_tensor(-is_adversarial, dtype=torch.long)
        best: tuple[float, float, tuple[Tensor, Tensor]] | None = None
        self.tuning_fpr95 = {}
        candidates = tqdm(
            self.magnitudes, desc="Mahalanobis: magnitudes", leave=False, disable=not self.progress
        )
        for magnitude in candidates:
            regression = fit_logistic_regression(self._scores(train, magnitude), is_adversarial)
            held_out_log_odds = log_odds(self._scores(held_out, magnitude), *regression)
            fpr = paper_metrics(torch.sigmoid(held_out_log_odds).cpu(), ood_labels)["FPR95"]
            self.tuning_fpr95[magnitude] = fpr
            if best is None or fpr < best[0]:
                best = (fpr, magnitude, regression)
        _, self.magnitude, regression = best
        self._set_regression(regression)
        return self

    def _set_regression(self, regression: tuple[Tensor, Tensor]) -> None:
        device = self.device
        self.coef, self.intercept = (t.to(device) for t in regression)

    # -- scores ------------------------------------------------------------------------------

    def layer_scores(self, x: Tensor, magnitude: float | None = None) -> Tensor:
        """The regression's inputs :math:`M_l(x'_l)` (B x L, float64; higher = more ID).

        :param magnitude: preprocessing magnitude; default: the detector's
        """
        self._require_gaussians()
        if magnitude is None:
            magnitude = self._require_magnitude()
        if not isinstance(x, Tensor) or x.ndim < 2:
            raise ValueError("x must be a batch of model inputs (B x ...)")
        x = self._to_device(x)
        check_finite(x, "inputs")
        check_channels(self.norm_std, x, "norm_std")
        warn_if_training(self.model, "MahalanobisEnsemble")
        if magnitude == 0:
            with torch.no_grad():
                features = layer_features(self.model, self.layers, x)
            return self._confidences(features)
        columns = [self._preprocessed_confidence(x, name, magnitude) for name in self.layers]
        return torch.stack(columns, dim=1)

    def layer_scores_features(self, features: Mapping[str, Tensor]) -> Tensor:
        """:math:`M_l` (B x L, float64) from cached per-layer features, without preprocessing."""
        self._require_gaussians()
        return self._confidences(self._check_features(features))

    def predict(self, x: Tensor) -> Tensor:
        """Outlier scores (float64, shape B): the regression's log-odds of "adversarial"."""
        self._require_regression()
        return log_odds(self.layer_scores(x), self.coef, self.intercept)

    def predict_features(self, features: Mapping[str, Tensor]) -> Tensor:
        """Outlier scores from cached per-layer features (only for ``magnitude == 0``).

        :raises ValueError: if the magnitude is positive (the preprocessing needs the inputs)
        """
        self._require_regression()
        if self._require_magnitude() != 0:
            raise ValueError(
                f"the input preprocessing (magnitude {self.magnitude}) needs the raw inputs: "
                "use predict(x), or a detector with magnitude=0 for cached features"
            )
        return log_odds(self.layer_scores_features(features), self.coef, self.intercept)

    def _scores(self, x: Tensor, magnitude: float | None = None) -> Tensor:
        return torch.cat(
            [
                self.layer_scores(x[i : i + self.batch_size], magnitude)
                for i in range(0, x.shape[0], self.batch_size)
            ]
        )

    def _batched(self, fn, x: Tensor, y: Tensor) -> Tensor:
        return torch.cat(
            [
                fn(x[i : i + self.batch_size], y[i : i + self.batch_size])
                for i in range(0, x.shape[0], self.batch_size)
            ]
        )

    def _squared_distances(self, z: Tensor, name: str) -> Tensor:
        """:math:`d_{l,c}` for all classes (B x C), by expanding the quadratic form in float64."""
        z = z.to(torch.float64)
        own_term = ((z @ self.precisions[name]) * z).sum(dim=1, keepdim=True)
        return own_term - 2 * z @ self._projected_means[name].T + self._mean_norms[name]

    def _confidences(self, features: Mapping[str, Tensor]) -> Tensor:
        columns = [-0.5 * self._squared_distances(features[n], n).amin(dim=1) for n in self.layers]
        return torch.stack(columns, dim=1)

    def preprocess(self, x: Tensor, layer: str, magnitude: float | None = None) -> Tensor:
        """The preprocessed inputs :math:`x'_l` of one layer (see the module docstring).

        :param magnitude: :math:`\\varepsilon`; default: the detector's
        """
        self._require_gaussians()
        if layer not in self.layers:
            raise ValueError(f"layer '{layer}' is not one of the detector's {self.layers}")
        if magnitude is None:
            magnitude = self._require_magnitude()
        x = self._to_device(x)
        check_channels(self.norm_std, x, "norm_std")
        with gradients_enabled():
            inputs = x.detach().clone().requires_grad_()
            z = layer_features(self.model, [layer], inputs)[layer].to(torch.float64)
            with torch.no_grad():
                closest = self._squared_distances(z, layer).argmin(dim=1)
            centered = z - self.means[layer][closest]
            loss = 0.5 * ((centered @ self.precisions[layer]) * centered).sum()
            gradient = input_gradient(loss, inputs)
        return x.detach() - magnitude * signed_step(gradient, self.norm_std)

    def _preprocessed_confidence(self, x: Tensor, name: str, magnitude: float) -> Tensor:
        perturbed = self.preprocess(x, name, magnitude)
        with torch.no_grad():
            features = layer_features(self.model, [name], perturbed)
            return -0.5 * self._squared_distances(features[name], name).amin(dim=1)

    # -- persistence -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The fitted statistics, regression and magnitude (plain tensors and numbers)."""
        self._require_regression()
        return {
            "layers": list(self.layers),
            "means": {n: t.detach().cpu() for n, t in self.means.items()},
            "precisions": {n: t.detach().cpu() for n, t in self.precisions.items()},
            "coef": self.coef.detach().cpu(),
            "intercept": self.intercept.detach().cpu(),
            "magnitude": self.magnitude,
        }

    def load_state_dict(self, state: Mapping) -> Self:
        """Restore what :meth:`state_dict` returned.

        :raises ValueError: if the layers differ from this detector's or the shapes disagree
        """
        missing = {"layers", "means", "precisions", "coef", "intercept", "magnitude"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        if list(state["layers"]) != self.layers:
            raise ValueError(f"state is for layers {state['layers']}, detector has {self.layers}")
        for name in self.layers:
            mean, precision = state["means"][name], state["precisions"][name]
            if precision.shape != (mean.shape[1], mean.shape[1]):
                raise ValueError(
                    f"layer '{name}': means {tuple(mean.shape)} and precision "
                    f"{tuple(precision.shape)} disagree"
                )
        if tuple(state["coef"].shape) != (len(self.layers),):
            raise ValueError(f"coef must have shape ({len(self.layers)},)")
        self._set_statistics(state["means"], state["precisions"])
        self.magnitude = check_number(state["magnitude"], "magnitude", allow_zero=True)
        self._set_regression((state["coef"].double(), state["intercept"].double()))
        return self

    # -- checks ------------------------------------------------------------------------------

    def _check_features(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if not isinstance(features, Mapping):
            raise ValueError("features must map each layer name to a tensor")
        missing = [n for n in self.layers if n not in features]
        if missing:
            raise ValueError(f"features lack layers {missing} (have {list(features)})")
        pooled = {n: spatial_mean(features[n], n).detach() for n in self.layers}
        sizes = {z.shape[0] for z in pooled.values()}
        if len(sizes) != 1:
            raise ValueError(f"the layers' features have different numbers of rows: {sizes}")
        for name, z in pooled.items():
            check_finite(z, f"features of layer '{name}'")
            if self.means is not None and z.shape[1] != self.means[name].shape[1]:
                raise ValueError(
                    f"layer '{name}' features have {z.shape[1]} channels, the fit had "
                    f"{self.means[name].shape[1]}"
                )
        return pooled

    def _require_gaussians(self) -> None:
        if self.means is None:
            raise RequiresFittingException("fit the detector (fit or fit_features) first")

    def _require_regression(self) -> None:
        self._require_gaussians()
        if self.coef is None:
            raise RequiresFittingException("train the regression (fit or fit_regression) first")

    def _require_magnitude(self) -> float:
        if self.magnitude is None:
            raise RequiresFittingException("the magnitude is chosen by fit_regression; run it")
        return self.magnitude

    def _to_device(self, t: Tensor) -> Tensor:
        device = self.device
        return t if device is None else t.to(device)

    def _first_samples(self, loader: DataLoader, n: int) -> tuple[Tensor, Tensor]:
        xs, ys, count = [], [], 0
        for batch in loader:
            x, y = check_loader_batch(batch, "MahalanobisEnsemble.fit's tuning_loader")
            known = is_known(y)
            xs.append(x[known][: n - count])
            ys.append(y[known][: n - count])
            count += xs[-1].shape[0]
            if count == n:
                return torch.cat(xs), torch.cat(ys)
        raise ValueError(
            f"the regression needs the first {n} ID samples of the tuning loader, it yielded "
            f"{count}"
        )
