"""GAIA-A and GAIA-Z against the official functions (``cal_grad_value``, ``cal_zero``), written
here the official way: one sample at a time, a forward hook on each inspected module that puts
a tensor hook on its output (the gradient seen is of the value the module returned, also when an
in-place ReLU changes that tensor later), ``backward()`` of the official losses, the pooled
"before-head" feature taken from the head's input.

Models: torchvision's ResNet-18 and ResNet-34 (the official layer choices name ``layer3`` and
``layer4``, which they share with the official CIFAR ResNets; torchvision's in-place ReLU and
``+=`` on BatchNorm outputs are the hard case for the capture), and BiT: the reference runs on a
module in the official big_transfer layout (``nn.GroupNorm`` then ``ReLU(inplace=True)``,
``before_head`` = GroupNorm, ReLU, pooling), the detector on gradood's BiT (timm's ResNetV2,
where a GroupNorm and its ReLU are one module) loaded with the same weights.

Tolerance in float64: both sides compute the same sums in another order and another batch
layout (batched kernels); each rounding is <= 2^-53 relative, sums have at most ~1e5 terms and
the paths ~100 operations, so 1e-9 relative bounds a pure rounding difference with margin, and
any real difference (a missing layer, a mask, a factor) is far above it.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_ood.metrics import OODMetrics
from test_models_bit import SMALL_UNITS, random_big_transfer_state, truncated
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import gradood
from gradood import GAIA
from gradood.capture import layer_outputs
from gradood.models import big_transfer_to_timm, bit_s_r101x1
from gradood.testing import SmallCNN

RTOL64 = 1e-9

# -- the official way, per sample -------------------------------------------------------------


class OfficialGradHook:
    """A forward hook that puts a tensor hook on the module's output and keeps its gradient
    (the official ``Grad_all_hook``)."""

    def __init__(self, module: nn.Module):
        self.data: Tensor | None = None
        self.handle = module.register_forward_hook(self._forward)

    def _forward(self, _module, _inputs, output: Tensor) -> None:
        output.register_hook(self._store)

    def _store(self, grad: Tensor) -> None:
        self.data = grad.detach()


class HeadInputHook:
    """The head's input, kept as the official models keep ``before_head_data``, with its
    gradient: the output layer where the official model's before-head module is the pooling."""

    def __init__(self, head: nn.Module):
        self.data: Tensor | None = None
        self.feature: Tensor | None = None
        self.handle = head.register_forward_hook(self._forward)

    def _forward(self, _module, inputs, _output) -> None:
        self.feature = inputs[0]
        inputs[0].register_hook(self._store)

    def _store(self, grad: Tensor) -> None:
        self.data = grad.detach()


def _spatial_mean(grad: Tensor) -> Tensor:
    """The official ``mean(dim=(-1, -2))`` of a 1 x K x H x W map; a flat 1 x K head input is
    the 1 x 1 map the official before-head module returns."""
    return grad.mean(dim=(-1, -2)) if grad.ndim == 4 else grad


def official_scores(
    model: nn.Module, x: Tensor, variant: str, inner: list[nn.Module], output: nn.Module | None
) -> Tensor:
    """``cal_grad_value`` (A) or ``cal_zero`` (Z) of each sample, batch of one; ``output``:
    the last hooked module (``None``: the head's input, the pooled before-head feature)."""
    head = gradood.heads.find_head(model).module
    scores = []
    for sample in x:
        hooks = [OfficialGradHook(module) for module in inner]
        feature_hook = HeadInputHook(head)
        hooks.append(OfficialGradHook(output) if output is not None else feature_hook)
        try:
            model.zero_grad()
            y = model(sample[None])
            if variant == "Z":
                y.max(dim=1).values.sum().backward()
                ones = [torch.where(h.data != 0, torch.ones_like(h.data), 0) for h in hooks]
                fractions = torch.cat([_spatial_mean(o) for o in ones], dim=1)
                scores.append(fractions.pow(2).mean(dim=1))
            else:
                torch.log_softmax(y, dim=-1).sum().backward(retain_graph=True)
                before_head_grad = _spatial_mean(hooks[-1].data)
                output_component = before_head_grad.abs().mean(dim=1).sqrt()[:, None]
                feature_hook.feature.sum().backward()
                inner_grads = [_spatial_mean(h.data).abs() for h in hooks[:-1]]
                ratio = torch.cat(inner_grads, dim=1) / output_component
                scores.append(ratio.pow(2).mean(dim=1))
        finally:
            for hook in {*hooks, feature_hook}:
                hook.handle.remove()
    return torch.cat(scores).detach().double()


