"""ResNet-20 for CIFAR, the paper's CIFAR model (He et al., 2016, Section 4.2).

A 3x3 convolution with 16 filters, batch normalization and ReLU; three stages of three basic
blocks (two 3x3 convolutions with batch normalization) with 16, 32 and 64 filters, the second
and third stage starting with stride 2; global average pooling; a linear head ``fc``:
6 * 3 + 2 = 20 weighted layers.

Shortcuts are He et al.'s option A: identity, and where a stage halves the resolution and
doubles the width, the input subsampled by 2 and padded with zero channels. This is the network
of the CIFAR experiments of He et al. (their Table 6: 0.27 M parameters) and of the widely used
PyTorch reimplementations of ResNet-20; option B (1x1 projection convolutions with batch
normalization) would add 2,752 parameters. The paper only says "ResNet-20", so we take the
original.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "ResNet20",
    "load_resnet20",
    "non_finite_tensors",
    "read_checkpoint",
    "resnet20",
]

#: the ``"format"`` entry of the checkpoints that ``python -m gradood.models.train`` writes
CHECKPOINT_FORMAT = "gradood.resnet20/1"

_STAGE_WIDTHS = (16, 32, 64)
_BLOCKS_PER_STAGE = 3


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with option A shortcuts."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x: Tensor) -> Tensor:
        """Identity; or every ``stride``-th pixel with zero channels added equally on both sides."""
        if self.stride == 1 and self.extra_channels == 0:
            return x
        half = self.extra_channels // 2
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, half, half))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (option A shortcuts). Input: B x 3 x 32 x 32 images normalized as
    :data:`gradood.models.CIFAR_RESNET20 <gradood.models.preprocessing.CIFAR_RESNET20>`; output: B x
    ``num_classes`` logits.

    Parameters: 269,722 for 10 classes, 275,572 for 100 (269,072 + 65 per class).
    Convolutions are initialized with He's normal initialization (fan out), batch
    normalization with weight 1 and bias 0, the head as PyTorch's ``nn.Linear``.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.conv1 = nn.Conv2d(3, _STAGE_WIDTHS[0], 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STAGE_WIDTHS[0])
        # a module, so that hooks (e.g. Mahalanobis's first feature layer) see its output
        self.relu = nn.ReLU()
        stages, in_channels = [], _STAGE_WIDTHS[0]
        for index, width in enumerate(_STAGE_WIDTHS):
            blocks = []
            for block in range(_BLOCKS_PER_STAGE):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """The penultimate features: globally pooled output of the last stage, B x 64."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def resnet20(num_classes: int = 10) -> ResNet20:
    """A freshly initialized CIFAR ResNet-20 (:class:`ResNet20`); head ``fc``."""
    return ResNet20(num_classes)


def read_checkpoint(path: str | os.PathLike) -> Mapping:
    """The content of a checkpoint written by ``gradood.models.train`` (``weights_only``).

    :raises FileNotFoundError: if there is no file at ``path``
    :raises ValueError: if it is not such a checkpoint, or its weights are not all finite
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no ResNet-20 checkpoint at '{path}'; train one with "
            "'python -m gradood.models.train --dataset cifar10 --data-root DIR --out PATH'"
        )
    problem = f"no 'format': '{CHECKPOINT_FORMAT}' entry"
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails on foreign bytes in many ways
        content, problem = None, f"torch.load(weights_only=True) fails: {error}"
    if not isinstance(content, Mapping) or content.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"'{path}' is not a checkpoint written by gradood.models.train ({problem})"
        )
    _check_finite(content.get("model"), path)
    return content


def _check_finite(state: object, path: str | os.PathLike) -> None:
    """Refuse weights that are not finite (a diverged training)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"'{path}' has no 'model' state dict")
    bad = non_finite_tensors(state)
    if bad:
        raise ValueError(
            f"'{path}' holds non-finite weights: {bad} (a diverged training); train again with "
            "a lower lr"
        )


def non_finite_tensors(state: Mapping[str, object], shown: int = 10) -> str:
    """The names of the floating tensors of ``state`` that hold a NaN or an infinity (the first
    ``shown`` of them, and how many more), or ``""`` if there are none."""
    bad = [
        name
        for name, value in state.items()
        if isinstance(value, Tensor) and value.is_floating_point() and not value.isfinite().all()
    ]
    more = f" (and {len(bad) - shown} more)" if len(bad) > shown else ""
    return ", ".join(bad[:shown]) + more


def load_resnet20(path: str | os.PathLike, allow_incomplete: bool = False) -> ResNet20:
    """The ResNet-20 of a checkpoint written by ``gradood.models.train``, in eval mode.

    Read with ``torch.load(weights_only=True)`` and loaded strictly; the number of classes
    comes from the checkpoint.

    :param allow_incomplete: accept a checkpoint whose training has not finished all epochs
    :raises FileNotFoundError: if there is no file at ``path``
    :raises ValueError: if it is not such a checkpoint, or its training is unfinished
    """
    content = read_checkpoint(path)
    if not content["complete"] and not allow_incomplete:
        raise ValueError(
            f"'{path}' holds a ResNet-20 trained {content['epoch']} of "
            f"{content['config']['epochs']} epochs; finish it with 'python -m "
            "gradood.models.train ... --resume', or pass allow_incomplete=True"
        )
    model = ResNet20(content["num_classes"])
    model.load_state_dict(content["model"], strict=True)
    return model.eval()
