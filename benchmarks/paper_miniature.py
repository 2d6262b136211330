"""The paper's whole flow on a generated miniature, for ``benchmarks/gpu-quick.sh``: the
ImageNet protocol with photos of 375 x 500 pixels (resized to BiT's 480, as the real ones) and
the CIFAR protocols, so that a lent GPU prices the full run (``paper.md`` scales each stage's
time to the paper's image counts).

    python benchmarks/paper_miniature.py DIR [--tiny]

writes the layouts under ``DIR`` and their description to ``DIR/layouts.pkl``; then

    GRADOOD_MINIATURE=DIR/layouts.pkl pytest benchmarks/test_paper_tables.py -p paper_miniature \\
        --gradood-train --gradood-train-epochs 2 ...

opens them through the harness's hooks. The ImageNet model is BiT-S-R101x1 untrained (the
authors' checkpoint cannot be fetched there; its time is the same); the CIFAR ResNet-20s come
from the harness's default hook, which trains them. ``--tiny``: a few small images and a small
BiT-like network, for the CPU dry run.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest

#: the environment variable naming the layouts' description
VARIABLE = "GRADOOD_MINIATURE"
#: the ImageNet protocol's image size, as a typical ImageNet photo (height, width)
PHOTO_SIZE = (375, 500)


def write(root: Path, tiny: bool) -> Path:
    """Write the miniatures under ``root``; returns the description's path."""
    from gradood.testing import make_cifar_layout, make_imagenet_layout

    if tiny:
        imagenet = make_imagenet_layout(root / "imagenet", train_images_per_class=2)
        cifar = make_cifar_layout(root / "cifar")
    else:
        imagenet = make_imagenet_layout(
            root / "imagenet",
            classes=10,
            images_per_class=20,
            train_images_per_class=10,
            ood_counts={"iNaturalist": 100, "SUN": 100, "Places": 100, "Textures": 100},
            texture_classes=5,
            image_size=PHOTO_SIZE,
        )
        cifar = make_cifar_layout(
            root / "cifar",
            test_images=1000,
            train_images=5000,
            cifar10_classes=10,
            cifar100_classes=100,
            svhn=1000,
            lsun=500,
            places365_test=1000,
            places365_sample=500,
            textures=500,
            texture_classes=5,
        )
    path = root / "layouts.pkl"
    path.write_bytes(pickle.dumps({"tiny": tiny, "imagenet": imagenet, **cifar}))
    return path


def _layouts() -> dict:
    return pickle.loads(Path(os.environ[VARIABLE]).read_bytes())


@pytest.hookimpl(tryfirst=True)
def pytest_gradood_open_protocol(config, name):
    return _layouts()[name].open()


@pytest.hookimpl(tryfirst=True)
def pytest_gradood_load_model(config, protocol):
    """The ImageNet protocol's model, untrained; ``None`` for the others (the default hook
    loads or trains them)."""
    if protocol != "imagenet":
        return None
    import torch

    from gradood.models import bit_s_r101x1
    from gradood.testing import BigTransferStyleNet

    torch.manual_seed(0)
    return BigTransferStyleNet(num_classes=3) if _layouts()["tiny"] else bit_s_r101x1()


if __name__ == "__main__":
    arguments = sys.argv[1:]
    print(write(Path(arguments[0]), tiny="--tiny" in arguments))
