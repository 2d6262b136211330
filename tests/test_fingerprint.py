"""Fingerprints: equal for equal content (also in another process), different for any change."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from torch.utils.data import ConcatDataset, Subset, TensorDataset
from torchvision.datasets import ImageFolder

import gradood
from gradood.fingerprint import Fingerprint, dataset_files, keyed_by_attributes
from gradood.testing import SmallCNN, write_image_folder


def digest(obj) -> str:
    return Fingerprint().add(obj).hexdigest()


def to_rgb(image):
    return image.convert("RGB")


def transform(mean: float = 0.5, function=to_rgb) -> T.Compose:
    return T.Compose([T.Lambda(function), T.Resize((6, 6)), T.ToTensor(), T.Normalize(mean, 0.5)])


def model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(num_classes=3).eval()


def test_equal_content_gives_equal_digests():
    assert digest(model(0)) == digest(model(0))
    assert digest(transform()) == digest(transform())
    data = torch.arange(12.0).reshape(4, 3)
    assert digest(TensorDataset(data, torch.zeros(4))) == digest(
        TensorDataset(data.clone(), torch.zeros(4))
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (lambda: model(0), lambda: model(1)),
        (lambda: model(0), lambda: model(0).train()),
        (lambda: transform(0.5), lambda: transform(0.4)),
        # torchvision's Lambda has the same repr, "Lambda()", whatever its function
        (lambda: transform(function=to_rgb), lambda: transform(function=lambda im: im)),
        (lambda: T.Lambda(functools.partial(pow, 2)), lambda: T.Lambda(functools.partial(pow, 3))),
        (lambda: torch.zeros(3), lambda: torch.zeros(3, dtype=torch.float64)),
        (lambda: torch.zeros(3), lambda: torch.zeros(1, 3)),
        (lambda: np.zeros(3), lambda: np.ones(3)),
        (lambda: [1, 2], lambda: (1, 2)),
        (lambda: {"a": 1}, lambda: {"a": 1.0}),
        (lambda: "1", lambda: 1),
        # str subclasses keep their value (torch.__version__ is one)
        (
            lambda: torch.torch_version.TorchVersion("2.1"),
            lambda: torch.torch_version.TorchVersion("2.2"),
        ),
        (lambda: np.random.default_rng(0), lambda: np.random.default_rng(1)),
    ],
    ids=[
        "weights",
        "train-mode",
        "normalize",
        "lambda-function",
        "partial-args",
        "dtype",
        "shape",
        "array-content",
        "list-vs-tuple",
        "int-vs-float",
        "str-vs-int",
        "str-subclass",
        "rng-state",
    ],
)
def test_any_change_changes_the_digest(first, second):
    assert digest(first()) != digest(second())


def test_closure_values_are_part_of_a_function():
    def scaled(factor):
        return lambda x: x * factor

    assert digest(scaled(2)) == digest(scaled(2))
    assert digest(scaled(2)) != digest(scaled(3))


def test_forward_hooks_are_part_of_a_model():
    net = model()
    before = digest(net)
    handle = net.fc.register_forward_hook(lambda module, inputs, output: output * 2)
    assert digest(net) != before
    handle.remove()
    assert digest(net) == before


def test_files_of_an_image_folder_are_keyed_by_size_and_time(tmp_path):
    paths = write_image_folder(tmp_path, {"a": 2, "b": 1}, size=(5, 5))
    folder = ImageFolder(tmp_path, transform=transform())
    assert dataset_files(folder) == [str(p) for p in paths]
    before = digest(folder)
    os.utime(paths[1], ns=(0, os.stat(paths[1]).st_mtime_ns + 10**9))
    assert digest(folder) != before
    assert digest(ImageFolder(tmp_path, transform=transform())) == digest(folder)


def test_relative_file_names_resolve_against_basedir(tmp_path):
    write_image_folder(tmp_path / "base", {"x": 2})

    class Listed(torch.utils.data.Dataset):  # pytorch-ood's image datasets look like this
        def __init__(self):
            self.basedir = str(tmp_path / "base")
            self.files = ["x/0000.png", "x/0001.png"]

        def __len__(self):
            return 2

    assert dataset_files(Listed()) == [str(tmp_path / "base" / "x" / f"000{i}.png") for i in (0, 1)]


def test_wrapped_datasets_cover_their_parts():
    data = TensorDataset(torch.arange(6.0), torch.zeros(6))
    other = TensorDataset(torch.arange(6.0) + 1, torch.zeros(6))
    assert digest(Subset(data, [0, 1])) != digest(Subset(data, [0, 2]))
    assert digest(ConcatDataset([data, data])) != digest(ConcatDataset([data, other]))


def test_objects_without_a_stable_description_are_reported():
    class Holder:
        __slots__ = ("lock",)

        def __init__(self):
            self.lock = threading.Lock()

    fingerprint = Fingerprint().add(Holder(), "transform")
    assert len(fingerprint.unstable) == 1
    assert "transform.lock" in fingerprint.unstable[0]
    assert not Fingerprint().add(transform()).unstable


_CHILD = """
import sys
from torchvision.datasets import ImageFolder
from test_fingerprint import digest, model, transform
print(digest(model(0)), digest(ImageFolder(sys.argv[1], transform=transform())))
"""


def test_digests_are_the_same_in_another_process(tmp_path):
    write_image_folder(tmp_path, {"a": 2})
    folder = ImageFolder(tmp_path, transform=transform())
    paths = [str(Path(gradood.__file__).parents[1]), str(Path(__file__).parent)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert child.stdout.split() == [digest(model(0)), digest(folder)]


def test_random_transforms_are_recorded_where_they_are():
    found = Fingerprint().add(T.Compose([T.Resize(8), T.RandomApply([T.ColorJitter(0.5)])]), "t")
    assert found.random == [
        "t.transforms[1] (torchvision.transforms.transforms.RandomApply)",
        "t.transforms[1].transforms[0] (torchvision.transforms.transforms.ColorJitter)",
    ]
    assert Fingerprint().add(transform()).random == []


def test_which_datasets_are_keyed_by_their_attributes(tmp_path):
    write_image_folder(tmp_path, {"a": 2}, size=(4, 4))
    tensors = TensorDataset(torch.zeros(2, 1), torch.zeros(2))
    assert keyed_by_attributes(ImageFolder(tmp_path))
    assert keyed_by_attributes(ConcatDataset([tensors, Subset(ImageFolder(tmp_path), [1])]))
    assert not keyed_by_attributes(ConcatDataset([tensors, Subset(Opaque(), [0])]))


class Opaque(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        return torch.zeros(1), 0