def _largest_relative_difference(actual: Tensor, expected: Tensor) -> float:
    assert actual.shape == expected.shape and bool(torch.isfinite(expected).all())
    return float(((actual - expected).abs() / expected.abs()).max())


# -- models -----------------------------------------------------------------------------------


def _randomize_batch_norms(model: nn.Module, seed: int) -> nn.Module:
    """Running statistics that are not the identity, so that every BatchNorm matters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.running_mean.shape
            module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
            module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(size, generator=generator))
            module.bias.data.copy_(0.2 * torch.randn(size, generator=generator))
    return model.eval()


def resnet(depth: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    build = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}[depth]
    return _randomize_batch_norms(build(num_classes=10), seed).double()


def _official_resnet_layers(model: nn.Module, choice: str) -> tuple[list[nn.Module], nn.Module]:
    """``hook.py``'s modules for ``resnet18/34/50``: ``before_head`` (the BatchNorm2d of
    ``layer3`` and ``layer4``, then ``layer4``) or ``bn`` (every BatchNorm2d)."""
    if choice == "bn":
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        return norms[:-1], norms[-1]
    norms = [m for part in (model.layer3, model.layer4) for m in part.modules()]
    return [m for m in norms if isinstance(m, nn.BatchNorm2d)], model.layer4


def _images(count: int, size: int, seed: int, dtype=torch.float64) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, size, size, generator=generator, dtype=dtype)


class StdConv(nn.Conv2d):
    """big_transfer's weight-standardized convolution (biased variance, epsilon 1e-10)."""

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + 1e-10)
        return F.conv2d(x, weight, None, self.stride, self.padding)


class OfficialUnit(nn.Module):
    """big_transfer's pre-activation bottleneck: one ``ReLU(inplace=True)`` after each
    GroupNorm, the stride on the 3x3 convolution, a projection on the first unit."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int, project: bool):
        super().__init__()
        self.gn1 = nn.GroupNorm(32, cin)
        self.conv1 = StdConv(cin, cmid, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid)
        self.conv2 = StdConv(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(32, cmid)
        self.conv3 = StdConv(cmid, cout, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        if project:
            self.downsample = StdConv(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.gn1(x))
        residual = self.downsample(out) if hasattr(self, "downsample") else x
        out = self.conv2(self.relu(self.gn2(self.conv1(out))))
        return self.conv3(self.relu(self.gn3(out))) + residual


class OfficialBiT(nn.Module):
    """big_transfer's ResNetV2 (width 1) in the GAIA code's module layout, ``units`` per
    stage."""

    def __init__(self, units: tuple[int, ...], num_classes: int):
        super().__init__()
        self.root = nn.Sequential(
            OrderedDict(
                conv=StdConv(3, 64, 7, stride=2, padding=3, bias=False),
                pad=nn.ConstantPad2d(1, 0),
                pool=nn.MaxPool2d(3, stride=2),
            )
        )
        blocks, cin = OrderedDict(), 64
        for block, count in enumerate(units, start=1):
            mid = 64 * 2 ** (block - 1)
            stride = 1 if block == 1 else 2
            unit_list = [
                (
                    f"unit{u:02d}",
                    OfficialUnit(
                        cin if u == 1 else 4 * mid, 4 * mid, mid, stride if u == 1 else 1, u == 1
                    ),
                )
                for u in range(1, count + 1)
            ]
            blocks[f"block{block}"] = nn.Sequential(OrderedDict(unit_list))
            cin = 4 * mid
        self.body = nn.Sequential(blocks)
        self.before_head = nn.Sequential(
            OrderedDict(
                gn=nn.GroupNorm(32, cin), relu=nn.ReLU(inplace=True), avg=nn.AdaptiveAvgPool2d(1)
            )
        )
        self.head = nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, num_classes, 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.before_head(self.body(self.root(x))))[..., 0, 0]


@pytest.fixture(scope="module")
def bit_pair() -> tuple[nn.Module, nn.Module]:
    """The official-layout BiT and gradood's (timm) BiT, the same random float64 weights."""
    state = random_big_transfer_state(SMALL_UNITS, num_classes=10, seed=5)
    official = OfficialBiT(SMALL_UNITS, 10)
    official.load_state_dict(state, strict=True)
    ours = truncated(bit_s_r101x1(num_classes=10), SMALL_UNITS)
    ours.load_state_dict(big_transfer_to_timm(state), strict=True)
    return official.double().eval(), ours.double().eval()


