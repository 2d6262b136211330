"""The processes of a multi-process run (``torchrun``), as extraction and scoring share work.

A run is distributed when ``torch.distributed`` is initialized, or when the environment
variables ``RANK`` and ``WORLD_SIZE`` (> 1) that ``torchrun`` sets are present; the process
group is then initialized from the environment (``env://``) with the ``nccl`` backend for a
CUDA device and ``gloo`` otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Ranks", "current_ranks", "resolve_device"]


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` among ``world_size`` processes (rank 0 is the main one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (on every rank)."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _environment_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(
            f"the environment variable WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer"
        ) from None


def current_ranks(device: torch.device) -> Ranks:
    """The ranks of this run; initializes the process group from ``torchrun``'s environment."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not (dist.is_available() and dist.is_initialized()):
        if _environment_world_size() <= 1 or "RANK" not in os.environ:
            return Ranks()
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1, but this torch build has no torch.distributed")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)


def resolve_device(
    device: str | torch.device | None, model: torch.nn.Module | None = None
) -> torch.device:
    """``device``, or the model's device (CPU without a model) if ``None``; ``"cuda"`` without
    an index means ``cuda:LOCAL_RANK`` (made the current CUDA device) in a ``torchrun`` run."""
    if device is None:
        parameter = None if model is None else next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        # NCCL's object collectives run on the current CUDA device
        torch.cuda.set_device(device)
    return device
