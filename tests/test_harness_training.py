"""``--gradood-train``: the harness trains a missing ResNet-20 on the protocol's own data (a
generated CIFAR-10 miniature here), runs Table 6 with it, and a later run reuses it; the plan,
the stage times and the reproduction report say so."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from miniature_projects import CIFAR10_HOOKS, MINIATURE_FILE, harness_options, make_cifar10_project

from gradood.harness.training import recipe
from gradood.models.resnet20 import read_checkpoint
from gradood.models.train import TrainConfig
from gradood.protocols import Expected, ExpectedData


@pytest.fixture
def project(pytester, tmp_path):
    return make_cifar10_project(pytester, tmp_path)


def _run(project, tmp_path, *args: str):
    return project.runpytest_inprocess(*harness_options(tmp_path), *args)


def test_trains_the_missing_checkpoint_then_reuses_it(project, tmp_path):
    first = _run(project, tmp_path, "--gradood-train", "--gradood-train-epochs", "1")
    text = first.stdout.str()
    # a model trained for one epoch on 20 random images is far from the paper: the rows run
    # (and fail), none is skipped for want of a model
    outcomes = first.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("passed", 0) == 20, text[-3000:]
    assert "gradood plan: 40 paper rows on the CPU" in text
    assert "model: will train resnet20-cifar10-1epochs.pt (1 epochs)" in text
    checkpoint = tmp_path / "checkpoints" / "resnet20-cifar10-1epochs.pt"
    content = read_checkpoint(checkpoint)
    assert content["complete"] and content["config"]["epochs"] == 1
    assert content["config"]["augmentation"] == "device"
    assert not (tmp_path / "checkpoints" / "resnet20-cifar10.pt").exists()
    assert "cifar10   20 of 20 rows run" in text
    assert "cifar100  20 rows (Table 6); not run; data: only the CIFAR-10 miniature" in text
    assert "stages: " in text and "cifar10 train" in text
    (folder,) = (tmp_path / "reports").iterdir()
    document = (folder / "paper.md").read_text()
    for part in ("## Environment", "## Plan", "## Stage times", "| cifar10 train |"):
        assert part in document
    assert "shortened schedule (1 epochs, not the paper's 100); " in document
    assert "trained in this run" in document
    assert "| SVHN-GradNorm |" in document or "CIFAR-10-SVHN-GradNorm" in document
    written = checkpoint.stat().st_mtime_ns

    second = _run(project, tmp_path, "--gradood-train-epochs", "1")
    text = second.stdout.str()
    outcomes = second.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("passed", 0) == 20, text[-3000:]
    assert "model: resnet20-cifar10-1epochs.pt found" in text
    assert "cifar10 train" not in text
    assert checkpoint.stat().st_mtime_ns == written
    reports = sorted((tmp_path / "reports").iterdir())
    assert "found: " in (reports[-1] / "paper.md").read_text()


def test_without_the_option_the_missing_model_says_how_to_get_it(project, tmp_path):
    result = _run(project, tmp_path)
    text = result.stdout.str()
    assert "model: resnet20-cifar10.pt missing (no --gradood-train)" in text
    result.assert_outcomes(skipped=40)
    (folder,) = (tmp_path / "reports").iterdir()
    assert "or pass --gradood-train to train it" in (folder / "missing-data.md").read_text()


def test_train_without_the_training_split_names_the_missing_files(project, tmp_path):
    miniature = pickle.loads((project.path / MINIATURE_FILE).read_bytes())
    counts = dict(miniature.expected.counts)
    counts["CIFAR-10 train"] = Expected(999, classes=3)  # 20 images there
    short = dataclasses.replace(miniature, expected=ExpectedData(counts, False))
    (project.path / MINIATURE_FILE).write_bytes(pickle.dumps(short))
    result = _run(project, tmp_path, "--gradood-train", "--gradood-train-epochs", "1")
    result.assert_outcomes(skipped=40)
    assert "cifar10   0 of 20 rows run: --gradood-train needs the ID training set" in (
        result.stdout.str()
    )
    (folder,) = (tmp_path / "reports").iterdir()
    details = (folder / "missing-data.md").read_text()
    assert "CIFAR-10 train" in details and "found 20 images, expected 999" in details
    assert not list((tmp_path / "checkpoints").iterdir())  # nothing written


@pytest.mark.parametrize(
    ("epochs", "milestones"),
    [(None, (50, 75, 90)), (100, (50, 75, 90)), (1, ()), (2, (1,)), (10, (5, 8, 9)), (4, (2, 3))],
)
def test_shortened_schedules_scale_the_papers_milestones(epochs, milestones):
    config = recipe("cifar10", epochs)
    assert config.milestones == milestones
    assert config.epochs == (epochs or 100)
    paper = TrainConfig()
    assert (config.lr, config.lr_decay, config.batch_size) == (paper.lr, paper.lr_decay, 128)


DIVERGING = """