def _official_bit_layers(model: OfficialBiT, choice: str, variant: str):
    """``hook.py``'s modules for BiT: block4's GroupNorms, then ``before_head`` (or, for
    ``cal_zero`` on Textures, ``before_head.gn``); ``bn``: block4's GroupNorms only."""
    norms = [m for m in model.body.block4.modules() if isinstance(m, nn.GroupNorm)]
    if choice == "bn":
        return norms[:-1], norms[-1]
    textures = choice == "textures" and variant == "Z"
    return norms, model.before_head.gn if textures else model.before_head


# -- float64: the detector is the official function -------------------------------------------


@pytest.mark.parametrize("variant", ["A", "Z"])
@pytest.mark.parametrize(
    ("depth", "choice"), [(18, "before_head"), (18, "bn"), (34, "before_head")]
)
def test_resnets_score_as_the_official_code(depth, choice, variant):
    model = resnet(depth, seed=depth)
    x = _images(3, 64, seed=depth)
    inner, output = _official_resnet_layers(model, choice)
    expected = official_scores(model, x, variant, inner, output)
    actual = GAIA(model, variant, layers=choice).predict(x)
    assert _largest_relative_difference(actual, expected) <= RTOL64


@pytest.mark.parametrize("variant", ["A", "Z"])
def test_the_general_rule_is_every_norm_and_the_head_input(variant):
    model = resnet(18, seed=1)
    x = _images(3, 48, seed=2)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    expected = official_scores(model, x, variant, norms, None)
    actual = GAIA(model, variant).predict(x)
    assert _largest_relative_difference(actual, expected) <= RTOL64


@pytest.mark.parametrize(
    ("choice", "variant"),  # the official Textures exception is GAIA-Z's only
    [("before_head", "A"), ("before_head", "Z"), ("bn", "A"), ("bn", "Z"), ("textures", "Z")],
)
def test_gradood_s_bit_scores_as_the_official_code_on_the_official_model(bit_pair, choice, variant):
    official, ours = bit_pair
    x = _images(2, 64, seed=7)
    inner, output = _official_bit_layers(official, choice, variant)
    expected = official_scores(official, x, variant, inner, output)
    assert (
        _largest_relative_difference(GAIA(ours, variant, layers=choice).predict(x), expected)
        <= RTOL64
    )
    # the detector on the official layout itself, too
    own = GAIA(official, variant, layers=choice).predict(x)
    assert _largest_relative_difference(own, expected) <= RTOL64


def test_the_textures_choice_inspects_another_layer(bit_pair):
    """The check above can fail: the Textures layers give other GAIA-Z scores."""
    _official, ours = bit_pair
    x = _images(2, 64, seed=7)
    uniform = GAIA(ours, "Z", layers="before_head").predict(x)
    textures = GAIA(ours, "Z", layers="textures").predict(x)
    assert _largest_relative_difference(textures, uniform) > 1e-3


