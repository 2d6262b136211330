"""The GradNorm paper, as pytorch-ood cites papers (imports nothing of gradood)."""

from __future__ import annotations

from pytorch_ood.api import Paper

__all__ = ["GRADNORM_PAPER"]

#: Huang, Geng, Li: On the Importance of Gradients for Detecting Distributional Shifts in the Wild
GRADNORM_PAPER = Paper(
    title="On the Importance of Gradients for Detecting Distributional Shifts in the Wild",
    venue="NeurIPS",
    year=2021,
    url="https://arxiv.org/abs/2110.00218",
    code="https://github.com/deeplearning-wisc/gradnorm_ood",
)
