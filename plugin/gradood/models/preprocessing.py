"""The input preprocessing each model of the paper's protocols expects.

The same transform is applied to ID and OOD images, so a protocol takes it from its model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision.transforms as T

__all__ = ["BIT_S_R101X1", "CIFAR_RESNET20", "Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """Resize to exactly ``size`` (height, width; aspect ratio not kept), convert to RGB in
    [0, 1], normalize with ``mean`` and ``std`` (per channel, for pixel values in [0, 1])."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def transform(self) -> T.Compose:
        """The torchvision transform for PIL images."""
        return T.Compose(
            [
                T.Lambda(_to_rgb),
                T.Resize(self.size),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )


def _to_rgb(image):
    return image.convert("RGB")


#: the official code's ImageNet preprocessing for BiT-S-R101x1: 480 x 480, mean = std = 0.5
BIT_S_R101X1 = Preprocessing(size=(480, 480), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

#: CIFAR statistics as the ODIN and energy-score code bases normalize them (ODIN's input
#: perturbation is divided by these ``std``); used to train and evaluate the CIFAR ResNet-20
CIFAR_RESNET20 = Preprocessing(
    size=(32, 32),
    mean=(125.3 / 255, 123.0 / 255, 113.9 / 255),
    std=(63.0 / 255, 62.1 / 255, 66.7 / 255),
)
