"""The bundled benchmark's classifier: a small CNN for 8 x 8 digits, shipped with the package.

Two 3 x 3 convolutions (16 and 32 channels) with batch normalization and ReLU, the second with
stride 2, global average pooling and a linear head ``fc``.

The recipe (:func:`train_digits_cnn`): full-batch Adam (weight decay 5e-4) for 200 steps, the
learning rate decaying from 0.01 to 0 on a half cosine, no shuffling and no augmentation. The
decay to zero makes it converge (train accuracy 100 %, test accuracy about 98 %) whatever the
CPU or thread count; a constant rate oscillates, and which phase the last step lands in then
depends on float rounding.

The weights the bundled benchmark scores (:func:`load_digits_cnn`) were trained once by this
recipe on :class:`gradood.protocols.digits.DigitsBenchmark`'s training split (seed 0) and ship as
``digits_cnn.pt`` with their SHA-256, so every machine scores the same network. Regenerate them
with ``python -m gradood.protocols.digits --out <file>`` (it prints the new SHA-256).
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["DIGITS_CNN_SHA256", "DigitsCNN", "file_sha256", "load_digits_cnn", "train_digits_cnn"]

#: SHA-256 of the shipped ``digits_cnn.pt``
DIGITS_CNN_SHA256 = "acd0826067dd4c7b05985ec333dd360341f9167db106b15e36992a4e21696311"
_WEIGHTS = "digits_cnn.pt"


class DigitsCNN(nn.Module):
    """conv(16)-BN-ReLU, conv(32, stride 2)-BN-ReLU, global average pooling, ``fc``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


def train_digits_cnn(
    images: Tensor, labels: Tensor, *, seed: int = 0, steps: int = 200, lr: float = 0.01
) -> DigitsCNN:
    """Train :class:`DigitsCNN` on all of ``images`` (N x 1 x 8 x 8) at once; eval mode.

    Step ``s`` of ``steps`` uses the learning rate ``lr * (1 + cos(pi * s / steps)) / 2``.

    :raises ValueError: on an empty set, labels outside 0 ... 9, or a non-finite loss
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"need as many labels as images, got {len(images)} and {len(labels)}")
    if int(labels.min()) < 0 or int(labels.max()) > 9:
        raise ValueError("digit labels must lie in 0 ... 9")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN(in_channels=images.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 + math.cos(math.pi * step / steps)) / 2
    )
    model.train()
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(images), labels)
        if not torch.isfinite(loss):
            raise ValueError(
                f"the loss is {loss.item()} at step {step}: non-finite inputs, or lower lr={lr}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_digits_cnn(path: str | Path | None = None, sha256: str | None = DIGITS_CNN_SHA256):
    """The shipped :class:`DigitsCNN` (eval mode), or the weights at ``path``.

    The file is read with ``weights_only=True``; with ``sha256`` (default: the shipped file's)
    its hash must match.

    :raises ValueError: if the file's SHA-256 differs from ``sha256`` (names the file)
    """
    if path is None:
        with resources.as_file(resources.files(__package__) / _WEIGHTS) as shipped:
            return load_digits_cnn(shipped, sha256)
    path = Path(path)
    if sha256 is not None and (found := file_sha256(path)) != sha256:
        raise ValueError(
            f"{path}: SHA-256 {found}, expected {sha256}: the file is corrupt or not the "
            "shipped digits CNN"
        )
    model = DigitsCNN()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
