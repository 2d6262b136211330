"""Per-sample gradient statistics against per-sample autograd loops, on every parameter."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from timm.layers import GroupNormAct, StdConv2d, StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from torch import nn

from gradood.gradients import (
    per_sample_gradient_powers,
    per_sample_squared_norms,
    resolve_parameter_names,
)
from gradood.gradients.choice import TRIALS, chosen_forms, clear_choices
from gradood.gradients.outer_product import OuterProductRule
from gradood.testing import SmallCNN

# All models are float64. Ours and the reference sum the same products in different orders
# (batched matmuls, Gram matrices, unfolded patches vs autograd's kernels), so they differ by
# rounding: ~1e-16 times the condition number of each sum (squared for the Gram form). On these
# small random models the largest relative difference observed is 5e-15; 1e-11 leaves a wide
# margin, while an error of the method (a missing term, a wrong epsilon, a position counted
# twice) shows up at 1e-6 or more.
RTOL = 1e-11
NORMS = [2.0, 1.0, 0.5, math.inf]


def lee_loss(logits):
    """Binary cross-entropy of sigmoid(logits) against ones, summed over classes."""
    return F.softplus(-logits).sum(dim=1)


def per_sample_reference(model, loss, x, p, names=None):
    """One forward and one ``torch.autograd.grad`` per sample, batch of one."""
    named = dict(model.named_parameters())
    names = list(named) if names is None else names
    params = [named[n] for n in names]
    flags = [q.requires_grad for q in params]
    for q in params:
        q.requires_grad_(True)
    rows = []
    try:
        for i in range(x.shape[0]):
            value = loss(model(x[i : i + 1]))[0]
            grads = torch.autograd.grad(value, params, allow_unused=True)
            row = []
            for grad, param in zip(grads, params, strict=True):
                g = torch.zeros_like(param) if grad is None else grad
                row.append(g.abs().max() if math.isinf(p) else (g.abs() ** p).sum())
            rows.append(torch.stack(row))
    finally:
        for q, flag in zip(params, flags, strict=True):
            q.requires_grad_(flag)
    return torch.stack(rows).double()


# -- models ----------------------------------------------------------------------------------


class BigTransferStdConv2d(nn.Conv2d):
    """big_transfer's weight-standardized convolution: no ``eps`` attribute, 1e-10."""

    def forward(self, x):
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BigTransferBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.root = BigTransferStdConv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.gn = nn.GroupNorm(4, 8)
        self.conv = BigTransferStdConv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=True)
        self.head = nn.Conv2d(8, 4, 1)
        with torch.no_grad():  # small weight variance: the epsilon matters at 1e-10 relative
            self.conv.weight.mul_(1e-4)

    def forward(self, x):
        h = self.conv(F.relu(self.gn(self.root(x))))
        return self.head(h.mean(dim=(2, 3), keepdim=True)).flatten(1)


class ConvVariants(nn.Module):
    """Stride, dilation, groups, 'same' and non-zero padding modes, timm's SAME conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
        self.b = nn.Conv2d(6, 6, 3, padding="same", groups=3, padding_mode="reflect")
        self.c = nn.Conv2d(6, 8, 4, padding="same", dilation=1, bias=False)
        self.d = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, padding_mode="circular")
        self.e = StdConv2dSame(8, 6, 3, stride=2, eps=1e-6, bias=True)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.tanh(self.b(torch.tanh(self.a(x))))
        x = self.e(torch.tanh(self.d(torch.tanh(self.c(x)))))
        return self.fc(x.mean(dim=(2, 3)))


class SequenceModel(nn.Module):
    """Linear and LayerNorm on B x T x D, with a LayerNorm without bias."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.mix = nn.Linear(8, 8, bias=False)
        self.norm2 = nn.LayerNorm((4, 8), bias=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.norm(self.embed(x)))
        h = self.norm2(torch.tanh(self.mix(h)))
        return self.head(h.mean(dim=1))


