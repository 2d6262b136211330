"""The bundled benchmark's classifier: the shipped weights and the recipe that made them."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest
import torch

from gradood.harness.bundled import torch_threads
from gradood.models.digits import (
    DIGITS_CNN_SHA256,
    DigitsCNN,
    load_digits_cnn,
    train_digits_cnn,
)
from gradood.protocols.digits import DigitsBenchmark, main


def _accuracy(model: torch.nn.Module, digits: DigitsBenchmark) -> float:
    (id_set,) = digits.test_sets(known=True, unknown=False)
    images, labels = id_set.tensors
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).double().mean())


@pytest.fixture(scope="module")
def digits() -> DigitsBenchmark:
    return DigitsBenchmark(seed=0)


def test_the_shipped_weights_are_the_recorded_file(digits):
    shipped = resources.files("gradood.models") / "digits_cnn.pt"
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == DIGITS_CNN_SHA256
    model = load_digits_cnn()
    assert isinstance(model, DigitsCNN) and not model.training
    assert _accuracy(model, digits) >= 0.95


def test_a_changed_weights_file_is_refused(tmp_path):
    path = tmp_path / "digits_cnn.pt"
    torch.save(DigitsCNN().state_dict(), path)
    with pytest.raises(ValueError, match=f"{path}: SHA-256 .* expected {DIGITS_CNN_SHA256}"):
        load_digits_cnn(path)
    assert isinstance(load_digits_cnn(path, sha256=None), DigitsCNN)  # an explicit opt-out


@pytest.mark.parametrize("threads", [1, 2])
def test_the_recipe_converges_with_any_thread_count(digits, threads):
    """The recipe, not bit-identity: float rounding differs between thread counts (and CPUs),
    and with a learning rate that decays to zero every run ends in the same regime."""
    images, labels = digits.train_set().tensors
    with torch_threads(threads):
        model = train_digits_cnn(images, labels, seed=0)
    with torch.no_grad():
        train_accuracy = float((model(images).argmax(1) == labels).double().mean())
    assert train_accuracy >= 0.995
    assert _accuracy(model, digits) >= 0.95


def test_a_non_finite_loss_is_an_error(digits):
    images, labels = digits.train_set().tensors
    images = images[:64].clone()
    images[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="the loss is nan at step 0"):
        train_digits_cnn(images, labels[:64], steps=20)


def test_the_command_never_overwrites(tmp_path, capsys):
    existing = tmp_path / "weights.pt"
    existing.write_bytes(b"mine")
    with pytest.raises(SystemExit):
        main(["--out", str(existing)])
    assert existing.read_bytes() == b"mine"
    assert "exists" in capsys.readouterr().err
