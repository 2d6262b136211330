"""``--gradood-train``: a protocol's ResNet-20 trained by the harness where its checkpoint is
missing, and which checkpoint each protocol used.

The paper's recipe (:class:`gradood.models.train.TrainConfig`'s defaults: 100 epochs, lr 0.1
divided by 10 at epochs 50, 75 and 90) goes to the protocol's ``checkpoint_file``;
``--gradood-train-epochs N`` selects a shortened schedule, whose milestones are the paper's
scaled by ``N / 100``, in a file named apart (``resnet20-cifar10-5epochs.pt``). The training
reads the protocol's own training and test sets (so that miniatures work too), holds them on
the run's device and augments there (:mod:`gradood.models.device_data`), writes the checkpoint
atomically after every epoch and resumes an unfinished one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from .failures import shared_failures
from .inputs import open_benchmark
from .session import details_hint, flag, option_path, run_report, uses_gpu, verbosity

__all__ = [
    "PAPER_EPOCHS",
    "checkpoint_path",
    "describe_checkpoint",
    "finished",
    "load_or_train",
    "recipe",
    "train_epochs",
]

#: the paper's schedule length (Appendix A)
PAPER_EPOCHS = 100
_PAPER_MILESTONES = (50, 75, 90)


def train_epochs(config: pytest.Config) -> int | None:
    """``--gradood-train-epochs`` (``None``: the paper's recipe)."""
    return config.getoption("gradood_train_epochs", default=None)


def wants_training(config: pytest.Config) -> bool:
    """Whether missing ResNet-20 checkpoints are trained (``--gradood-train``)."""
    return bool(config.getoption("gradood_train", default=False))


def recipe(dataset: str, epochs: int | None = None):
    """The paper's recipe for ``dataset``, augmented on the device; with ``epochs``, shortened:
    the milestones scaled by ``epochs / 100`` (rounded, those below 1 or at the end dropped)."""
    from ..models.train import TrainConfig

    if epochs is None or epochs == PAPER_EPOCHS:
        return TrainConfig(dataset=dataset, augmentation="device", num_workers=0)
    scaled = (int(m * epochs / PAPER_EPOCHS + 0.5) for m in _PAPER_MILESTONES)
    milestones = tuple(sorted({m for m in scaled if 1 <= m < epochs}))
    return TrainConfig(
        dataset=dataset,
        epochs=epochs,
        milestones=milestones,
        augmentation="device",
        num_workers=0,
    )


def checkpoint_path(config: pytest.Config, cls) -> Path:
    """Where protocol class ``cls``'s checkpoint is read (and trained to): the paper recipe's
    ``checkpoint_file``, or its shortened twin with ``--gradood-train-epochs``."""
    path = option_path(config, "checkpoint_dir") / cls.checkpoint_file
    epochs = train_epochs(config)
    if epochs in (None, PAPER_EPOCHS) or not cls.trainable:
        return path
    return path.with_name(f"{path.stem}-{epochs}epochs{path.suffix}")


def describe_checkpoint(path: Path, trained_now: bool) -> str:
    """One line: which schedule the ResNet-20 checkpoint at ``path`` was trained with (the
    paper recipe, shortened, or the user's own recipe), its test accuracy, and where it came
    from."""
    from ..models.resnet20 import read_checkpoint

    content = read_checkpoint(path)
    saved = content["config"]
    paper = (saved["epochs"], tuple(saved["milestones"]), saved["lr"]) == (
        PAPER_EPOCHS,
        _PAPER_MILESTONES,
        0.1,
    )
    shortened = recipe(saved["dataset"], saved["epochs"]).milestones == tuple(saved["milestones"])
    if paper:
        kind = "paper recipe (100 epochs)"
    elif shortened and saved["epochs"] < PAPER_EPOCHS:
        kind = f"shortened schedule ({saved['epochs']} epochs, not the paper's 100)"
    else:
        kind = f"the user's own recipe ({saved['epochs']} epochs, milestones {saved['milestones']})"
    origin = "trained in this run" if trained_now else "found"
    accuracy = content.get("test_accuracy")
    shown = f"test accuracy {accuracy:.2%}; " if accuracy is not None else ""
    return f"ResNet-20, {kind}; {shown}{origin}: {path}"


def load_or_train(config: pytest.Config, protocol: str):
    """The model of ``protocol`` (evaluation mode, on the CPU) from its checkpoint, trained
    first where it is missing or unfinished and ``--gradood-train`` is given; otherwise skips
    with what is missing, as the default hook does."""
    from ..protocols import protocol_class

    cls = protocol_class(protocol)
    path = checkpoint_path(config, cls)
    complete = path.is_file() and (not cls.trainable or _is_complete(path))
    trained_now = not complete and cls.trainable and wants_training(config)
    if trained_now:  # a failed training is raised again for every row (in one line), once run
        shared_failures(config).call(
            ("train", protocol), lambda: _train(config, protocol, cls, path)
        )
    elif not path.is_file():
        _skip_missing_model(config, protocol)
    model = cls.load_model(path)
    report = run_report(config)
    if cls.trainable:
        report.checkpoints[protocol] = describe_checkpoint(path, trained_now)
    else:
        report.checkpoints[protocol] = f"{cls.checkpoint_file}: {path}"
    return model


def _is_complete(path: Path) -> bool:
    from ..models.resnet20 import read_checkpoint

    return finished(read_checkpoint(path))


def finished(content: Mapping) -> bool:
    """Whether the ResNet-20 checkpoint ``content`` (as
    ``gradood.models.resnet20.read_checkpoint`` returns it) is of a finished training (else
    ``--gradood-train`` resumes it)."""
    return bool(content["complete"])


def record_missing_model(config: pytest.Config, protocol: str) -> str | None:
    """Why ``protocol``'s checkpoint cannot be loaded, recorded in the report with how to get it
    (or train it in the run); ``None`` where the file is there."""
    from ..protocols import protocol_class

    cls = protocol_class(protocol)
    path = checkpoint_path(config, cls)
    if path.is_file():
        return None
    reason = f"model {path.name} missing"
    how = cls.how_to_get_model(path)
    if cls.trainable:
        how += f"; or pass {flag('train', config)} to train it in the run"
    if cls.checkpoint_download is not None:
        how += f"; or run with {flag('download', config)}, which does it"
    where = f"({flag('checkpoint_dir', config)})"
    line = f"- {path} {where} is missing. How to get it: {how}."
    run_report(config).add_missing(protocol, "model", reason, line)
    return reason


def _skip_missing_model(config: pytest.Config, protocol: str) -> None:
    reason = record_missing_model(config, protocol)
    pytest.skip(f"{protocol}: {reason} ({details_hint(config)})")


def _train(config: pytest.Config, protocol: str, cls, path: Path) -> None:
    """Train ``protocol``'s ResNet-20 into ``path`` (resuming an unfinished one); skips with the
    missing files where the training split is missing, or with the epoch where it diverged."""
    from ..models.device_data import black_fill, to_device_dataset
    from ..models.train import DivergenceError, train
    from ..protocols import DatasetNotFoundError
    from .session import say
    from .stages import seconds

    benchmark = open_benchmark(config, protocol)
    report = run_report(config)
    try:
        train_split = benchmark.train_set()
    except DatasetNotFoundError as error:
        reason = f"{flag('train', config)} needs the ID training set"
        report.add_missing(protocol, "training set", reason, f"- {error}")
        pytest.skip(f"{protocol}: {reason} ({details_hint(config)})")
    device = "cuda" if uses_gpu(config) else "cpu"
    settings = recipe(protocol, train_epochs(config))
    fill = black_fill(cls.preprocessing)
    say(config, f"gradood: training {protocol}'s ResNet-20 ({settings.epochs} epochs) -> {path}")
    with report.stages.timed(f"{protocol} train"), _uncaptured(config):
        train_data = to_device_dataset(train_split, device, fill)
        test_data = to_device_dataset(benchmark.test_in, device, fill)
        try:
            progress = verbosity(config) >= 0
            result = train(
                settings, train_data, test_data, path, device=device, resume=True, progress=progress
            )
        except DivergenceError as error:
            reason = "ResNet-20 training diverged"
            kept = f"the checkpoint of the last good epoch stays at {path}" if path.exists() else ""
            report.add_missing(protocol, "model", reason, f"- {error}. {kept}".rstrip())
            pytest.skip(f"{protocol}: {reason} ({details_hint(config)})")
    took = report.stages.by_name[f"{protocol} train"].actual
    say(
        config,
        f"gradood: {protocol}'s ResNet-20: test accuracy {result.test_accuracy:.2%} after "
        f"{result.epochs_completed} epochs, {seconds(took)}",
    )


def _uncaptured(config: pytest.Config):
    """pytest's output capture off, so that the progress bars show while the model trains."""
    from contextlib import nullcontext

    capture = config.pluginmanager.get_plugin("capturemanager")
    return nullcontext() if capture is None else capture.global_and_fixture_disabled()