class SharedWeights(nn.Module):
    """A module called twice, and a parameter registered by two modules (tied)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(5, 5)
        self.up = nn.Linear(5, 7, bias=False)
        self.down = nn.Linear(7, 5, bias=False)
        self.down.weight = nn.Parameter(torch.randn(5, 7, dtype=torch.float64))
        self.tied = nn.Linear(7, 5, bias=False)
        self.tied.weight = self.down.weight
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        h = torch.tanh(self.inner(torch.tanh(self.inner(x))))
        h = torch.tanh(self.down(torch.tanh(self.up(h)))) + self.tied(torch.sin(self.up(h)))
        return self.head(h)


class ClassToken(nn.Module):
    """A parameter used directly in the model's own forward, as a ViT's class token."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 6))
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        tokens = torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)
        h = torch.tanh(self.proj(tokens))
        return self.head(h[:, 0] + h[:, 1:].mean(dim=1))


class NoRuleLayers(nn.Module):
    """Layers without a dedicated rule: PReLU and Embedding (integer inputs)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.act = nn.PReLU(6)
        self.head = nn.Linear(6, 4)

    def forward(self, tokens):
        return self.head(self.act(self.embed(tokens).transpose(1, 2)).mean(dim=2))


class ScaledLinear(nn.Linear):
    """A Linear subclass whose forward is not a Linear's: must not get the Linear rule."""

    def forward(self, x):
        return 2 * super().forward(x) + self.weight.sum()


def _mlp():
    return nn.Sequential(
        nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), ScaledLinear(16, 5)
    )


