"""BiT-S-R101x1: the authors' big_transfer checkpoint in timm's ResNetV2, numerically the official
model.

The reference is written here from the official architecture (big_transfer's ``resnetv2.py``):
names and shapes of its state dict, and its forward pass as plain functional calls.
"""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gradood
from gradood.heads import find_head
from gradood.models import BIG_TRANSFER_STD_CONV_EPS, big_transfer_to_timm, bit_s_r101x1
from gradood.models.bit import load_big_transfer_checkpoint

R101_UNITS = (3, 4, 23, 3)


GN_GROUPS = 32
GN_EPS = 1e-5  # nn.GroupNorm's default, which big_transfer uses


def architecture(units: tuple[int, ...], num_classes: int) -> list[tuple[str, str, tuple]]:
    """Every parameter of BiT's ResNetV2 (width 1) as (big_transfer name, timm name, shape),
    written from the two codes' descriptions."""
    entries = [("root.conv.weight", "stem.conv.weight", (64, 3, 7, 7))]
    channels = 64
    for block, count in enumerate(units, start=1):
        mid = 64 * 2 ** (block - 1)
        out = 4 * mid
        for unit in range(1, count + 1):
            bit = f"body.block{block}.unit{unit:02d}."
            tim = f"stages.{block - 1}.blocks.{unit - 1}."
            cin = channels if unit == 1 else out
            if unit == 1:
                entries.append(
                    (bit + "downsample.weight", tim + "downsample.conv.weight", (out, cin, 1, 1))
                )
            for i, (cin_i, cout_i, kernel) in enumerate(
                [(cin, mid, 1), (mid, mid, 3), (mid, out, 1)], start=1
            ):
                entries += [
                    (f"{bit}gn{i}.weight", f"{tim}norm{i}.weight", (cin_i,)),
                    (f"{bit}gn{i}.bias", f"{tim}norm{i}.bias", (cin_i,)),
                    (
                        f"{bit}conv{i}.weight",
                        f"{tim}conv{i}.weight",
                        (cout_i, cin_i, kernel, kernel),
                    ),
                ]
        channels = out
    entries += [
        ("before_head.gn.weight", "norm.weight", (channels,)),
        ("before_head.gn.bias", "norm.bias", (channels,)),
        ("head.conv.weight", "head.fc.weight", (num_classes, channels, 1, 1)),
        ("head.conv.bias", "head.fc.bias", (num_classes,)),
    ]
    return entries


def big_transfer_shapes(units: tuple[int, ...], num_classes: int) -> dict[str, tuple[int, ...]]:
    return {bit: shape for bit, _, shape in architecture(units, num_classes)}


def random_big_transfer_state(units, num_classes, seed, conv_scale=1e-4) -> dict[str, Tensor]:
    """Random float32 weights. Kernels have variance ``conv_scale**2`` (1e-8 by default), so the
    epsilon of the weight standardization matters: 1e-10 changes them by 0.5 %, timm's 1e-8 by
    a factor 1/sqrt(2)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in big_transfer_shapes(units, num_classes).items():
        noise = torch.randn(shape, generator=generator)
        if ".gn" in name or name.startswith("before_head"):
            state[name] = 1 + 0.2 * noise if name.endswith("weight") else 0.2 * noise
        elif name.startswith("head"):
            state[name] = 0.05 * noise
        else:
            state[name] = conv_scale * noise
    return state


def _std_conv(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    var, mean = torch.var_mean(weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
    return F.conv2d(x, (weight - mean) / torch.sqrt(var + 1e-10), None, stride, padding)


def _gn_relu(x: Tensor, state: dict[str, Tensor], name: str) -> Tensor:
    return F.relu(
        F.group_norm(x, GN_GROUPS, state[f"{name}.weight"], state[f"{name}.bias"], GN_EPS)
    )


def big_transfer_logits(state: dict[str, Tensor], x: Tensor, units: tuple[int, ...]) -> Tensor:
    """The official forward pass, functionally."""
    x = _std_conv(x, state["root.conv.weight"], stride=2, padding=3)
    x = F.max_pool2d(F.pad(x, (1, 1, 1, 1), value=0.0), kernel_size=3, stride=2)
    for block, count in enumerate(units, start=1):
        for unit in range(1, count + 1):
            prefix = f"body.block{block}.unit{unit:02d}."
            stride = 2 if unit == 1 and block > 1 else 1
            preact = _gn_relu(x, state, prefix + "gn1")
            shortcut = x
            if unit == 1:
                shortcut = _std_conv(preact, state[prefix + "downsample.weight"], stride)
            out = _std_conv(preact, state[prefix + "conv1.weight"])
            out = _std_conv(
                _gn_relu(out, state, prefix + "gn2"), state[prefix + "conv2.weight"], stride, 1
            )
            out = _std_conv(_gn_relu(out, state, prefix + "gn3"), state[prefix + "conv3.weight"])
            x = out + shortcut
    pooled = _gn_relu(x, state, "before_head.gn").mean(dim=(2, 3), keepdim=True)
    return F.conv2d(pooled, state["head.conv.weight"], state["head.conv.bias"])[..., 0, 0]


def _save_like_the_authors(state: dict[str, Tensor], path) -> None:
    """The published file's layout: a dict whose 'model' is a DataParallel state dict."""
    torch.save({"step": 1, "model": {"module." + k: v for k, v in state.items()}}, path)


