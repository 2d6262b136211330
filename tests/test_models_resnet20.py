"""The CIFAR ResNet-20 and the paper's training recipe, on tiny generated data."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

import gradood.models.train as recipe
from gradood.heads import find_head
from gradood.models import CIFAR_RESNET20, ResNet20, load_resnet20, resnet20
from gradood.models.resnet20 import CHECKPOINT_FORMAT
from gradood.models.train import (
    DatasetError,
    TrainConfig,
    cifar_datasets,
    eval_transform,
    learning_rate,
    train,
    train_transform,
)


class ColorImages(Dataset):
    """``size`` 32 x 32 PIL images; class ``c`` of ``num_classes`` has brightness ~ c, plus
    noise; each item generated from its index (the same on every access)."""

    def __init__(self, size: int, num_classes: int = 10, transform=None, offset: int = 0):
        self.size, self.num_classes, self.transform, self.offset = (
            size,
            num_classes,
            transform,
            offset,
        )

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        rng = np.random.default_rng(index + self.offset)
        label = index % self.num_classes
        level = 255 * (label + 0.5) / self.num_classes
        pixels = np.clip(level + 20 * rng.standard_normal((32, 32, 3)), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        return (self.transform or eval_transform())(image), label


def tiny_sets(num_classes: int = 10, train_size: int = 16):
    train_set = ColorImages(train_size, num_classes, train_transform())
    return train_set, ColorImages(12, num_classes, eval_transform(), offset=10_000)


def tiny_config(**changes) -> TrainConfig:
    settings = {"epochs": 2, "milestones": (1,), "batch_size": 8, "num_workers": 0}
    return TrainConfig(**{**settings, **changes})


# --- the network ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [10, 100])
def test_output_shapes_and_head(num_classes):
    model = resnet20(num_classes).eval()
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, num_classes)
    assert model.forward_features(x).shape == (3, 64)
    head = find_head(model)
    assert (head.name, head.in_features, head.num_classes) == ("fc", 64, num_classes)


def test_parameter_count_and_depth():
    # He et al. (2016), Table 6: ResNet-20 has 0.27 M parameters (option A shortcuts)
    assert sum(p.numel() for p in resnet20(10).parameters()) == 269_722
    assert sum(p.numel() for p in resnet20(100).parameters()) == 275_572
    weighted = [m for m in resnet20().modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(weighted) == 20  # 1 + 3 * 3 * 2 convolutions + fc; no projection shortcuts


def _bn(x: Tensor, state: dict, name: str) -> Tensor:
    return F.batch_norm(
        x,
        state[f"{name}.running_mean"],
        state[f"{name}.running_var"],
        state[f"{name}.weight"],
        state[f"{name}.bias"],
        eps=1e-5,
    )


def reference_resnet20(state: dict, x: Tensor) -> Tensor:
    """He et al.'s CIFAR ResNet-20 in eval mode, functionally: option A shortcuts subsample
    by 2 and pad the new channels with zeros, half before and half after."""
    x = F.relu(_bn(F.conv2d(x, state["conv1.weight"], padding=1), state, "bn1"))
    for stage in (1, 2, 3):
        for block in range(3):
            name = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.conv2d(x, state[f"{name}.conv1.weight"], stride=stride, padding=1)
            out = F.relu(_bn(out, state, f"{name}.bn1"))
            out = _bn(F.conv2d(out, state[f"{name}.conv2.weight"], padding=1), state, f"{name}.bn2")
            shortcut = x
            if stride == 2:
                sub = x[:, :, ::2, ::2]
                zeros = torch.zeros_like(sub[:, : sub.shape[1] // 2])
                shortcut = torch.cat([zeros, sub, zeros], dim=1)
            x = F.relu(out + shortcut)
    return F.linear(x.mean(dim=(2, 3)), state["fc.weight"], state["fc.bias"])


@pytest.mark.parametrize("seed", [0, 1])
def test_forward_matches_a_functional_reference(seed):
    torch.manual_seed(seed)
    model = resnet20(10).double().eval()
    for module in model.modules():  # non-trivial batch-norm statistics and affine parameters
        if isinstance(module, nn.BatchNorm2d):
            for tensor in (module.running_mean, module.weight, module.bias):
                tensor.data.normal_(0, 0.3)
            module.running_var.data.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        # float64, same operations in the same order: agreement to rounding
        torch.testing.assert_close(
            model(x), reference_resnet20(model.state_dict(), x), rtol=1e-12, atol=1e-12
        )


def test_option_a_shortcut():
    block = resnet20().layer2[0]
    x = torch.randn(2, 16, 8, 8)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (2, 32, 4, 4)
    assert torch.equal(shortcut[:, 8:24], x[:, :, ::2, ::2])
    assert not shortcut[:, :8].any() and not shortcut[:, 24:].any()
    identity = resnet20().layer2[1]
    y = torch.randn(2, 32, 4, 4)
    assert identity.shortcut(y) is y


def test_rejects_no_classes():
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        resnet20(0)


# --- the recipe -----------------------------------------------------------------------------


def test_learning_rate_schedule_of_the_paper():
    config = TrainConfig()
    assert (config.epochs, config.lr, config.milestones) == (100, 0.1, (50, 75, 90))
    # reference: PyTorch's MultiStepLR, stepped once per epoch
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [50, 75, 90], gamma=0.1)
    for epoch in range(100):
        assert learning_rate(epoch, config) == pytest.approx(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = {0: 0.1, 49: 0.1, 50: 0.01, 74: 0.01, 75: 1e-3, 89: 1e-3, 90: 1e-4, 99: 1e-4}
    for epoch, lr in expected.items():
        assert learning_rate(epoch, config) == pytest.approx(lr, rel=1e-12)
    for outside in (-1, 100):
        with pytest.raises(ValueError, match=r"epoch must be in \[0, 100\)"):
            learning_rate(outside, config)


def test_documented_defaults():
    config = TrainConfig()
    assert (config.momentum, config.weight_decay, config.nesterov) == (0.9, 1e-4, False)
    assert config.batch_size == 128 and config.num_classes == 10
    assert TrainConfig(dataset="cifar100").num_classes == 100


def test_invalid_recipe_names_every_problem():
    with pytest.raises(ValueError, match=r"dataset must be one of.*milestones must be increasing"):
        TrainConfig(dataset="mnist", milestones=(75, 50))
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        TrainConfig(nesterov=True, momentum=0.0)


def test_transforms_normalize_with_the_cifar_statistics():
    mean, std = torch.tensor(CIFAR_RESNET20.mean), torch.tensor(CIFAR_RESNET20.std)
    image = Image.new("RGB", (32, 32), (10, 128, 250))
    expected = (torch.tensor([10, 128, 250]) / 255 - mean) / std
    assert torch.allclose(eval_transform()(image), expected[:, None, None].expand(3, 32, 32))
    torch.manual_seed(0)
    augmented = train_transform()(image)  # crops may bring in the zero padding
    assert augmented.shape == (3, 32, 32)
    padding = (0 - mean) / std
    values = set(augmented.flatten().tolist())
    assert values <= set(expected.tolist()) | set(padding.tolist())


def test_two_epochs_write_a_checkpoint_that_loads_back(tmp_path):
    train_set, test_set = tiny_sets()
    out = tmp_path / "runs" / "resnet20.pt"
    result = train(tiny_config(), train_set, test_set, out)
    assert result.epochs_completed == 2 and result.checkpoint == out
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.01])

    content = torch.load(out, map_location="cpu", weights_only=True)
    assert content["format"] == CHECKPOINT_FORMAT
    assert content["config"] == {**tiny_config().as_dict()}
    assert content["config"]["milestones"] == [1]
    assert (content["epoch"], content["complete"], content["num_classes"]) == (2, True, 10)
    assert content["test_accuracy"] == result.test_accuracy == result.history[-1]["test_accuracy"]
    assert content["normalization"]["std"] == list(CIFAR_RESNET20.std)
    assert not list(tmp_path.glob("runs/.*"))  # no temporary file left

    loaded = load_resnet20(out)
    assert isinstance(loaded, ResNet20) and not loaded.training
    x = torch.stack([test_set[i][0] for i in range(8)])
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


def test_the_recipe_learns():
    # brightness encodes the class: separable; the paper's optimizer must fit it in 3 epochs
    train_set, test_set = tiny_sets(num_classes=2, train_size=32)
    result = train(tiny_config(epochs=3, milestones=(2,)), train_set, test_set)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.test_accuracy == 1.0


def _weights(result) -> dict[str, Tensor]:
    return result.model.state_dict()


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("num_workers", [0, 2])
def test_seeded_runs_are_identical(num_workers):
    train_set, test_set = tiny_sets()
    config = tiny_config(num_workers=num_workers)
    first = train(config, train_set, test_set)
    torch.manual_seed(1234)  # global state before the call must not matter
    np.random.seed(1234)
    second = train(config, train_set, test_set)
    _assert_same_weights(_weights(first), _weights(second))
    if num_workers == 0:  # and the seed matters
        other = train(tiny_config(seed=1), train_set, test_set)
        assert not torch.equal(_weights(first)["fc.weight"], _weights(other)["fc.weight"])


def test_resumed_training_equals_uninterrupted(tmp_path, monkeypatch):
    train_set, test_set = tiny_sets()
    config = tiny_config(epochs=3, milestones=(2,))
    straight = train(config, train_set, test_set)

    out = tmp_path / "resnet20.pt"
    run_epoch = recipe._train_epoch

    def interrupted(model, optimizer, data, cfg, epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt
        return run_epoch(model, optimizer, data, cfg, epoch, *args)

    monkeypatch.setattr(recipe, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, train_set, test_set, out)
    monkeypatch.undo()

    with pytest.raises(ValueError, match=r"trained 2 of 3 epochs.*--resume"):
        load_resnet20(out)
    assert load_resnet20(out, allow_incomplete=True) is not None
    resumed = train(config, train_set, test_set, out, resume=True)
    assert resumed.epochs_completed == 3
    assert [h["test_accuracy"] for h in resumed.history] == [
        h["test_accuracy"] for h in straight.history
    ]
    _assert_same_weights(_weights(straight), _weights(resumed))
    _assert_same_weights(_weights(straight), load_resnet20(out).state_dict())

    # a finished run resumes to itself; another recipe is refused, naming the difference
    again = train(config, train_set, test_set, out, resume=True)
    _assert_same_weights(_weights(straight), _weights(again))
    with pytest.raises(ValueError, match=r"another recipe \(weight_decay: 0.0001 there, 0.0005"):
        train(
            tiny_config(epochs=3, milestones=(2,), weight_decay=5e-4),
            train_set,
            test_set,
            out,
            resume=True,
        )


def test_never_overwrites_unless_asked(tmp_path):
    train_set, test_set = tiny_sets()
    out = tmp_path / "precious.pt"
    out.write_bytes(b"someone's results")
    with pytest.raises(FileExistsError, match=r"precious.pt' exists; pass --overwrite"):
        train(tiny_config(epochs=1), train_set, test_set, out)
    assert out.read_bytes() == b"someone's results"
    with pytest.raises(ValueError, match="exclude each other"):
        train(tiny_config(epochs=1), train_set, test_set, out, overwrite=True, resume=True)
    with pytest.raises(ValueError, match=r"not a checkpoint written by gradood\.models\.train"):
        train(tiny_config(epochs=1), train_set, test_set, out, resume=True)
    assert out.read_bytes() == b"someone's results"
    train(tiny_config(epochs=1), train_set, test_set, out, overwrite=True)
    assert load_resnet20(out).fc.out_features == 10


def test_labels_outside_the_classes_are_an_error():
    train_set, test_set = tiny_sets(num_classes=100)  # labels 0 ... 15 for a 10-class recipe
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\) .* got values in \["):
        train(tiny_config(epochs=1), train_set, test_set)


def test_missing_dataset_says_where_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        cifar_datasets("cifar10", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "found 0 of 7 files" in message and "data_batch_1" in message
    assert "--download" in message and "cifar-10-python.tar.gz" in message

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match=r"CIFAR-100 .*found 1 of 3 files \(missing: test, meta\)"
    ):
        cifar_datasets("cifar100", tmp_path)
    for name in ("test", "meta"):
        (folder / name).write_bytes(b"")
    with pytest.raises(DatasetError, match="fails torchvision's checksums"):
        cifar_datasets("cifar100", tmp_path)


def test_trains_on_cuda_when_available(monkeypatch):
    for available, expected in [(True, "cuda"), (False, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert recipe.default_device() == expected
    # the command line leaves the choice to train(device=None), which takes default_device()
    args = recipe._parser().parse_args(["--data-root", "data", "--out", "c10.pt"])
    assert args.device is None
    assert inspect.signature(recipe.train).parameters["device"].default is None


def test_command_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "c100.pt"
    argv = ["--dataset", "cifar100", "--data-root", str(tmp_path), "--out", str(out)]
    assert recipe.main([*argv, "--no-progress"]) == 2
    assert "CIFAR-100 is missing" in capsys.readouterr().err

    train_set, test_set = tiny_sets(num_classes=100)
    requested = []

    def fake_cifar(name, root, download):
        requested.append((name, root, download))
        return train_set, test_set

    monkeypatch.setattr(recipe, "cifar_datasets", fake_cifar)
    options = ["--epochs", "1", "--milestones", "1", "--batch-size", "8", "--num-workers", "0"]
    code = recipe.main([*argv, *options, "--weight-decay", "5e-4", "--nesterov", "--no-progress"])
    assert code == 0
    assert requested == [("cifar100", str(tmp_path), False)]
    assert "ResNet-20 on cifar100: 1 epochs" in capsys.readouterr().out
    recorded = torch.load(out, weights_only=True)["config"]
    assert recorded == {
        **TrainConfig().as_dict(),
        "dataset": "cifar100",
        "epochs": 1,
        "milestones": [1],
        "batch_size": 8,
        "num_workers": 0,
        "weight_decay": 5e-4,
        "nesterov": True,
    }
    assert load_resnet20(out).fc.out_features == 100

    assert recipe.main([*argv, *options, "--no-progress"]) == 2  # exists, no --overwrite
    assert "exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": math.inf}, r"lr must be a finite number > 0"),
        ({"weight_decay": math.inf}, r"weight_decay must be a finite number >= 0"),
        ({"epochs": 1.5}, r"epochs must be an integer >= 1"),
        ({"batch_size": 8.5}, r"batch_size must be an integer >= 1"),
        ({"milestones": (1.5,)}, r"milestones must be increasing integer epochs >= 1"),
    ],
    ids=["lr-inf", "weight-decay-inf", "epochs-fraction", "batch-size-fraction", "milestone"],
)
def test_a_recipe_with_infinite_or_fractional_settings_is_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def _must_not_train(*args):
    raise AssertionError("trained before the arguments were checked")


def test_an_out_that_is_a_directory_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recipe, "_train_epoch", _must_not_train)
    train_set, test_set = tiny_sets()
    with pytest.raises(IsADirectoryError, match=rf"'{tmp_path}' is a directory"):
        train(tiny_config(), train_set, test_set, tmp_path, overwrite=True)
    argv = ["--data-root", str(tmp_path), "--out", str(tmp_path), "--overwrite"]
    assert recipe.main([*argv, "--no-progress"]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train_set, test_set = tiny_sets()
    out = tmp_path / "resnet20.pt"
    train(tiny_config(epochs=1), train_set, test_set, out)
    good = out.read_bytes()
    with pytest.raises(ValueError, match=r"diverged in epoch 1.*not finite.*lower lr"):
        train(tiny_config(lr=1e8), train_set, test_set, out, overwrite=True)
    assert out.read_bytes() == good
    assert list(tmp_path.iterdir()) == [out]


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    # as the recipe wrote them before it checked: marked complete, weights NaN
    train_set, test_set = tiny_sets()
    out = tmp_path / "resnet20.pt"
    train(tiny_config(epochs=1), train_set, test_set, out)
    content = torch.load(out, weights_only=True)
    content["model"]["fc.weight"][0, 0] = math.nan
    torch.save(content, out)
    with pytest.raises(ValueError, match=rf"'{out}' holds non-finite weights: fc.weight"):
        load_resnet20(out)
    with pytest.raises(ValueError, match=r"non-finite weights: fc.weight"):
        train(tiny_config(epochs=2), train_set, test_set, out, resume=True)
