"""MahalanobisEnsemble against direct references: Gaussians, distances, preprocessing, FGSM, the
logistic regression and the magnitude choice; the combination's effect on a trained CNN;
persistence and errors."""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import timm
import torch
import torchvision
from pytorch_ood.api import RequiresFittingException
from pytorch_ood.detector import Mahalanobis
from sklearn.linear_model import LogisticRegressionCV
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradood.detectors import MahalanobisEnsemble
from gradood.detectors.mahalanobis_ensemble import default_layers, detector, fgsm, official_sign
from gradood.detectors.mahalanobis_ensemble.layers import layer_features
from gradood.metrics import paper_metrics

LAYERS = ["0", "1", "2"]
STD = (0.2, 0.25, 0.3)
MEAN = (0.4, 0.5, 0.6)


def blocks_model(seed: int, num_classes: int = 3, dead_channel: bool = False) -> nn.Sequential:
    """Three conv blocks and a linear head, float64; blocks '0', '1', '2' are the layers.

    With ``dead_channel`` the first convolution ignores input channel 2, whose input gradients
    are then exactly zero."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh()),
        nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Tanh()),
        nn.Sequential(nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.Tanh()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, num_classes)),
    ).double()
    if dead_channel:
        with torch.no_grad():
            model[0][0].weight[:, 2] = 0
    return model.eval()


def reference_features(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Block outputs computed by running the blocks one after the other, spatially averaged
    (differentiable only if ``x`` requires a gradient)."""
    features = {}
    with torch.set_grad_enabled(x.requires_grad):
        for name in LAYERS:
            x = model[int(name)](x)
            features[name] = x.mean(dim=(2, 3))
    return features


