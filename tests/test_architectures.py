"""Common classifier families of torchvision and timm, each built tiny (float64, 32 px, batch 2):
GradNorm (head mode and ``params=`` mode) and Lee & AlRegib's features against per-sample
autograd, and a clear error for the models whose head the factorization cannot score."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from functools import partial

import pytest
import torch
import torchvision.models as tvm
from timm.layers import GroupNormAct
from timm.models.convnext import ConvNeXt
from timm.models.deit import VisionTransformerDistilled
from timm.models.efficientnet import _gen_efficientnet
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.regnet import BlockParams, RegNet
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vgg import make_layers

from gradood import GradNorm, LeeAlRegib
from gradood.heads import find_head

from references import entrywise_norm, official_gradients

# float64 models: our per-sample gradients and autograd's per-sample loop are the same exact
# quantities summed in other orders (~1e-16 relative per operation, ~1e-14 after a few thousand
# terms); the one cancellation is C softmax(z/T) - 1 when softmax(z/T) ~ 1/C, relative error
# ~ eps T / |z_c - mean(z)| <= 2.2e-16 * 4 / 1e-6 ~ 1e-9 for logits that differ by 1e-6 or more
RTOL = 1e-9
BATCH, SIZE = 2, 32


def _vgg() -> nn.Module:
    """torchvision's VGG with batch norm, 8 and 16 channels; its three-layer classifier has the
    same structure at width 32 (VGG fixes it at 4096 on 7 x 7 x 512, so it is replaced)."""
    with torch.device("meta"):  # skip initializing the 100M-parameter classifier
        model = tvm.VGG(make_layers([8, "M", 16, "M"], batch_norm=True), init_weights=False)
    model.features = model.features.to_empty(device="cpu")
    for module in model.features.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model.classifier = nn.Sequential(
        nn.Linear(16 * 7 * 7, 32),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(32, 32),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(32, 10),
    )
    return model


def _tv_vit() -> nn.Module:
    """torchvision's ViT initializes its head to zero (uniform predictions): made random."""
    model = tvm.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=10,
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)
    nn.init.normal_(model.heads.head.bias, std=0.5)
    return model


#: family -> (builder of a tiny 10-class model, the head find_head must pick)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "tv-resnet": (lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), "fc"),
    "timm-resnetv2-bit": (
        lambda: ResNetV2(
            [1, 1],
            channels=(32, 64),
            num_classes=10,
            stem_chs=16,
            stem_type="fixed",
            norm_layer=partial(GroupNormAct, num_groups=4),
        ),
        "head.fc",
    ),
    "timm-vit": (
        lambda: VisionTransformer(
            img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=10
        ),
        "head",
    ),
    "tv-vit": (_tv_vit, "heads.head"),
    "tv-swin": (
        lambda: tvm.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=[2, 2],
            num_classes=10,
        ),
        "head",
    ),
    "timm-convnext": (
        lambda: ConvNeXt(
            depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=10, ls_init_value=0.5
        ),
        "head.fc",
    ),
    "timm-efficientnet": (
        lambda: _gen_efficientnet(
            "efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.25, num_classes=10
        ),
        "classifier",
    ),
    "tv-mobilenetv3": (
        lambda: tvm.mobilenet_v3_small(num_classes=10, width_mult=0.25),
        "classifier.3",
    ),
    "tv-densenet": (
        lambda: tvm.DenseNet(
            growth_rate=8, block_config=(1, 1), num_init_features=16, bn_size=2, num_classes=10
        ),
        "classifier",
    ),
    "tv-vgg-bn": (_vgg, "classifier.6"),
    "tv-regnet": (
        lambda: RegNet(
            BlockParams.from_init_params(depth=2, w_0=8, w_a=8.0, w_m=2.0, group_width=8),
            num_classes=10,
            stem_width=8,
        ),
        "fc",
    ),
}