def test_without_the_copy_an_in_place_relu_changes_the_gradient():
    """What ``copy_output`` is for: the gradient with respect to a recorded output that an
    in-place ReLU overwrote is the post-ReLU one (unmasked), not the official one."""
    model = nn.Sequential(nn.BatchNorm1d(6), nn.ReLU(inplace=True), nn.Linear(6, 2)).eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    gradients = {}
    for copy in (False, True):
        with layer_outputs(model, {"bn": "0"}, copy_output=copy) as outputs:
            logits = model(x)
        (gradients[copy],) = torch.autograd.grad(logits.sum(), outputs["bn"])
    masked = model[2].weight.sum(0).expand(5, 6) * (model[0](x) > 0)
    torch.testing.assert_close(gradients[True], masked.detach())
    assert not torch.equal(gradients[False], gradients[True])


# -- float32: one batch scores as single samples ----------------------------------------------


def _relu_margin(model: nn.Module, x: Tensor) -> Tensor:
    """Per sample, the smallest |input| of a ReLU relative to that input's largest, in float64:
    a float32 rounding (~1e-7 relative) cannot flip a ReLU's mask where it is >= 1e-4."""
    margins = []

    def record(_module, inputs, _output):
        values = inputs[0].flatten(1).abs()
        margins.append(values.amin(1) / values.amax(1))

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model.double()(x.double())
    for handle in handles:
        handle.remove()
    model.float()
    return torch.stack(margins).amin(0)


