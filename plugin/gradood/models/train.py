"""The paper's CIFAR recipe for ResNet-20 (Appendix A), as a function and a command.

The paper fixes: ResNet-20, 100 epochs, learning rate 0.1 divided by 10 at epochs 50, 75 and
90. It leaves the rest open; the defaults here are He et al.'s (2016) CIFAR recipe for the
same network: SGD with momentum 0.9 (not Nesterov), weight decay 1e-4 on all parameters
(He et al.'s value for this small network; 5e-4 is the usual choice for wide networks), batch
size 128, random 32 x 32 crops of the image zero-padded by 4 and random horizontal flips. Inputs are
normalized with :data:`gradood.models.CIFAR_RESNET20 <gradood.models.preprocessing.CIFAR_RESNET20>`,
the statistics with which the ODIN and energy-score code bases evaluate, so that ODIN's input
perturbation has the paper's scale.

Epochs count from 0: epoch ``e`` trains with ``0.1 * 0.1 ** (number of milestones <= e)``, as
PyTorch's ``MultiStepLR`` stepped once per epoch. Every epoch is seeded from ``(seed, epoch)``
(Python, NumPy and torch global generators, the shuffling generator, the DataLoader workers), so
a run is a function of its recipe: on the CPU, the same recipe (``num_workers`` included, as it
decides which worker draws which augmentation) gives the same weights bit for bit, and a resumed
run the weights of an uninterrupted one.

Run ``python -m gradood.models.train --help``.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..files import atomic_torch_save
from .cifar_data import CIFAR_SETS, DatasetError, cifar_datasets, eval_transform, train_transform
from .device_data import DeviceDataset, augment
from .preprocessing import CIFAR_RESNET20
from .resnet20 import (
    CHECKPOINT_FORMAT,
    ResNet20,
    non_finite_tensors,
    read_checkpoint,
    resnet20,
)

__all__ = [
    "DatasetError",
    "DivergenceError",
    "TrainConfig",
    "TrainResult",
    "cifar_datasets",
    "default_device",
    "eval_transform",
    "evaluate",
    "learning_rate",
    "main",
    "train",
    "train_transform",
]

_EVAL_BATCH_SIZE = 500
_AUGMENTATIONS = ("workers", "device")
#: training batches between two updates of the progress bar's loss and accuracy (each update
#: waits for the device)
_SHOWN_EVERY = 20


class DivergenceError(ValueError):
    """The training diverged: a loss or a weight is not finite."""


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe; everything that determines the trained weights (with the data)."""

    dataset: str = "cifar10"
    epochs: int = 100
    lr: float = 0.1
    milestones: tuple[int, ...] = (50, 75, 90)
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    batch_size: int = 128
    seed: int = 0
    num_workers: int = 4
    #: where the augmentation is drawn: ``"workers"`` (the dataset's own transform, in the
    #: DataLoader's workers) or ``"device"`` (:mod:`gradood.models.device_data`)
    augmentation: str = "workers"

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(self.milestones))
        milestones = list(self.milestones)
        checks = [
            (self.dataset in CIFAR_SETS, f"dataset must be one of {sorted(CIFAR_SETS)}"),
            (_is_integer(self.epochs) and self.epochs >= 1, "epochs must be an integer >= 1"),
            (_is_finite(self.lr) and self.lr > 0, "lr must be a finite number > 0"),
            (_is_finite(self.lr_decay) and 0 < self.lr_decay <= 1, "lr_decay must be in (0, 1]"),
            (
                all(_is_integer(m) and m >= 1 for m in milestones)
                and milestones == sorted(set(milestones)),
                "milestones must be increasing integer epochs >= 1",
            ),
            (_is_finite(self.momentum) and 0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (
                _is_finite(self.weight_decay) and self.weight_decay >= 0,
                "weight_decay must be a finite number >= 0",
            ),
            (not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0"),
            (
                _is_integer(self.batch_size) and self.batch_size >= 1,
                "batch_size must be an integer >= 1",
            ),
            (
                _is_integer(self.num_workers) and self.num_workers >= 0,
                "num_workers must be an integer >= 0",
            ),
            (_is_integer(self.seed), "seed must be an integer"),
            (
                self.augmentation in _AUGMENTATIONS,
                f"augmentation must be one of {_AUGMENTATIONS}",
            ),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError(f"invalid training recipe {self}: " + "; ".join(problems))

    @property
    def num_classes(self) -> int:
        return CIFAR_SETS[self.dataset][1]

    def as_dict(self) -> dict:
        """Plain values only (lists, not tuples), for the checkpoint."""
        return {**asdict(self), "milestones": list(self.milestones)}


@dataclass
class TrainResult:
    """A finished (or resumed and finished) training run."""

    model: ResNet20
    config: TrainConfig
    epochs_completed: int
    test_accuracy: float
    history: list[dict]
    checkpoint: Path | None


def learning_rate(epoch: int, config: TrainConfig) -> float:
    """The learning rate of (0-based) ``epoch``: ``lr * lr_decay ** k``, ``k`` the number of
    milestones ``<= epoch``."""
    if not 0 <= epoch < config.epochs:
        raise ValueError(f"epoch must be in [0, {config.epochs}), got {epoch}")
    return config.lr * config.lr_decay ** sum(epoch >= m for m in config.milestones)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A seed for ``epoch`` of a run seeded ``seed`` (independent streams per epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(_worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id (base_seed from the loader's
    # generator); derive Python's and NumPy's seeds from it
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device, **kw):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        worker_init_fn=_seed_worker if num_workers else None,
        pin_memory=device.type == "cuda",
        **kw,
    )


def _check_labels(labels: Tensor, num_classes: int) -> None:
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for this dataset, got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: Dataset,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    progress: bool,
) -> tuple[float, float]:
    """One epoch; returns the mean training loss and accuracy (with augmentation)."""
    seed = _epoch_seed(config.seed, epoch)
    seed_everything(seed)  # augmentation draws in the main process when num_workers == 0
    generator = torch.Generator().manual_seed(seed)
    loader = _loader(
        train_set, config.batch_size, config.num_workers, device, shuffle=True, generator=generator
    )
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(epoch, config)
    model.train()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in tqdm(
        loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress
    ):
        _check_labels(labels, config.num_classes)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        value = loss.item()
        _check_finite(epoch, {"training loss": value})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += value * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        count += len(labels)
    if count == 0:
        raise ValueError("the training set is empty")
    return loss_sum / count, correct / count


@torch.no_grad()
def evaluate(
    model: nn.Module,
    test_set: Dataset | DeviceDataset,
    device: torch.device,
    num_workers: int = 0,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``test_set``; sums on the
    device, one synchronization at the end."""
    model.eval()
    device = torch.device(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    if isinstance(test_set, DeviceDataset):
        n = len(test_set)
        batches = (
            (test_set.images[s : s + _EVAL_BATCH_SIZE], test_set.labels[s : s + _EVAL_BATCH_SIZE])
            for s in range(0, n, _EVAL_BATCH_SIZE)
        )
    else:
        batches = _loader(test_set, _EVAL_BATCH_SIZE, num_workers, device)
    for images, labels in batches:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        count += len(labels)
    if count == 0:
        raise ValueError("the test set is empty")
    return float(loss_sum) / count, int(correct) / count


def _train_epoch_on_device(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DeviceDataset,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    progress: bool,
) -> tuple[float, float]:
    """One epoch on a dataset held on ``device``, augmented there (:func:`augment`): the
    order and the augmentation are drawn from a generator on the device seeded from
    ``(seed, epoch)``; the loss and accuracy are summed on the device and read every
    :data:`_SHOWN_EVERY` batches (for the bar) and at the end. A non-finite loss shows there."""
    generator = torch.Generator(device=device).manual_seed(_epoch_seed(config.seed, epoch))
    n = len(data)
    order = torch.randperm(n, generator=generator, device=device)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(epoch, config)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    starts = range(0, n, config.batch_size)
    bar = tqdm(starts, desc=f"epoch {epoch + 1}", leave=False, disable=not progress)
    for batch, start in enumerate(bar):
        chosen = order[start : start + config.batch_size]
        images = augment(data.images[chosen], data.fill, generator)
        labels = data.labels[chosen]
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(chosen)
        correct += (logits.argmax(1) == labels).sum()
        if progress and (batch + 1) % _SHOWN_EVERY == 0:
            seen = min(n, start + config.batch_size)
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.2%}")
    return float(loss_sum) / n, int(correct) / n


def _check_finite(epoch: int, losses: dict[str, float], model: nn.Module | None = None) -> None:
    """Raise :class:`DivergenceError` if a loss or a weight of ``model`` is not finite."""
    bad = [f"{name} {value}" for name, value in losses.items() if not math.isfinite(value)]
    if model is not None and (tensors := non_finite_tensors(model.state_dict())):
        bad.append(tensors)
    if bad:
        raise DivergenceError(
            f"the training diverged in epoch {epoch + 1}: not finite: {', '.join(bad)}; lower "
            "lr. The last checkpoint written, if any, is kept"
        )


def _checkpoint(model, optimizer, config, history, device) -> dict:
    epoch = len(history)
    return {
        "format": CHECKPOINT_FORMAT,
        "architecture": "resnet20 (option A shortcuts)",
        "num_classes": config.num_classes,
        "config": config.as_dict(),
        "epoch": epoch,
        "complete": epoch == config.epochs,
        "test_accuracy": history[-1]["test_accuracy"],
        "history": history,
        "normalization": {"mean": list(CIFAR_RESNET20.mean), "std": list(CIFAR_RESNET20.std)},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "device": str(device),
        "torch": str(torch.__version__),
    }


def _config_from(saved: dict, path: Path) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    saved = {"augmentation": "workers", **saved}  # recorded since the device path exists
    if set(saved) != names:
        raise ValueError(f"'{path}' records another recipe format: {sorted(saved)}")
    return TrainConfig(**saved)


def _resume_state(path: Path, config: TrainConfig) -> dict:
    content = read_checkpoint(path)
    saved = _config_from(content["config"], path)
    if saved != config:
        differences = [
            f"{f.name}: {getattr(saved, f.name)!r} there, {getattr(config, f.name)!r} now"
            for f in fields(TrainConfig)
            if getattr(saved, f.name) != getattr(config, f.name)
        ]
        raise ValueError(
            f"cannot resume '{path}' with another recipe ({'; '.join(differences)}); "
            "use the same arguments, or another --out"
        )
    return content


def _check_out(out: Path | None, overwrite: bool, resume: bool) -> None:
    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other")
    if out is not None and out.is_dir():
        raise IsADirectoryError(
            f"'{out}' is a directory; --out (out) is the checkpoint file to write, e.g. "
            f"'{out / 'resnet20.pt'}'"
        )
    if out is not None and out.exists() and not (overwrite or resume):
        raise FileExistsError(
            f"'{out}' exists; pass --overwrite (overwrite=True) to replace it, --resume "
            "(resume=True) to continue its training, or choose another --out"
        )


def train(
    config: TrainConfig,
    train_set: Dataset | DeviceDataset,
    test_set: Dataset | DeviceDataset,
    out: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train a ResNet-20 with ``config`` on ``train_set`` (items ``(image tensor, label)``,
    augmented by the dataset's own transform; or, with ``augmentation="device"``, a
    :class:`~gradood.models.device_data.DeviceDataset` augmented on its device) and test it on
    ``test_set`` after every epoch.

    Seeds the global random generators (see the module docstring). With ``out``, the checkpoint
    is written atomically after every epoch: the model and optimizer states, the recipe, the
    epochs completed, the per-epoch history and the final test accuracy; read it back with
    :func:`gradood.models.load_resnet20`.

    :param device: where to train; ``None``: CUDA if available, else the CPU
    :param overwrite: replace an existing file at ``out`` (it stays until the first epoch ends)
    :param resume: continue the training recorded at ``out``, if there is a file, with the same
        recipe; a finished one is returned as it is
    :raises FileExistsError: if ``out`` exists and neither ``overwrite`` nor ``resume`` is set
    :raises IsADirectoryError: if ``out`` is a directory
    :raises DivergenceError: if a loss or a weight becomes non-finite (the training stops; the
        checkpoint of the last finite epoch stays at ``out``)
    """
    out = None if out is None else Path(out)
    _check_out(out, overwrite, resume)
    on_device = isinstance(train_set, DeviceDataset)
    if on_device != (config.augmentation == "device"):
        raise ValueError(
            f"augmentation={config.augmentation!r} needs "
            + ("a DeviceDataset" if config.augmentation == "device" else "a Dataset")
            + f" as train_set, got {type(train_set).__name__}"
        )
    device = torch.device(default_device() if device is None else device)
    seed_everything(config.seed)
    model = resnet20(config.num_classes).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    history: list[dict] = []
    if resume and out is not None and out.exists():
        state = _resume_state(out, config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)

    epochs = tqdm(
        range(len(history), config.epochs),
        initial=len(history),
        total=config.epochs,
        desc=f"ResNet-20 on {config.dataset}",
        disable=not progress,
    )
    train_epoch = _train_epoch_on_device if on_device else _train_epoch
    for epoch in epochs:
        start = time.perf_counter()
        train_loss, train_accuracy = train_epoch(
            model, optimizer, train_set, config, epoch, device, progress
        )
        test_loss, test_accuracy = evaluate(model, test_set, device, config.num_workers)
        _check_finite(epoch, {"training loss": train_loss, "test loss": test_loss}, model)
        history.append(
            {
                "epoch": epoch + 1,
                "lr": learning_rate(epoch, config),
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "test_loss": test_loss,
                "test_accuracy": test_accuracy,
                "seconds": time.perf_counter() - start,
            }
        )
        epochs.set_postfix(loss=f"{train_loss:.3f}", test_acc=f"{test_accuracy:.2%}")
        if out is not None:
            atomic_torch_save(out, _checkpoint(model, optimizer, config, history, device))
    return TrainResult(
        model=model.eval(),
        config=config,
        epochs_completed=len(history),
        test_accuracy=history[-1]["test_accuracy"],
        history=history,
        checkpoint=out,
    )


def default_device() -> str:
    """Where training runs unless told: ``"cuda"`` if available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m gradood.models.train",
        description="Train the GradNorm paper's CIFAR ResNet-20: 100 epochs, lr 0.1 divided by "
        "10 at epochs 50, 75 and 90 (Appendix A); the other settings are documented choices.",
    )
    add = parser.add_argument
    add("--dataset", choices=sorted(CIFAR_SETS), default=defaults.dataset, help="%(default)s")
    add("--data-root", required=True, help="folder with cifar-10-batches-py / cifar-100-python")
    add("--download", action="store_true", help="download the dataset into --data-root if missing")
    add("--out", required=True, help="checkpoint file to write (atomically, after every epoch)")
    add("--epochs", type=int, default=defaults.epochs, help="%(default)s")
    add("--lr", type=float, default=defaults.lr, help="initial learning rate, %(default)s")
    add(
        "--milestones",
        type=int,
        nargs="*",
        default=list(defaults.milestones),
        help="epochs (from 0) at which the learning rate is multiplied by --lr-decay, %(default)s",
    )
    add("--lr-decay", type=float, default=defaults.lr_decay, help="%(default)s")
    add("--momentum", type=float, default=defaults.momentum, help="SGD momentum, %(default)s")
    add(
        "--weight-decay",
        type=float,
        default=defaults.weight_decay,
        help="%(default)s, He et al.'s for ResNet-20 (5e-4 is common for wide networks)",
    )
    add("--nesterov", action="store_true", help="Nesterov momentum (default: off, as He et al.)")
    add("--batch-size", type=int, default=defaults.batch_size, help="%(default)s")
    add("--seed", type=int, default=defaults.seed, help="%(default)s")
    add(
        "--num-workers",
        type=int,
        default=defaults.num_workers,
        help="DataLoader workers, %(default)s; part of the recipe (they draw the augmentation)",
    )
    add("--device", default=None, help="default: cuda if available, else cpu")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    mode.add_argument(
        "--resume", action="store_true", help="continue the training in --out, if it exists"
    )
    add("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for bad arguments, files or data)."""
    args = _parser().parse_args(argv)
    try:
        config = TrainConfig(
            dataset=args.dataset,
            epochs=args.epochs,
            lr=args.lr,
            milestones=tuple(args.milestones),
            lr_decay=args.lr_decay,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            nesterov=args.nesterov,
            batch_size=args.batch_size,
            seed=args.seed,
            num_workers=args.num_workers,
        )
        _check_out(Path(args.out), args.overwrite, args.resume)
        train_set, test_set = cifar_datasets(config.dataset, args.data_root, args.download)
        result = train(
            config,
            train_set,
            test_set,
            args.out,
            device=args.device,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=args.progress,
        )
    except (ValueError, OSError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"ResNet-20 on {config.dataset}: {result.epochs_completed} epochs, test accuracy "
        f"{result.test_accuracy:.2%}; checkpoint '{result.checkpoint}'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
