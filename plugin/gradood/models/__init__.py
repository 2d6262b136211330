"""The models of the paper's protocols and their preprocessing."""

from .preprocessing import BIT_S_R101X1, CIFAR_RESNET20, Preprocessing

__all__ = ["BIT_S_R101X1", "CIFAR_RESNET20", "Preprocessing"]