@pytest.mark.parametrize("variant", ["A", "Z"])
def test_float32_batch_scores_as_single_samples(variant):
    """Samples whose ReLU masks no float32 rounding can flip (:func:`_relu_margin`, decided in
    float64): then GAIA-Z's counts are identical and GAIA-A differs by rounding only (~1e-6
    relative through two convolutions and two backward passes; 1e-4 leaves margin)."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=5, width=4).eval()
    x = _images(64, 8, seed=3, dtype=torch.float32)
    x = x[_relu_margin(model, x) >= 1e-4][:16]
    assert len(x) == 16
    detector = GAIA(model, variant, micro_batch_size=16)
    batched = detector.predict(x)
    single = torch.cat([detector.predict(sample[None]) for sample in x])
    rtol = 1e-4 if variant == "A" else 1e-12
    torch.testing.assert_close(batched, single, rtol=rtol, atol=0.0)


# -- the registry and pytorch-ood's loops -----------------------------------------------------


@pytest.mark.parametrize("name", ["gaia-a", "gaia-z"])
@pytest.mark.parametrize("architecture", ["resnet18", "smallcnn"])
def test_registered_detectors_in_pytorch_ood_s_loop_under_no_grad(name, architecture):
    torch.manual_seed(0)
    if architecture == "resnet18":
        model, size = _randomize_batch_norms(torchvision.models.resnet18(num_classes=10), 0), 32
    else:
        model, size = SmallCNN(num_classes=10, width=4).eval(), 8
    detector = gradood.create_detector(name, model)
    x = _images(12, size, seed=4, dtype=torch.float32)
    labels = torch.tensor([0] * 6 + [-1] * 6)
    metrics, scores = OODMetrics(), []
    with torch.no_grad():
        for inputs, y in DataLoader(TensorDataset(x, labels), batch_size=5):
            batch_scores = detector(inputs)
            metrics.update(batch_scores, y)
            scores.append(batch_scores)
    assert 0.0 <= metrics.compute()["AUROC"] <= 1.0
    # batches of 5 against one of 12 in float32: a convolution may sum in another order, ~1e-7
    # relative per operation, ~1e-6 through a forward and two backward passes; 1e-5 leaves
    # margin (measured over 5 seeds and 1 or 4 threads: <= 5e-9 relative, 0 for GAIA-Z)
    torch.testing.assert_close(torch.cat(scores), detector.predict(x), rtol=1e-5, atol=0.0)


def test_presets_name_the_official_imagenet_layers_and_the_textures_exception():
    model = resnet(18, seed=0)
    assert gradood.create_detector("gaia-a", model, preset="imagenet").output_layer == "layer4"
    textures = gradood.create_detector("gaia-z", bit_s_r101x1(), preset="imagenet-textures")
    assert textures.output_layer == "norm.drop" and len(textures.layers) == 9
    uniform = gradood.create_detector("gaia-z", bit_s_r101x1(), preset="imagenet")
    assert uniform.output_layer is None and uniform.layers == textures.layers
    assert uniform.layers[0] == "stages.3.blocks.0.norm1.drop"
    with pytest.raises(ValueError, match="no preset 'imagenet-textures'"):
        gradood.create_detector("gaia-a", model, preset="imagenet-textures")


# -- bad input --------------------------------------------------------------------------------


def test_bad_settings_are_named():
    model = SmallCNN(num_classes=3, width=4).eval()
    with pytest.raises(ValueError, match="variant must be 'A' or 'Z'"):
        GAIA(model, "B")
    with pytest.raises(ValueError, match="unknown GAIA layer choice 'heads'"):
        GAIA(model, layers="heads")
    with pytest.raises(ValueError, match=r"defined for ResNet-18/34/50 .* SmallCNN is neither"):
        GAIA(model, layers="before_head")
    with pytest.raises(ValueError, match=r"the layer 'features\.9' is not a module of SmallCNN"):
        GAIA(model, layers=["features.9"])
    with pytest.raises(
        ValueError, match=r"^the layer given \(Conv2d\) is not a module of SmallCNN"
    ):
        GAIA(model, layers=[nn.Conv2d(3, 3, 1)])
    with pytest.raises(ValueError, match=r"^the output layer 'fc\.9' is not a module of SmallCNN"):
        GAIA(model, output_layer="fc.9")
    with pytest.raises(ValueError, match="at least one inner layer"):
        GAIA(model, layers=[])
    with pytest.raises(ValueError, match="neither: pass layers"):
        GAIA(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))


def test_inputs_are_a_finite_batch_and_an_empty_one_scores_empty():
    detector = GAIA(SmallCNN(num_classes=3, width=4).eval())
    with pytest.raises(ValueError, match=r"GAIA takes a tensor of inputs with a batch axis"):
        detector.predict(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"GAIA takes a tensor of .*, got \[\[0\.5\]\]"):
        detector.predict([[0.5]])
    x = torch.randn(2, 3, 8, 8)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs contain 1 non-finite values"):
        detector.predict(x)
    empty = detector.predict(torch.empty(0, 3, 8, 8))
    assert empty.shape == (0,) and empty.dtype == torch.float64


def test_a_layer_that_runs_twice_or_a_training_batch_norm_is_refused():
    model = SmallCNN(num_classes=3, width=4).eval()
    twice = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Identity(), nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    twice.eval().forward = lambda x: twice[3](twice[2](twice[1](twice[1](twice[0](x)))))
    with pytest.raises(ValueError, match="'1', which must return one tensor exactly once"):
        GAIA(twice, layers=["1"]).predict(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"call model\.eval\(\)"):
        GAIA(model.train()).predict(torch.randn(2, 3, 8, 8))


def test_a_training_mode_model_without_batch_norm_or_dropout_is_warned_about_at_the_call():
    """Training mode changes more than BatchNorm and dropout (timm's stochastic depth, a
    module's own ``self.training`` branch): GAIA warns even where those checks see nothing."""
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).train()
    with pytest.warns(UserWarning, match=r"^GAIA: the model is in training mode") as caught:
        GAIA(model).predict(torch.randn(2, 3, 4, 4))
    assert [warning.filename for warning in caught] == [__file__]


class _LSTMClassifier(nn.Module):
    """Sequences B x T x 4 to 2 logits from the LSTM's last step; the LSTM returns a tuple."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        steps, _state = self.lstm(x)
        return self.fc(steps[:, -1])


def test_a_layer_that_runs_once_but_returns_a_tuple_is_named_as_such():
    detector = GAIA(_LSTMClassifier().eval(), layers=["lstm"])
    with pytest.raises(ValueError, match=r"'lstm', .* it returns a tuple of 2, not one tensor$"):
        detector.predict(torch.randn(2, 3, 4))
