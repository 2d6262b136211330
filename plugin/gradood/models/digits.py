"""The bundled benchmark's classifier: a small CNN for 8 x 8 digits, trained in seconds.

Two 3 x 3 convolutions (16 and 32 channels) with batch normalization and ReLU, the second with
stride 2, global average pooling and a linear head ``fc``. Training is full-batch Adam
(learning rate 0.01, weight decay 5e-4) for a fixed number of steps: no shuffling and no
augmentation, so the weights are a function of the seed and the data alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DigitsCNN", "train_digits_cnn"]


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
    images: Tensor, labels: Tensor, *, seed: int = 0, steps: int = 300, lr: float = 0.01
) -> DigitsCNN:
    """Train :class:`DigitsCNN` on all of ``images`` (N x 1 x 8 x 8) at once; eval mode.

    :raises ValueError: on an empty set or labels outside 0 ... 9
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"need as many labels as images, got {len(images)} and {len(labels)}")
    if int(labels.min()) < 0 or int(labels.max()) > 9:
        raise ValueError("digit labels must lie in 0 ... 9")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN(in_channels=images.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()