def _in_big_transfer_s_own_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """big_transfer's ResNetV2 keeps the final GroupNorm inside its head: ``head.gn``."""
    return {k.replace("before_head.gn.", "head.gn."): v for k, v in state.items()}


def _save_like_big_transfer(state: dict[str, Tensor], path) -> None:
    """big_transfer's train.py: step, the DataParallel model's state dict (its own names) and
    the optimizer's state."""
    model = {"module." + k: v for k, v in _in_big_transfer_s_own_layout(state).items()}
    optim = {"state": {}, "param_groups": [{"lr": 0.003, "momentum": 0.9, "params": [0, 1]}]}
    torch.save({"step": 1, "model": model, "optim": optim}, path)


SAVERS = {"authors": _save_like_the_authors, "big_transfer": _save_like_big_transfer}


SMALL_UNITS = (2, 1, 2, 1)  # first units (projection) and later ones (identity shortcut)


def truncated(model: nn.Module, units: tuple[int, ...]) -> nn.Module:
    """``model`` (a timm ResNetV2) keeping only the first ``units`` blocks of each stage."""
    for stage, count in zip(model.stages, units, strict=True):
        stage.blocks = stage.blocks[:count]
    return model


@pytest.mark.parametrize(
    ("seed", "size", "layout"), [(0, 64, "authors"), (1, 40, "authors"), (2, 40, "big_transfer")]
)
def test_computes_the_official_function(tmp_path, seed, size, layout):
    state = random_big_transfer_state(SMALL_UNITS, num_classes=1000, seed=seed)
    path = tmp_path / "small.pth.tar"
    SAVERS[layout](state, path)
    # bit_s_r101x1's own network, shortened to keep the float64 forward fast
    model = load_big_transfer_checkpoint(truncated(bit_s_r101x1(), SMALL_UNITS), path).double()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
    state64 = {k: v.double() for k, v in state.items()}
    expected = big_transfer_logits(state64, x, SMALL_UNITS)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 1000)
    # float64 throughout; both compute the same operations in a different order (timm
    # standardizes kernels with batch_norm), so they agree to ~1e-15 relative per operation;
    # 1e-10 leaves margin and is far below the epsilon effect checked below
    scale = expected.abs().max()
    assert (logits - expected).abs().max() <= 1e-10 * scale

    if seed == 0:  # the check can fail: timm's own BiT epsilon (1e-8) is another function
        with_timm_eps = truncated(timm.create_model("resnetv2_101x1_bit"), SMALL_UNITS).double()
        with_timm_eps.load_state_dict(big_transfer_to_timm(state64))
        with torch.no_grad():
            assert (with_timm_eps(x) - expected).abs().max() > 1e-3 * scale


@pytest.fixture(scope="module", params=sorted(SAVERS))
def r101_checkpoint(tmp_path_factory, request):
    """A full-size file in the authors' layout or big_transfer's own; each tensor holds one
    value, its index (an expanded scalar, so that the file stays tiny)."""
    entries = architecture(R101_UNITS, num_classes=1000)
    state = {bit: torch.tensor(float(i)).expand(shape) for i, (bit, _, shape) in enumerate(entries)}
    path = tmp_path_factory.mktemp("bit") / "BiT-S-R101x1-flat-finetune.pth.tar"
    SAVERS[request.param](state, path)
    return entries, path


def test_loads_both_layouts_of_r101_checkpoints_strictly(r101_checkpoint):
    entries, path = r101_checkpoint
    assert len(entries) == 306
    model = bit_s_r101x1(path)
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == {tim for _, tim, _ in entries}  # no buffers, nothing else
    for i, (bit, tim, shape) in enumerate(entries):
        assert loaded[tim].shape == shape, bit
        assert bool((loaded[tim] == i).all()), f"{bit} did not land in {tim}"


def test_remap_gives_exactly_timm_s_names_and_shapes():
    entries = architecture(R101_UNITS, num_classes=1000)
    state = {"module." + bit: torch.zeros(()).expand(shape) for bit, _, shape in entries}
    renamed = big_transfer_to_timm(state)
    assert renamed == {tim: state["module." + bit] for bit, tim, _ in entries}
    # the test's table agrees with timm's own model (built for real, 0.4 s: timm 0.9's ResNetV2
    # cannot be built on the meta device)
    reference = timm.create_model("resnetv2_101x1_bit", pretrained=False)
    assert {k: tuple(v.shape) for k, v in reference.state_dict().items()} == {
        tim: shape for _, tim, shape in entries
    }