def reference_gaussians(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Explicit class means and the pinv of the tied covariance sum_c sum_i (z-mu)(z-mu)^T / N."""
    classes = int(y.max()) + 1
    means = np.stack([z[y == c].mean(axis=0) for c in range(classes)])
    scatter = sum(np.outer(zi - means[yi], zi - means[yi]) for zi, yi in zip(z, y, strict=True))
    return means, np.linalg.pinv(scatter / len(z))


def reference_confidence(z: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """max over classes of -1/2 (z - mu_c)^T P (z - mu_c), one sample and class at a time."""
    return np.array(
        [max(-0.5 * (zi - mu) @ precision @ (zi - mu) for mu in means) for zi in z],
    )


def random_batch(seed: int, n: int, size: int = 8, classes: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64)
    y = torch.arange(n) % classes
    return x, y


def fitted(model, x, y, **kwargs) -> MahalanobisEnsemble:
    detector = MahalanobisEnsemble(model, LAYERS, **kwargs)
    return detector.fit_features(reference_features(model, x), y)


def official_lr(features: np.ndarray, labels: np.ndarray) -> LogisticRegressionCV:
    """The official code's regression: LogisticRegressionCV() with its sklearn's defaults."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # newer sklearn announces new defaults
        return LogisticRegressionCV().fit(features, labels)


# -- Gaussians and distances ------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n", "dim", "classes"), [(0, 60, 4, 3), (1, 200, 9, 5)])
def test_gaussians_match_direct_estimates(seed, n, dim, classes):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=gen, dtype=torch.float64) * 3 + 10
    y = torch.arange(n) % classes
    detector = MahalanobisEnsemble(blocks_model(0), ["0"]).fit_features({"0": z}, y)
    means, precision = reference_gaussians(z.numpy(), y.numpy())
    # float64 throughout; the covariance of n >> dim random samples is well conditioned
    np.testing.assert_allclose(detector.means["0"].numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(detector.precisions["0"].numpy(), precision, rtol=1e-9)


def test_gaussians_agree_with_pytorch_ood():
    """Same class means as pytorch-ood's Mahalanobis; its covariance is the unnormalized
    scatter plus 1e-6 I, i.e. N times ours plus the ridge."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(150, 6, generator=gen, dtype=torch.float64)
    y = torch.arange(150) % 4
    ours = MahalanobisEnsemble(blocks_model(0), ["0"]).fit_features({"0": z}, y)
    theirs = Mahalanobis(None).fit_features(z, y)
    covariance = torch.linalg.inv(ours.precisions["0"])
    # pytorch-ood accumulates in float32 (its buffers have the default dtype): ~1e-6 relative
    torch.testing.assert_close(theirs.mu.double(), ours.means["0"], rtol=1e-5, atol=1e-6)
    expected = 150 * covariance + 1e-6 * torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(theirs.cov.double(), expected, rtol=1e-5, atol=1e-4)


def test_streaming_fit_equals_one_shot_and_skips_ood():
    model = blocks_model(1)
    x, y = random_batch(1, 90)
    labels = y.clone()
    labels[::10] = -1  # OOD samples in the loader are skipped
    loader = DataLoader(TensorDataset(x, labels), batch_size=7)
    streamed = MahalanobisEnsemble(model, LAYERS, magnitude=0.0, samples=10).fit(loader)
    known = labels >= 0
    one_shot = fitted(model, x[known], y[known])
    for name in LAYERS:
        torch.testing.assert_close(streamed.means[name], one_shot.means[name], rtol=1e-10, atol=0)
        torch.testing.assert_close(
            streamed.precisions[name], one_shot.precisions[name], rtol=1e-8, atol=1e-10
        )


def test_fitting_a_training_mode_model_warns_why_at_the_call():
    model = blocks_model(1).train()
    x, y = random_batch(1, 30)
    detector = MahalanobisEnsemble(model, LAYERS, magnitude=0.0, samples=10)
    match = r"MahalanobisEnsemble: the model is in training mode \(dropout and batch statistics"
    with pytest.warns(UserWarning, match=match) as caught:
        detector.fit(DataLoader(TensorDataset(x, y), batch_size=10))
    assert caught[0].filename == __file__  # fit's own warning; fit_regression's comes after


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layer_scores_are_the_direct_distances(seed):
    model = blocks_model(seed)
    x, y = random_batch(seed, 80)
    detector = fitted(model, x, y, magnitude=0.0)
    x_test, _ = random_batch(seed + 100, 13)
    features = reference_features(model, x_test)
    expected = np.stack(
        [
            reference_confidence(
                features[n].numpy(),
                detector.means[n].numpy(),
                detector.precisions[n].numpy(),
            )
            for n in LAYERS
        ],
        axis=1,
    )
    # float64; the expanded quadratic form loses ~1e-16 of |z|_P^2 + |mu|_P^2 (<< 1e-9 here)
    np.testing.assert_allclose(detector.layer_scores_features(features).numpy(), expected, 1e-9)
    np.testing.assert_allclose(detector.layer_scores(x_test).numpy(), expected, rtol=1e-9)


# -- input preprocessing and FGSM -------------------------------------------------------------


def reference_preprocess(detector, model, x, layer, magnitude, norm_std):
    """One sample at a time: sign (>= 0 -> +1) of the gradient of 1/2 d to the closest class."""
    means = detector.means[layer].numpy()
    precision = detector.precisions[layer]
    out = []
    for xi in x:
        xi = xi[None].clone().requires_grad_()
        f = reference_features(model, xi)[layer][0]
        fi = f.detach().numpy()
        distances = [(fi - mu) @ precision.numpy() @ (fi - mu) for mu in means]
        centered = f - torch.as_tensor(means[int(np.argmin(distances))])
        (gradient,) = torch.autograd.grad(0.5 * centered @ precision @ centered, xi)
        sign = torch.where(gradient >= 0, 1.0, -1.0).double()
        if norm_std is not None:
            sign = sign / torch.tensor(norm_std, dtype=torch.float64).view(1, 3, 1, 1)
        out.append((xi - magnitude * sign).detach()[0])
    return torch.stack(out)


@pytest.mark.parametrize(("layer", "norm_std"), [("0", None), ("1", STD), ("2", STD)])
def test_preprocessing_is_the_direct_sign_step(layer, norm_std):
    model = blocks_model(4, dead_channel=True)
    x, y = random_batch(4, 60)
    detector = fitted(model, x, y, norm_std=norm_std)
    x_test, _ = random_batch(5, 9)
    expected = reference_preprocess(detector, model, x_test, layer, 0.003, norm_std)
    actual = detector.preprocess(x_test, layer, 0.003)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-15)
    # the ignored channel has zero gradient: the official sign moves it by -magnitude / std
    std2 = 1.0 if norm_std is None else norm_std[2]
    torch.testing.assert_close(
        actual[:, 2] - x_test[:, 2], torch.full_like(x_test[:, 2], -0.003 / std2)
    )
    # and the layer score is the direct distance at the preprocessed input
    scores = detector.layer_scores(x_test, magnitude=0.003)[:, LAYERS.index(layer)]
    z = reference_features(model, expected)[layer].numpy()
    reference = reference_confidence(
        z, detector.means[layer].numpy(), detector.precisions[layer].numpy()
    )
    np.testing.assert_allclose(scores.numpy(), reference, rtol=1e-9)


def reference_fgsm(model, x, y, step, norm_std=None, bounds=None):
    out = []
    for xi, yi in zip(x, y, strict=True):
        xi = xi[None].clone().requires_grad_()
        loss = nn.functional.cross_entropy(model(xi), yi[None])
        (gradient,) = torch.autograd.grad(loss, xi)
        sign = torch.where(gradient >= 0, 1.0, -1.0).double()
        if norm_std is not None:
            sign = sign / torch.tensor(norm_std, dtype=torch.float64).view(1, 3, 1, 1)
        adv = (xi + step * sign).detach()[0]
        if bounds is not None:
            adv = torch.stack([adv[c].clamp(*bounds[c]) for c in range(3)])
        out.append(adv)
    return torch.stack(out)


def test_fgsm_is_the_direct_sign_step():
    model = blocks_model(6, dead_channel=True)
    x, y = random_batch(6, 11)
    torch.testing.assert_close(fgsm(model, x, y, 0.05), reference_fgsm(model, x, y, 0.05))
    # the ignored channel moves by +step (sign of 0 is +1 in the official code)
    torch.testing.assert_close(
        fgsm(model, x, y, 0.05)[:, 2] - x[:, 2], torch.full_like(x[:, 2], 0.05)
    )
    # model-input clamp, as the official ImageNet script clamps normalized inputs to [0, 1]
    torch.testing.assert_close(
        fgsm(model, x, y, 0.05, clamp=(0.0, 1.0)),
        reference_fgsm(model, x, y, 0.05, bounds=[(0.0, 1.0)] * 3),
    )
    # pixel units: the step is divided by std and the pixel box [0, 1] mapped through the norm
    bounds = [((0 - m) / s, (1 - m) / s) for m, s in zip(MEAN, STD, strict=True)]
    torch.testing.assert_close(
        fgsm(model, x, y, 0.05, norm_std=STD, norm_mean=MEAN, clamp=(0.0, 1.0)),
        reference_fgsm(model, x, y, 0.05, STD, bounds),
    )


def test_official_sign_maps_zero_to_plus_one():
    g = torch.tensor([-2.0, -0.0, 0.0, 3.0, float("nan")])
    assert official_sign(g).tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0]


# -- the regression and the magnitude choice --------------------------------------------------


def test_regression_is_sklearns_on_the_layer_scores():
    model = blocks_model(7)
    x, y = random_batch(7, 90)
    detector = fitted(model, x, y, magnitude=0.0, samples=40, batch_size=16)
    x_tune, y_tune = random_batch(8, 50)
    detector.fit_regression(x_tune, y_tune)  # uses the first 40 only
    ids, advs = x_tune[:40], reference_fgsm(model, x_tune[:40], y_tune[:40], 0.05)
    features = [reference_features(model, batch) for batch in (ids, advs)]
    design = np.concatenate(
        [
            np.stack(
                [
                    reference_confidence(
                        f[n].numpy(), detector.means[n].numpy(), detector.precisions[n].numpy()
                    )
                    for n in LAYERS
                ],
                axis=1,
            )
            for f in features
        ]
    )
    regression = official_lr(design, np.r_[np.zeros(40), np.ones(40)])
    # identical inputs up to ~1e-12 (float64 distances); lbfgs then takes the same steps
    np.testing.assert_allclose(detector.coef.numpy(), regression.coef_[0], rtol=1e-6)
    np.testing.assert_allclose(float(detector.intercept), regression.intercept_[0], rtol=1e-6)
    x_test, _ = random_batch(9, 10)
    test_design = detector.layer_scores(x_test).numpy()
    np.testing.assert_allclose(
        detector.predict(x_test).numpy(), regression.decision_function(test_design), rtol=1e-9
    )
    np.testing.assert_allclose(
        torch.sigmoid(detector.predict(x_test)).numpy(),
        regression.predict_proba(test_design)[:, 1],
        rtol=1e-9,
    )


def test_fit_shows_progress_only_when_asked(capsys, monkeypatch):
    def untrained_regression(scores, is_adversarial):  # the bars only: skip sklearn's 1 s fit
        return torch.zeros(scores.shape[1], dtype=scores.dtype), torch.zeros((), dtype=scores.dtype)

    monkeypatch.setattr(detector, "fit_logistic_regression", untrained_regression)
    model = blocks_model(2)
    x, y = random_batch(2, 40)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    loud = MahalanobisEnsemble(model, LAYERS, magnitudes=[0.0, 0.01], samples=10, progress=True)
    loud.fit(loader)
    shown = capsys.readouterr().err
    assert "Mahalanobis: Gaussians" in shown and "Mahalanobis: magnitudes" in shown
    quiet = MahalanobisEnsemble(model, LAYERS, magnitudes=[0.0], samples=10)
    quiet.fit(loader)
    assert "Mahalanobis" not in capsys.readouterr().err


def test_magnitude_is_chosen_as_the_official_script_does():
    model = blocks_model(10)
    x, y = random_batch(10, 90)
    candidates = [0.05, 0.5, 0.0]  # on this model: FPR95 1.0, 0.967, 0.967: a tie
    detector = fitted(
        model, x, y, magnitudes=candidates, samples=30, adversarial_step=0.02, batch_size=16
    )
    x_tune, y_tune = random_batch(11, 60)
    detector.fit_regression(x_tune, y_tune)
    adversarial = fgsm(model, x_tune, y_tune, 0.02)
    labels = np.r_[np.zeros(30), np.ones(30)]
    fprs, regressions = {}, {}
    for magnitude in candidates:

        def design(inputs, magnitude=magnitude):
            return detector.layer_scores(inputs, magnitude).numpy()

        train = np.concatenate([design(x_tune[:30]), design(adversarial[:30])])
        regressions[magnitude] = official_lr(train, labels)
        held_out = np.concatenate([design(x_tune[30:]), design(adversarial[30:])])
        p_adversarial = regressions[magnitude].predict_proba(held_out)[:, 1]
        fprs[magnitude] = paper_metrics(p_adversarial, -labels)["FPR95"]
    best = min(candidates, key=lambda m: (fprs[m], candidates.index(m)))
    # for the test to mean much: not the first candidate, and tied with a later one
    assert candidates.index(best) > 0 and list(fprs.values()).count(fprs[best]) > 1, fprs
    assert detector.tuning_fpr95 == pytest.approx(fprs, abs=1e-12)
    assert detector.magnitude == best
    np.testing.assert_allclose(detector.coef.numpy(), regressions[best].coef_[0], rtol=1e-6)


# -- the combination on a trained CNN ---------------------------------------------------------


TRAINING_STEPS = 100


def gratings(n, gen, tint=(0.0, 0.0, 0.0), size=12):
    """Three classes of oriented gratings (0, 60, 120 degrees) with random phase and noise."""
    y = torch.randint(3, (n,), generator=gen)
    theta = y * (math.pi / 3)
    phase = torch.rand(n, generator=gen) * 2 * math.pi
    r = torch.arange(size) / size * 2 * math.pi
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    along = cols * torch.cos(theta)[:, None, None] + rows * torch.sin(theta)[:, None, None]
    image = torch.sin(2 * along + phase[:, None, None])[:, None].repeat(1, 3, 1, 1)
    image = image + 0.6 * torch.randn(n, 3, size, size, generator=gen)
    return image + torch.tensor(tint).view(1, 3, 1, 1), y


def trained_cnn(seed: int):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(6, 12, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)),
    )
    x, y = gratings(600, gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(TRAINING_STEPS):
        batch = torch.randint(600, (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), x, y, gen


@pytest.mark.parametrize("seed", [0, 1])
def test_ensemble_beats_its_weakest_layer_on_held_out_data(seed):
    """OOD = the same gratings with a colour tint: a low-level shift that the first block sees
    and the last block (trained to ignore colour) barely does. The regression, trained only on
    ID vs FGSM copies, must weigh the layers so that it beats the weakest one."""
    model, x, y, gen = trained_cnn(seed)
    assert (model(x).argmax(dim=1) == y).float().mean() > 0.9
    detector = MahalanobisEnsemble(model, LAYERS, magnitude=0.005, samples=100, batch_size=100)
    loader = DataLoader(TensorDataset(x, y), batch_size=200)
    x_tune, y_tune = gratings(100, gen)
    detector.fit(loader, DataLoader(TensorDataset(x_tune, y_tune), batch_size=50))
    x_id, _ = gratings(200, gen)
    x_ood, _ = gratings(200, gen, tint=(0.3, 0.0, -0.3))
    labels = torch.cat([torch.zeros(200), -torch.ones(200)]).long()
    layer_scores = torch.cat([detector.layer_scores(x_id), detector.layer_scores(x_ood)])
    per_layer = [paper_metrics(-layer_scores[:, i], labels)["AUROC"] for i in range(3)]
    ensemble = paper_metrics(torch.cat([detector(x_id), detector(x_ood)]), labels)["AUROC"]
    assert min(per_layer) < 0.9, (
        f"the weakest layer must be weak for the test to mean much: {per_layer}"
    )
    assert ensemble > min(per_layer) + 0.05, (ensemble, per_layer)


# -- cached features, persistence -------------------------------------------------------------


def test_predict_features_equals_predict_without_preprocessing():
    model = blocks_model(12)
    x, y = random_batch(12, 80)
    detector = fitted(model, x, y, magnitude=0.0, samples=20)
    detector.fit_regression(*random_batch(13, 20))
    x_test, _ = random_batch(14, 9)
    maps = {}  # N x C x H x W maps are averaged by the detector itself
    h = x_test
    with torch.no_grad():
        for name in LAYERS:
            h = model[int(name)](h)
            maps[name] = h
    torch.testing.assert_close(
        detector.predict_features(maps), detector.predict(x_test), rtol=1e-9, atol=1e-9
    )


def test_state_dict_round_trip():
    model = blocks_model(15)
    x, y = random_batch(15, 80)
    detector = fitted(model, x, y, magnitude=0.002, norm_std=STD, samples=20)
    detector.fit_regression(*random_batch(16, 20))
    buffer = io.BytesIO()
    torch.save(detector.state_dict(), buffer)
    buffer.seek(0)
    restored = MahalanobisEnsemble(model, LAYERS, norm_std=STD)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x_test, _ = random_batch(17, 6)
    assert restored.magnitude == 0.002
    torch.testing.assert_close(restored.predict(x_test), detector.predict(x_test), rtol=0, atol=0)
    with pytest.raises(ValueError, match="state is for layers"):
        MahalanobisEnsemble(model, ["0", "1"]).load_state_dict(detector.state_dict())
    broken = detector.state_dict()
    del broken["coef"]
    with pytest.raises(ValueError, match="missing \\['coef'\\]"):
        restored.load_state_dict(broken)


def test_runs_on_the_device(device):
    """Fitted and scored on ``device`` (CUDA with --gradood-gpu), it agrees with the CPU run."""
    model = blocks_model(19)
    x, y = random_batch(19, 80)
    x_tune, y_tune = random_batch(20, 20)
    x_test, _ = random_batch(21, 7)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    tuning = DataLoader(TensorDataset(x_tune, y_tune), batch_size=8)

    def scores(on):
        detector = MahalanobisEnsemble(copy.deepcopy(model), LAYERS, magnitude=0.002, samples=20)
        detector.to(on).fit(loader, tuning)
        assert detector.means["0"].device.type == torch.device(on).type
        return detector.predict(x_test).cpu()

    # float64 on both; only the order of summation differs between the devices
    torch.testing.assert_close(scores(device), scores("cpu"), rtol=1e-9, atol=1e-9)


# -- default layers ---------------------------------------------------------------------------


def test_default_layers_of_bit_are_the_official_five():
    model = timm.create_model("resnetv2_101x1_bit", pretrained=False).eval()
    layers = default_layers(model)
    assert layers == ["stem", "stages.0", "stages.1", "stages.2", "stages.3"]
    detector = MahalanobisEnsemble(model)
    assert detector.layers == layers
    with torch.no_grad():
        features = layer_features(model, layers, torch.randn(1, 3, 64, 64))
    # the official feature_list: root 64, block1..4 256, 512, 1024, 2048 channels
    assert [features[n].shape[1] for n in layers] == [64, 256, 512, 1024, 2048]


def test_default_layers_of_other_architectures():
    resnet = torchvision.models.resnet18(num_classes=3)
    assert default_layers(resnet) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    big_transfer = nn.Module()
    big_transfer.root = nn.Conv2d(3, 4, 3)
    big_transfer.body = nn.Sequential()
    big_transfer.body.add_module("block1", nn.Identity())
    big_transfer.body.add_module("block2", nn.Identity())
    assert default_layers(big_transfer) == ["root", "body.block1", "body.block2"]
    with pytest.raises(ValueError, match=r"pass layers=.*top-level modules: 0, 1, 2, 3"):
        default_layers(blocks_model(0))


# -- errors -----------------------------------------------------------------------------------


def test_errors_name_the_problem():
    model = blocks_model(18)
    x, y = random_batch(18, 60)
    with pytest.raises(ValueError, match="layers \\['9'\\] are not modules"):
        MahalanobisEnsemble(model, ["0", "9"])
    with pytest.raises(ValueError, match="needs norm_mean"):
        MahalanobisEnsemble(model, LAYERS, norm_std=STD, adversarial_clamp=(0.0, 1.0))
    with pytest.raises(ValueError, match="magnitude must be a finite number >= 0"):
        MahalanobisEnsemble(model, LAYERS, magnitude=-0.1)
    detector = MahalanobisEnsemble(model, LAYERS, magnitude=0.001, samples=30)
    with pytest.raises(RequiresFittingException):
        detector.predict(x)
    with pytest.raises(ValueError, match="classes \\[1, 3\\] have no training sample"):
        detector.fit_features(reference_features(model, x), y * 2)
    detector.fit_features(reference_features(model, x), y)
    with pytest.raises(RequiresFittingException, match="regression"):
        detector.predict(x)
    with pytest.raises(ValueError, match="needs 30 ID inputs \\(30 per split\\), got 12"):
        detector.fit_regression(x[:12], y[:12])
    tuning = DataLoader(TensorDataset(x[:12], y[:12]), batch_size=5)
    with pytest.raises(ValueError, match="first 30 ID samples of the tuning loader, it yielded 12"):
        MahalanobisEnsemble(model, LAYERS, magnitude=0.0, samples=30).fit(
            DataLoader(TensorDataset(x, y), batch_size=20), tuning
        )
    detector.fit_regression(x[:30], y[:30])
    with pytest.raises(ValueError, match="needs the raw inputs"):
        detector.predict_features(reference_features(model, x))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs contain 1 non-finite"):
        detector.predict(bad)
    with pytest.raises(ValueError, match="features lack layers \\['2'\\]"):
        detector.layer_scores_features({"0": torch.ones(2, 4), "1": torch.ones(2, 6)})
    with pytest.raises(ValueError, match="layer '1' features have 7 channels, the fit had 6"):
        detector.layer_scores_features(
            {"0": torch.ones(2, 4), "1": torch.ones(2, 7), "2": torch.ones(2, 5)}
        )
    with pytest.raises(ValueError, match="norm_std has 3 channels"):
        fgsm(model, x[:, :2], y, norm_std=STD)