import gradood.models.train as recipe

_RATE = recipe.learning_rate


def pytest_configure(config):
    recipe.learning_rate = lambda epoch, c: 1e8 if epoch >= 1 else _RATE(epoch, c)


def pytest_unconfigure(config):
    recipe.learning_rate = _RATE
"""


def test_a_diverging_training_is_reported_and_its_last_good_epoch_kept(project, tmp_path):
    project.makeconftest(CIFAR10_HOOKS + DIVERGING)
    result = _run(project, tmp_path, "--gradood-train", "--gradood-train-epochs", "2")
    result.assert_outcomes(skipped=40)
    assert "cifar10   0 of 20 rows run: ResNet-20 training diverged" in result.stdout.str()
    (folder,) = (tmp_path / "reports").iterdir()
    details = (folder / "missing-data.md").read_text()
    assert "diverged in epoch 2" in details and "last good epoch stays at" in details
    content = read_checkpoint(tmp_path / "checkpoints" / "resnet20-cifar10-2epochs.pt")
    assert (content["epoch"], content["complete"]) == (1, False)


FAILING = """

import gradood.models.train as recipe

_TRAIN = recipe.train


def _broken(*args, **kwargs):
    with open("train-calls", "a") as calls:
        calls.write("call\\n")
    raise RuntimeError("out of memory, say")


def pytest_configure(config):
    recipe.train = _broken


def pytest_unconfigure(config):
    recipe.train = _TRAIN
"""


def test_a_training_that_fails_otherwise_fails_every_row_and_runs_once(project, tmp_path):
    project.makeconftest(CIFAR10_HOOKS + FAILING)
    result = _run(project, tmp_path, "--gradood-train", "--gradood-train-epochs", "1")
    result.assert_outcomes(failed=20, skipped=20)
    assert result.stdout.str().count("RuntimeError: out of memory, say") >= 20
    assert (project.path / "train-calls").read_text() == "call\n"


@pytest.mark.parametrize("complete", [True, False])
def test_the_plan_reads_a_resnet20_checkpoint_once(pytester, tmp_path, monkeypatch, complete):
    """Whether it loads and whether its training finished come from one read of the file."""
    import importlib

    import torch

    from gradood.harness.plan import ProtocolPlan, _describe_model
    from gradood.protocols import protocol_class

    resnet20 = importlib.import_module("gradood.models.resnet20")  # the module, not the function
    content = {"format": resnet20.CHECKPOINT_FORMAT, "model": {"w": torch.ones(2)}}
    torch.save({**content, "complete": complete}, tmp_path / "resnet20-cifar10.pt")
    reads = []
    read = resnet20.read_checkpoint
    monkeypatch.setattr(resnet20, "read_checkpoint", lambda path: reads.append(path) or read(path))
    config = pytester.parseconfigure(f"--gradood-checkpoint-dir={tmp_path}")
    plan = ProtocolPlan("cifar10", [])
    _describe_model(config, protocol_class("cifar10"), plan)
    assert reads == [tmp_path / "resnet20-cifar10.pt"]
    expected = "found" if complete else "missing (no --gradood-train)"
    assert plan.model == f"resnet20-cifar10.pt {expected}"
