"""The models of the paper's protocols and their preprocessing.

The CIFAR training recipe is ``gradood.models.train`` (``python -m gradood.models.train``).
"""

from .bit import (
    BIG_TRANSFER_STD_CONV_EPS,
    BIT_S_R101X1_URL,
    big_transfer_to_timm,
    bit_s_r101x1,
    load_big_transfer_checkpoint,
)
from .preprocessing import BIT_S_R101X1, CIFAR_RESNET20, Preprocessing
from .resnet20 import ResNet20, load_resnet20, resnet20

__all__ = [
    "BIG_TRANSFER_STD_CONV_EPS",
    "BIT_S_R101X1",
    "BIT_S_R101X1_URL",
    "CIFAR_RESNET20",
    "Preprocessing",
    "ResNet20",
    "big_transfer_to_timm",
    "bit_s_r101x1",
    "load_big_transfer_checkpoint",
    "load_resnet20",
    "resnet20",
]
