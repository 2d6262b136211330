"""The cache key: a digest of everything that determines a forward pass's result (the model,
the dataset, the settings), or the reasons why there is none (see :mod:`gradood.cache`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..distributed import Ranks
from ..fingerprint import Fingerprint, keyed_by_attributes, qualified_name

__all__ = ["FORMAT_VERSION", "CacheKey", "Reading", "cache_key", "check_same_key"]

FORMAT_VERSION = 2  # 2: a checksum of the tensors


@dataclass(frozen=True)
class CacheKey:
    digest: str
    parts: dict[str, str]
    unstable: list[str]
    summary: dict[str, Any]


@dataclass(frozen=True)
class Reading:
    """How to read every sample for the key, without the model: the DataLoader arguments of
    the extraction, and its progress bar."""

    loader_kwargs: Mapping[str, Any]
    batch_size: int
    progress: bool
    desc: str


def cache_key(
    model: nn.Module,
    dataset: Dataset,
    settings: Mapping[str, Any],
    reading: Reading,
    *,
    hash_files: bool,
) -> CacheKey:
    """The key of ``model``'s pass over ``dataset`` under ``settings`` (``head``, ``layers``,
    ``reduction``, ``bf16``, ``device``, ``collate_fn``, ``device_preprocessing``,
    ``key_extra``), with the format and torch's version."""
    model_print = Fingerprint().add(model, "model")
    data_print = Fingerprint(hash_files=hash_files).add(len(dataset)).add(dataset, "dataset")
    versions = {"format": FORMAT_VERSION, "torch": str(torch.__version__)}
    settings_print = Fingerprint().add({**versions, **settings}, "settings")
    prints = (model_print, data_print, settings_print)
    unstable = [reason for found in prints for reason in _reasons(found)]
    unstable += _differing_reads(dataset)
    by_samples = not (keyed_by_attributes(dataset) and not data_print.missing_files)
    if by_samples and not unstable:
        unstable += _add_samples(dataset, reading, data_print)
    parts = {
        "model": model_print.hexdigest(),
        "dataset": data_print.hexdigest(),
        "settings": settings_print.hexdigest(),
    }
    digest = hashlib.blake2b("|".join(parts.values()).encode(), digest_size=20).hexdigest()
    reduction = settings["reduction"]
    summary = {
        "model": qualified_name(type(model)),
        "head": settings["head"],
        "dataset": qualified_name(type(dataset)),
        "samples": len(dataset),
        "dataset_keyed_by": "every sample" if by_samples else "files or data it holds",
        "hash_files": hash_files,
        "extra_layers": dict(settings["layers"]),
        "reduction": reduction if isinstance(reduction, str) else qualified_name(reduction),
        "bf16": settings["bf16"],
        "device": settings["device"],
        "torch": versions["torch"],
    }
    return CacheKey(digest, parts, unstable, summary)


def _reasons(fingerprint: Fingerprint) -> list[str]:
    """Why a fingerprint cannot key a cache: objects without a stable description, randomness."""
    return [
        *(f"{where} has no stable description" for where in fingerprint.unstable),
        *(f"{where} is a random transform" for where in fingerprint.random),
    ]


def _differing_reads(dataset: Dataset) -> list[str]:
    """Read the first, middle and last sample twice: a random dataset gives other values."""
    size = len(dataset)
    return [
        f"dataset[{index}] of {type(dataset).__name__} differs between two reads (a random "
        "transform?)"
        for index in sorted({0, size // 2, size - 1})
        if _digest(dataset[index]).hexdigest() != _digest(dataset[index]).hexdigest()
    ]


def _digest(sample: Any, where: str = "sample") -> Fingerprint:
    return Fingerprint().add(sample, where)


def _as_list(batch: list) -> list:
    return batch


def _add_samples(dataset: Dataset, reading: Reading, fingerprint: Fingerprint) -> list[str]:
    """Feed the digest of every sample, in order, to ``fingerprint`` (one read of the data
    through the DataLoader, without the model); returns the reasons not to cache, if any."""
    kwargs = {**reading.loader_kwargs, "collate_fn": _as_list, "pin_memory": False}
    loader = DataLoader(dataset, batch_size=reading.batch_size, **kwargs)
    index = 0
    with tqdm(
        total=len(dataset), desc=f"{reading.desc}: key", unit="sample", disable=not reading.progress
    ) as bar:
        for batch in loader:
            for sample in batch:
                digest = _digest(sample, f"dataset[{index}]")
                if _reasons(digest):  # no cache: the rest need not be read
                    return _reasons(digest)
                fingerprint.add(digest.hexdigest())
                index += 1
            bar.update(len(batch))
    return []


def check_same_key(ranks: Ranks, key: CacheKey) -> None:
    every = ranks.gather(key.parts)
    for rank, parts in enumerate(every):
        differing = [name for name in parts if parts[name] != every[0][name]]
        if differing:
            raise ValueError(
                f"rank {rank} and rank 0 differ in their {' and '.join(differing)} (different "
                "weights, data or settings per process); every rank must extract the same thing"
            )