def test_remap_accepts_unprefixed_names_and_passes_foreign_ones():
    value = torch.zeros(1)
    renamed = big_transfer_to_timm({"body.block2.unit04.gn2.weight": value, "extra.x": value})
    assert renamed == {"stages.1.blocks.3.norm2.weight": value, "extra.x": value}
    # two entries for one parameter: an error instead of one silently winning
    with pytest.raises(ValueError, match=r"map to the same parameter 'stem\.conv\.weight'"):
        big_transfer_to_timm({"root.conv.weight": value, "stem.conv.weight": value})
    with pytest.raises(ValueError, match=r"map to the same parameter 'norm\.bias'"):
        big_transfer_to_timm({"before_head.gn.bias": value, "head.gn.bias": value})


@pytest.fixture(scope="module")
def r101():
    return bit_s_r101x1()


def test_every_weight_standardized_convolution_uses_the_official_epsilon(r101):
    convs = {name: m for name, m in r101.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == 1 + 33 * 3 + 4 + 1
    head = convs.pop("head.fc")
    assert type(head) is nn.Conv2d and head.bias is not None  # plain conv, as big_transfer's
    assert all(m.eps == BIG_TRANSFER_STD_CONV_EPS == 1e-10 for m in convs.values())


def test_parameters_and_head(r101):
    assert len(list(r101.parameters())) == 306
    head = find_head(r101)
    assert head.name == "head.fc"
    assert (head.in_features, head.num_classes) == (2048, 1000)


def test_gradnorm_on_bit(r101):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        scores = gradood.GradNorm(r101)(x)
        pooled = r101.forward_features(x)
        logits = r101.forward_head(pooled)
        features = r101.forward_head(pooled, pre_logits=True).double()
    # the paper's value: L1 norm of the autograd gradient of the official loss w.r.t. the
    # head's weight, in float64 from the float32 features
    weight = r101.head.fc.weight.detach().double().requires_grad_()
    bias = r101.head.fc.bias.detach().double()
    for i in range(2):
        z = F.conv2d(features[i, :, None, None], weight, bias).flatten()
        (grad,) = torch.autograd.grad(-torch.log_softmax(z, dim=0).sum(), weight)
        assert torch.allclose(z.float(), logits[i], rtol=1e-5, atol=1e-6)
        # the detector's logits are float32 (error ~1e-7 relative), the score float64
        assert scores[i].item() == pytest.approx(-grad.abs().sum().item(), rel=1e-4)


def _placeholder_state(units) -> dict[str, Tensor]:
    """Zeros of the right shapes (expanded scalars: no memory)."""
    return {bit: torch.zeros(()).expand(shape) for bit, _, shape in architecture(units, 1000)}


def _write_variant(tmp_path, state) -> str:
    path = tmp_path / "variant.pth.tar"
    _save_like_the_authors(state, path)
    return path


def test_incomplete_and_extra_keys_are_listed_with_the_file(tmp_path, r101):
    state = _placeholder_state(R101_UNITS)
    del state["body.block3.unit23.gn3.bias"]
    del state["head.conv.bias"]
    state["body.block5.unit01.conv1.weight"] = torch.zeros(1)
    state["head.conv.weight"] = torch.zeros(10, 2048, 1, 1)
    path = _write_variant(tmp_path, state)
    message = (
        rf"the checkpoint '{re.escape(str(path))}' does not fit ResNetV2 \(306 tensors.*\n"
        r"  2 missing: body.block3.unit23.gn3.bias, head.conv.bias\n"
        r"  1 unexpected: body.block5.unit01.conv1.weight\n"
        r"  1 with other shapes: head.conv.weight \(10, 2048, 1, 1\) "
        r"\(model: \(1000, 2048, 1, 1\)\)$"
    )
    with pytest.raises(ValueError, match=message):
        load_big_transfer_checkpoint(r101, path)


def test_a_wrong_model_lists_a_bounded_number_of_keys(tmp_path, r101):
    path = _write_variant(tmp_path, _placeholder_state((3, 4, 6, 3)))  # BiT-S-R50x1
    with pytest.raises(ValueError, match=r"153 missing: .*\(and 133 more\)$"):
        load_big_transfer_checkpoint(r101, path)


def test_not_a_checkpoint(tmp_path, r101):
    with pytest.raises(FileNotFoundError, match=r"no BiT checkpoint at .*missing.*huangrui"):
        bit_s_r101x1(tmp_path / "missing.pth.tar")
    path = tmp_path / "list.pt"
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match=r"is not a BiT checkpoint.*got a list"):
        load_big_transfer_checkpoint(r101, path)
    torch.save({"model": {"a": 1}}, path)
    with pytest.raises(ValueError, match=r"is not a BiT checkpoint.*keys \['model'\]"):
        load_big_transfer_checkpoint(r101, path)


@pytest.mark.parametrize("keep", [0, 100, -30], ids=["empty", "truncated-head", "truncated-tail"])
def test_an_empty_or_truncated_checkpoint_is_named(tmp_path, keep):
    path = tmp_path / "bit.pth.tar"
    _save_like_the_authors({"head.conv.bias": torch.zeros(1000)}, path)
    content = path.read_bytes()
    path.write_bytes(content[:keep])
    model = nn.Linear(1, 1)  # never reached: the file fails first
    with pytest.raises(ValueError, match=rf"'{re.escape(str(path))}' cannot be read"):
        load_big_transfer_checkpoint(model, path)
