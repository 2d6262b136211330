"""Training on a dataset held on the device: the augmentation against torchvision's, the
epochs against the recipe's promises (checkpoint, resume, divergence)."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import TensorDataset

from gradood.models import CIFAR_RESNET20, load_resnet20
from gradood.models.device_data import augment, black_fill, to_device_dataset
from gradood.models.train import DivergenceError, TrainConfig, train


def _reference(raw: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    """torchvision on one raw image in [0, 1]: zero padding by 4, the crop at (top, left),
    the flip, then the normalization, as ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``
    and ``Normalize`` draw it."""
    height, width = raw.shape[1:]
    crop = TF.crop(TF.pad(raw, [4], fill=0), top, left, height, width)
    crop = TF.hflip(crop) if flip else crop
    return TF.normalize(crop, CIFAR_RESNET20.mean, CIFAR_RESNET20.std)


@pytest.mark.parametrize(("seed", "size"), [(0, (32, 32)), (1, (32, 32)), (2, (9, 13))])
def test_augmentation_equals_torchvisions_crop_and_flip(seed, size):
    raw = torch.rand(16, 3, *size, generator=torch.Generator().manual_seed(seed))
    normalized = TF.normalize(raw, CIFAR_RESNET20.mean, CIFAR_RESNET20.std)
    augmented = augment(normalized, black_fill(CIFAR_RESNET20), torch.Generator().manual_seed(seed))
    # the draws, in augment's documented order: tops, lefts, flips
    draws = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, 9, (16,), generator=draws)
    lefts = torch.randint(0, 9, (16,), generator=draws)
    flips = torch.rand(16, generator=draws) < 0.5
    assert 0 < int(flips.sum()) < 16 and len(set(tops.tolist())) > 1  # the draws vary
    for i in range(16):
        expected = _reference(raw[i], int(tops[i]), int(lefts[i]), bool(flips[i]))
        # both normalize (x - mean) / std in float32, in another order of operations
        torch.testing.assert_close(augmented[i], expected, rtol=0, atol=1e-6)


def test_reads_the_dataset_in_order_and_checks_its_items():
    images = torch.rand(7, 3, 4, 4)
    data = to_device_dataset(
        TensorDataset(images, torch.arange(7)), "cpu", torch.zeros(3), num_workers=0
    )
    assert torch.equal(data.images, images) and torch.equal(data.labels, torch.arange(7))
    with pytest.raises(ValueError, match="empty"):
        to_device_dataset(TensorDataset(images[:0], torch.arange(0)), "cpu", torch.zeros(3))


def _tensor_sets(num_classes: int = 10) -> tuple[TensorDataset, TensorDataset]:
    """Normalized 32 x 32 images whose brightness encodes the class (16 train, 12 test)."""
    generator = torch.Generator().manual_seed(0)

    def images(count: int) -> TensorDataset:
        labels = torch.arange(count) % num_classes
        levels = (labels + 0.5) / num_classes
        raw = levels[:, None, None, None] + 0.1 * torch.randn(count, 3, 32, 32, generator=generator)
        normalized = TF.normalize(raw.clamp(0, 1), CIFAR_RESNET20.mean, CIFAR_RESNET20.std)
        return TensorDataset(normalized, labels)

    return images(16), images(12)


def _device_sets():
    fill = black_fill(CIFAR_RESNET20)
    return tuple(to_device_dataset(data, "cpu", fill) for data in _tensor_sets())


def _config(**changes) -> TrainConfig:
    settings = {"epochs": 2, "milestones": (1,), "batch_size": 8, "num_workers": 0}
    return TrainConfig(**{**settings, "augmentation": "device", **changes})


def test_device_epochs_write_a_checkpoint_and_resume_to_the_same_weights(tmp_path, monkeypatch):
    import gradood.models.train as recipe

    train_data, test_data = _device_sets()
    config = _config(epochs=3, milestones=(2,))
    straight = train(config, train_data, test_data)
    out = tmp_path / "resnet20.pt"
    run_epoch = recipe._train_epoch_on_device

    def interrupted(model, optimizer, data, cfg, epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt
        return run_epoch(model, optimizer, data, cfg, epoch, *args)

    monkeypatch.setattr(recipe, "_train_epoch_on_device", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, train_data, test_data, out)
    monkeypatch.undo()
    assert torch.load(out, weights_only=True)["epoch"] == 2
    train(config, train_data, test_data, out, resume=True)
    content = torch.load(out, weights_only=True)
    assert content["config"]["augmentation"] == "device" and content["complete"]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, load_resnet20(out).state_dict()[name]), name
    losses = [h["train_loss"] for h in straight.history]
    assert all(torch.isfinite(torch.tensor(losses))) and len(losses) == 3


def test_the_data_must_match_the_recipes_augmentation():
    train_data, test_data = _device_sets()
    train_set, test_set = _tensor_sets()
    with pytest.raises(ValueError, match="augmentation='device' needs a DeviceDataset"):
        train(_config(), train_set, test_set)
    with pytest.raises(ValueError, match="augmentation='workers' needs a Dataset"):
        train(_config(augmentation="workers"), train_data, test_data)


def test_a_diverging_device_run_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import gradood.models.train as recipe

    train_data, test_data = _device_sets()
    learning_rate = recipe.learning_rate
    monkeypatch.setattr(
        recipe, "learning_rate", lambda e, c: 1e8 if e >= 1 else learning_rate(e, c)
    )
    out = tmp_path / "resnet20.pt"
    with pytest.raises(DivergenceError, match="diverged in epoch 2"):
        train(_config(), train_data, test_data, out)
    content = torch.load(out, weights_only=True)
    assert (content["epoch"], content["complete"]) == (1, False)