def _cnn_batchnorm():
    model = SmallCNN(num_classes=5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model


def _resnetv2():
    return ResNetV2(
        layers=[1, 1, 1, 1],
        channels=(16, 32, 64, 128),
        num_classes=5,
        stem_chs=8,
        stem_type="fixed",
        conv_layer=partial(StdConv2d, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=4),
    )


def _image(shape):
    return lambda generator: torch.randn(shape, generator=generator, dtype=torch.float64)


MODELS = {
    "mlp": (_mlp, _image((5, 7))),
    "cnn-batchnorm": (_cnn_batchnorm, _image((4, 3, 10, 10))),
    "timm-resnetv2": (_resnetv2, _image((3, 3, 32, 32))),
    "big-transfer-stdconv": (BigTransferBlock, _image((4, 3, 11, 9))),
    "conv-variants": (ConvVariants, _image((3, 3, 13, 12))),
    "sequence-linear": (SequenceModel, _image((4, 4, 6))),
    "shared-weights": (SharedWeights, _image((5, 5))),
    "class-token": (ClassToken, _image((4, 3, 6))),
    "no-rule-layers": (
        NoRuleLayers,
        lambda generator: torch.randint(0, 11, (5, 4), generator=generator),
    ),
}


def _setup(name, seed):
    torch.manual_seed(seed)
    build, make_input = MODELS[name]
    model = build().double().eval()
    return model, make_input(torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_per_sample_autograd_for_every_parameter(name, seed):
    model, x = _setup(name, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no slow fallback, no dropout warning
        warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")
        for p in NORMS:
            expected = per_sample_reference(model, lee_loss, x, p)
            ours = per_sample_gradient_powers(model, lee_loss, x, p=p)
            assert ours.dtype == torch.float64
            assert ours.shape == (x.shape[0], len(list(model.parameters())))
            torch.testing.assert_close(ours, expected, rtol=RTOL, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ghost_and_materialized_norms_agree(name):
    model, x = _setup(name, seed=2)
    ghost = per_sample_squared_norms(model, lee_loss, x, method="ghost")
    materialized = per_sample_squared_norms(model, lee_loss, x, method="materialize")
    auto = per_sample_squared_norms(model, lee_loss, x)
    torch.testing.assert_close(ghost, materialized, rtol=RTOL, atol=0)
    torch.testing.assert_close(auto, materialized, rtol=RTOL, atol=0)


#: every form that ``method`` can ask for, with the orders it computes
FORMS = {
    "ghost": [2.0],
    "padded-gram": [2.0],
    "materialize": [2.0, 1.0],
    "conv-backward": [2.0, 1.0, math.inf],
}


@pytest.mark.parametrize("method", sorted(FORMS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_form_matches_per_sample_autograd(name, method):
    """Each candidate of the timed choice is exact on its own, whichever the choice picks."""
    model, x = _setup(name, seed=6)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")
        for p in FORMS[method]:
            expected = per_sample_reference(model, lee_loss, x, p)
            ours = per_sample_gradient_powers(model, lee_loss, x, p=p, method=method)
            torch.testing.assert_close(ours, expected, rtol=RTOL, atol=0)


def test_the_timed_choice_is_cached(monkeypatch):
    """On first use each form that ``auto`` tries runs ``TRIALS`` times (a lone form once);
    afterwards only the cached form runs, once per layer (which form wins depends on the
    machine: not asserted), with the same values."""
    model, x = _setup("conv-variants", seed=7)
    runs = []
    original = OuterProductRule._weight_powers

    def counted(self, form, module, call, settings):
        runs.append((id(module), form))
        return original(self, form, module, call, settings)

    monkeypatch.setattr(OuterProductRule, "_weight_powers", counted)
    clear_choices()
    first = per_sample_squared_norms(model, lee_loss, x)
    tried = Counter(runs)
    forms = {layer: {f for m, f in tried if m == layer} for layer, _ in tried}
    assert len(forms) == 6  # five convolutions and the head
    for (layer, _form), count in tried.items():
        assert count == (TRIALS if len(forms[layer]) > 1 else 1)
    chosen = chosen_forms()
    timed = [layer for layer, options in forms.items() if len(options) > 1]
    assert len(chosen) == len(timed) > 0
    runs.clear()
    again = per_sample_squared_norms(model, lee_loss, x)
    assert sorted(layer for layer, _ in runs) == sorted(forms)  # one run per layer
    assert sorted(f for layer, f in runs if layer in timed) == sorted(chosen.values())
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    per_sample_squared_norms(model, lee_loss, x[:2])  # another input shape: timed anew
    assert len(chosen_forms()) == 2 * len(timed)


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_chunking_does_not_change_the_values(p):
    model, x = _setup("timm-resnetv2", seed=3)
    whole = per_sample_gradient_powers(model, lee_loss, x, p=p)
    one_by_one = per_sample_gradient_powers(model, lee_loss, x, p=p, workspace_elements=1)
    torch.testing.assert_close(one_by_one, whole, rtol=1e-12, atol=0)


def test_other_losses_and_parameter_selection():
    model, x = _setup("cnn-batchnorm", seed=4)
    selection = ["fc", "features.1.weight", "features.0"]
    names = resolve_parameter_names(model, selection)
    assert names == [
        "features.0.weight",
        "features.0.bias",
        "features.1.weight",
        "fc.weight",
        "fc.bias",
    ]

    def loss(z):
        return -torch.log_softmax(z / 2.0, dim=1).sum(dim=1)

    ours = per_sample_gradient_powers(model, loss, x, selection, 3.0)
    torch.testing.assert_close(
        ours, per_sample_reference(model, loss, x, 3.0, names), rtol=RTOL, atol=0
    )


def test_float32_model_matches_float64_reference():
    model, x = _setup("timm-resnetv2", seed=5)
    expected = per_sample_reference(model, lee_loss, x, 2.0)
    ours = per_sample_squared_norms(model.float(), lee_loss, x.float())
    # the float32 forward and backward passes dominate: per-sample float32 autograd itself is
    # up to 1e-5 (relative) off the float64 values on this model; 1e-4 allows ten times that
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=0)


def test_frozen_parameters_are_scored_and_left_frozen():
    model, x = _setup("cnn-batchnorm", seed=6)
    expected = per_sample_reference(model, lee_loss, x, 1.0)
    for param in model.parameters():
        param.requires_grad_(False)
    ours = per_sample_gradient_powers(model, lee_loss, x, p=1.0)
    torch.testing.assert_close(ours, expected, rtol=RTOL, atol=0)
    assert not any(param.requires_grad for param in model.parameters())


def test_leaves_no_gradients_and_no_hooks():
    model, x = _setup("timm-resnetv2", seed=7)
    per_sample_squared_norms(model, lee_loss, x)
    assert all(param.grad is None for param in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_hooks_are_removed_after_an_error():
    model, x = _setup("mlp", seed=8)
    with pytest.raises(ValueError, match=r"one loss per sample, shape \(5,\), got \(5, 5\)"):
        per_sample_squared_norms(model, lambda z: z, x)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(param.grad is None for param in model.parameters())


def test_empty_batch_and_unused_parameters():
    model, x = _setup("cnn-batchnorm", seed=9)
    assert per_sample_squared_norms(model, lee_loss, x[:0]).shape == (0, 10)
    model.unused = nn.Linear(3, 3).double()
    values = per_sample_squared_norms(model, lee_loss, x)
    assert torch.equal(values[:, -2:], torch.zeros(4, 2, dtype=torch.float64))
    assert bool((values[:, :-2] > 0).all())


def test_module_whose_forward_cannot_be_vmapped_falls_back_to_a_loop():
    class CheckedLinear(nn.Linear):
        def forward(self, x):
            if not torch.isfinite(x).all().item():  # data-dependent control flow: no vmap
                raise ValueError("non-finite input")
            return 3 * super().forward(x)

    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(4, 6), CheckedLinear(6, 3)).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="one backward pass per sample"):
        ours = per_sample_gradient_powers(model, lee_loss, x, p=1.0)
    expected = per_sample_reference(model, lee_loss, x, 1.0)
    torch.testing.assert_close(ours, expected, rtol=RTOL, atol=0)


# -- errors ----------------------------------------------------------------------------------


def test_batchnorm_in_training_mode_raises():
    model = _cnn_batchnorm().double().train()
    with pytest.raises(ValueError, match=r"samples interact through batch statistics: features\.1"):
        per_sample_squared_norms(model, lee_loss, torch.randn(3, 3, 8, 8, dtype=torch.float64))


def test_batchnorm_without_running_statistics_raises():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match=r"1 normalize with the batch's statistics"):
        per_sample_squared_norms(model, lee_loss, torch.randn(3, 3))


def test_dropout_in_training_mode_warns():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    with pytest.warns(UserWarning, match=r"dropout is active in 1 .*random masks"):
        values = per_sample_squared_norms(model, lee_loss, torch.randn(3, 3))
    assert values.shape == (3, 4)


def test_dropout_inside_a_generic_owner_raises():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(x * self.scale)

    model = nn.Sequential(Noisy(), nn.Linear(4, 2)).train()
    message = r"'0' \(Noisy\) contains active dropout"
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=message):
        per_sample_squared_norms(model, lee_loss, torch.randn(3, 4))


def test_parameter_used_outside_its_module_raises():
    class ReadsChildWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) + F.linear(x, self.fc.weight)

    model = ReadsChildWeight()
    with pytest.raises(ValueError, match=r"outside the forward .*: fc\.weight \(in linear\)"):
        per_sample_squared_norms(model, lee_loss, torch.randn(3, 4))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_input_modified_in_place_after_the_module_ran_raises():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            y = self.b(h)
            h.mul_(2)
            return y + h.sum(dim=1, keepdim=True)

    with pytest.raises(ValueError, match=r"input of module 'b' was modified in place"):
        per_sample_squared_norms(InPlace(), lee_loss, torch.randn(3, 4))


def test_module_without_the_batch_in_front_raises():
    class Flattened(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x.reshape(-1, 4)).reshape(x.shape[0], -1)

    with pytest.raises(ValueError, match=r"'fc' \(Linear\) returned a tensor of shape \(6, 3\)"):
        per_sample_squared_norms(Flattened(), lee_loss, torch.randn(3, 2, 4))


def test_module_run_without_gradients_raises():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            with torch.no_grad():
                x = self.body(x)
            return self.fc(x)

    with pytest.raises(ValueError, match=r"'body' ran with gradients disabled"):
        per_sample_squared_norms(Frozen(), lee_loss, torch.randn(3, 4))
    values = per_sample_squared_norms(Frozen(), lee_loss, torch.randn(3, 4), ["fc"])
    assert values.shape == (3, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 0.0}, "p must be > 0"),
        ({"method": "fast"}, "method must be one of auto, ghost, padded-gram, materialize"),
        ({"p": 1.0, "method": "ghost"}, "method='ghost' computes squared L2 norms only"),
        ({"workspace_elements": 0}, "workspace_elements must be an integer >= 1"),
        ({"param_names": ["nope"]}, "'nope' names no parameter or module of Sequential"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        per_sample_gradient_powers(_mlp(), lee_loss, torch.randn(2, 7), **kwargs)


def test_subclass_that_stops_the_gradient_does_not_get_the_linear_rule():
    class Detached(nn.Linear):
        def forward(self, x):
            return super().forward(x).detach() + 0 * x.sum(dim=-1, keepdim=True)

    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), Detached(4, 2)).double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    values = per_sample_squared_norms(model, lee_loss, x)
    torch.testing.assert_close(
        values, per_sample_reference(model, lee_loss, x, 2.0), rtol=RTOL, atol=0
    )
    assert torch.equal(values[:, 2:], torch.zeros(4, 2, dtype=torch.float64))