#: models the head factorization cannot score: (builder, the error's reason)
UNSCORABLE: dict[str, tuple[Callable[[], nn.Module], str]] = {
    # two heads (class token and distillation token) averaged in evaluation mode
    "timm-deit-distilled": (
        lambda: VisionTransformerDistilled(
            img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=10
        ),
        r"not the output of its head 'head_dist'.*Layers with 10 outputs: head, head_dist; "
        r"if the logits combine several of them \(e\.g\. two averaged heads",
    ),
    # a 1x1 convolution on the unpooled feature map (3 x 3 at 64 px), pooled after the head
    "tv-squeezenet": (
        lambda: tvm.SqueezeNet("1_1", num_classes=10),
        r"'classifier\.1' receives input of shape \(2, 512, 3, 3\), not pooled features",
    ),
}
#: input sizes other than 32 px (SqueezeNet's map is 1 x 1 at 32 px, as if pooled)
SIZES = {"tv-squeezenet": 64}


@functools.cache
def _model(family: str) -> nn.Module:
    """The family's model: float64, evaluation mode, non-trivial BatchNorm statistics."""
    build = {**FAMILIES, **UNSCORABLE}[family][0]
    torch.manual_seed(sum(map(ord, family)))
    model = build().double().eval()
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.running_mean is not None:
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _inputs(family: str) -> Tensor:
    generator = torch.Generator().manual_seed(len(family))
    size = SIZES.get(family, SIZE)
    return torch.randn(BATCH, 3, size, size, generator=generator, dtype=torch.float64)


def _a_few_parameters(model: nn.Module) -> list[str]:
    """The first parameter (a stem or an embedding), one in the middle, and the last."""
    names = [name for name, _ in model.named_parameters()]
    return [names[0], names[len(names) // 2], names[-1]]


def _per_sample_gradients(model, names, x, loss) -> list[list[Tensor]]:
    """Autograd, one sample at a time: the gradients of ``loss(logits)`` w.r.t. ``names``."""
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    return [list(torch.autograd.grad(loss(model(s[None])).sum(), params)) for s in x]


def _assert_relative_error(actual: Tensor, expected: Tensor) -> None:
    error = ((actual - expected).abs() / expected.abs()).max()
    assert float(error) <= RTOL, f"max relative error {float(error):.2e}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradnorm_on_the_head_is_exact(family):
    model, x = _model(family), _inputs(family)
    detector = GradNorm(model)
    assert detector.head.name == FAMILIES[family][1]
    for p, temperature in [(1.0, 1.0), (2.0, 4.0), (math.inf, 0.5)]:
        detector.set_hyperparameters(p=p, temperature=temperature)
        grads = official_gradients(model, [detector.head.module.weight], x, temperature)
        expected = torch.stack([entrywise_norm(g, p) for g in grads])
        _assert_relative_error(-detector.predict(x), expected)
        _assert_relative_error(-detector.predict_features(detector.encoder(x)), expected)


ALL = sorted(FAMILIES) + sorted(UNSCORABLE)


@pytest.mark.parametrize("family", ALL)
def test_gradnorm_on_selected_parameters_is_exact(family):
    model, x = _model(family), _inputs(family)
    names = _a_few_parameters(model)
    named = dict(model.named_parameters())
    grads = official_gradients(model, [named[n] for n in names], x, 2.0)
    scores = GradNorm(model, params=names, temperature=2.0, p=1.5).predict(x)
    _assert_relative_error(-scores, torch.stack([entrywise_norm(g, 1.5) for g in grads]))


@pytest.mark.parametrize("family", ALL)
def test_lee_alregib_features_are_exact(family):
    model, x = _model(family), _inputs(family)
    names = _a_few_parameters(model)
    features = LeeAlRegib(model, params=names).gradient_features(x)
    # Lee & AlRegib's loss: BCE of sigmoid(z) against all ones, summed over classes
    grads = _per_sample_gradients(model, names, x, lambda z: nn.functional.softplus(-z).sum(1))
    expected = torch.stack([torch.stack([g.square().sum() for g in row]) for row in grads])
    _assert_relative_error(features, expected)


@pytest.mark.parametrize("family", sorted(UNSCORABLE))
def test_heads_the_factorization_cannot_score_are_clear_errors(family):
    model, x = _model(family), _inputs(family)
    with pytest.raises(ValueError, match=UNSCORABLE[family][1]):
        GradNorm(model).predict(x)


def test_the_matrix_covers_ten_families():
    assert len(FAMILIES) >= 10
    assert all(find_head(_model(f)).name == head for f, (_, head) in FAMILIES.items())
