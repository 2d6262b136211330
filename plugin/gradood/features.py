"""One forward pass per (model, dataset): logits, penultimate features and chosen layer outputs,
cached on disk, resumable after an interruption, and sharded across ``torchrun`` processes.

:func:`extract_features` runs the model once over a dataset (through
:func:`gradood.heads.forward_with_features`) and returns a
:class:`~gradood.representations.Features` object, from which every logits detector
(``predict_logits``), every penultimate-features detector (``predict_features``: GradNorm at any
``p`` and ``T``, Mahalanobis, ...) and every detector of further layer outputs scores without
running the model again.

**The cache.** With ``cache_dir``, the result is stored there and served to later calls with
the same model, data and settings (see :mod:`gradood.cache`: the key, the files, the lock,
resuming after an interruption).

**Sharding.** Under ``torchrun`` (``torch.distributed`` initialized, or ``RANK`` and
``WORLD_SIZE`` set), rank ``r`` of ``W`` extracts chunks ``r, r + W, ...`` into the shared
``cache_dir`` (which must be visible to every process), rank 0 assembles them after a barrier
(rank 0 holds the lock), and every rank returns the result. The ranks check that they agree on
the key. Without a cache, the ranks exchange their chunks in memory (``all_gather_object``).
The dataset must be index-deterministic: sample ``i`` must not depend on the access order
(pytorch-ood's ``GaussianNoise`` and ``UniformNoise`` draw from one shared generator and are not).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .cache import (
    CacheError,
    CorruptCacheError,
    OnChunk,
    Reading,
    cache_key,
    cached_pass,
    check_same_key,
)
from .capture import layer_outputs
from .distributed import Ranks, current_ranks, resolve_device
from .heads import Head, check_deferred, find_head, forward_logits, forward_with_features
from .representations import Features

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "REDUCTIONS",
    "CacheError",
    "Features",
    "default_num_workers",
    "extract_features",
    "loader_arguments",
    "progress_shown",
]

#: samples per chunk: the unit of resumption and of sharding
DEFAULT_CHUNK_SIZE = 2048
#: how a captured layer output (B x C x H x W) becomes one row per sample
REDUCTIONS = ("mean", "flatten", "none")

Reduction = str | Callable[[Tensor], Tensor]
#: a batch stage run on the device: ``stage(inputs as collated, device) -> model input``
DeviceStage = Callable[[Any, torch.device], Tensor]
_LOADER_ARGUMENTS_WE_SET = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last")


@dataclass(frozen=True)
class _Plan:
    """How to run the model: everything :func:`extract_features` needs besides its inputs."""

    device: torch.device
    batch_size: int
    loader_kwargs: Mapping[str, Any]
    device_preprocessing: DeviceStage | None
    bf16: bool
    layers: Mapping[str, str]
    reduction: Reduction
    progress: bool
    desc: str


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    *,
    head: str | nn.Module | None = None,
    penultimate: bool = True,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    loader_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    device_preprocessing: DeviceStage | None = None,
    bf16: bool = False,
    extra_layers: Mapping[str, str] | None = None,
    reduction: Reduction = "mean",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    key_extra: Any = None,
    hash_files: bool = False,
    recompute: bool = False,
    on_corrupt: Callable[[CorruptCacheError], object] | None = None,
    progress: bool | None = None,
    desc: str | None = None,
) -> Features:
    """Logits, penultimate features, labels and extra layer outputs of ``model`` on ``dataset``.

    The model is called as it is, under ``torch.no_grad``: put it in evaluation mode. Dataset
    items must be pairs ``(input, label)``. See the module docstring for the cache, resuming
    and sharding.

    :param head: the model's final layer (see :func:`gradood.heads.find_head`); found if ``None``
    :param penultimate: extract the penultimate features too (the model's output must then be
        its head's output); ``False``: logits only, from any classifier, with
        ``Features.features`` of shape N x 0
    :param cache_dir: directory of the on-disk cache; ``None`` for no cache (then the ranks of
        a multi-process run exchange their chunks through ``torch.distributed``)
    :param batch_size: samples per forward pass
    :param num_workers: DataLoader worker processes; ``None``: :func:`default_num_workers`
        (as many as the usable CPUs less one, at most 16, on an accelerator; none on the CPU)
    :param loader_kwargs: further DataLoader arguments (e.g. ``prefetch_factor``); not the
        batching or sampling ones, which this function sets. Memory is pinned on CUDA
    :param device: where to run; ``None`` for the model's device. A given device receives the
        model (``model.to(device)``); ``"cuda"`` means ``cuda:LOCAL_RANK`` under ``torchrun``
    :param device_preprocessing: a batch stage run on the device before the model, e.g.
        :class:`gradood.decoding.DevicePreprocessing` (image files decoded on the GPU): called
        as ``stage(inputs, device)`` on the inputs as collated; its ``collate`` method, if it
        has one, is the DataLoader's ``collate_fn``
    :param bf16: run under ``torch.autocast`` with bfloat16 (results are stored as float32)
    :param extra_layers: ``{name: module path}`` of further layers to capture, e.g.
        ``{"block1": "body.block1"}``; stored in ``Features.extras[name]``
    :param reduction: how a captured output becomes one row per sample: ``"mean"`` (average over
        all axes after the second: spatial average pooling), ``"flatten"``, ``"none"``, or a
        function of the output tensor
    :param chunk_size: samples per chunk file (resumption and sharding unit)
    :param key_extra: any further material for the cache key
    :param hash_files: key a dataset that lists its files also by their bytes (one read of
        every file), not only by their size and modification time
    :param recompute: extract again and replace the cache entry (e.g. after a
        :class:`~gradood.cache.store.CacheError`)
    :param on_corrupt: where a file of the cache entry fails its check, call
        ``on_corrupt(error)`` (e.g. to say so), then extract again and replace the entry, in a
        single process; ``None``: raise the error
    :param progress: show a progress bar (on rank 0); ``None``: only where stderr is a terminal
        (:func:`progress_shown`)
    :param desc: label of the progress bar
    :raises ValueError: on bad arguments, an empty dataset, items that are not pairs, ranks that
        disagree on the key, or chunk files of other ranks that rank 0 cannot see
    :raises CacheError: if a cache file does not match its name or fails its checksum
    """
    layers = _check_layers(model, extra_layers)
    _check_reduction(reduction)
    _check_counts(batch_size=batch_size, chunk_size=chunk_size)
    resolved_device = resolve_device(device, model)
    if device is not None:
        model.to(resolved_device)
    found_head = _head_to_capture(model, head, penultimate)
    size = len(dataset)
    if size == 0:
        raise ValueError(f"the dataset {type(dataset).__name__} is empty: nothing to extract")
    if model.training:
        warnings.warn(
            "extract_features: the model is in training mode (dropout and batch statistics "
            "change the outputs); call model.eval()",
            stacklevel=2,
        )
    ranks = current_ranks(resolved_device)
    plan = _Plan(
        device=resolved_device,
        batch_size=batch_size,
        loader_kwargs=loader_arguments(
            num_workers, loader_kwargs, resolved_device, device_preprocessing
        ),
        device_preprocessing=device_preprocessing,
        bf16=bf16,
        layers=layers,
        reduction=reduction,
        progress=progress_shown(progress) and ranks.main,
        desc=desc or f"features of {type(dataset).__name__}",
    )
    ranges = [(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)]
    if cache_dir is None:
        return _extract(model, found_head, dataset, ranges, plan, ranks)

    key = cache_key(
        model,
        dataset,
        _key_settings(found_head, plan, key_extra),
        _reading(plan),
        hash_files=hash_files,
    )
    if any(ranks.gather(bool(key.unstable))):  # all ranks take the same path
        warnings.warn(
            "extract_features: not using the cache (the result is computed, not stored), "
            f"since {'; '.join(key.unstable) or 'rank 0 says so'}",
            stacklevel=2,
        )
        return _extract(model, found_head, dataset, ranges, plan, ranks)
    check_same_key(ranks, key)
    return cached_pass(
        cache_dir,
        key,
        ranges,
        ranks,
        lambda mine, on_chunk: _run(model, found_head, dataset, mine, plan, on_chunk),
        recompute=recompute,
        on_wait=lambda lock: _tell_waiting(plan, lock),
        on_corrupt=on_corrupt,
    )


def _key_settings(head: Head | None, plan: _Plan, key_extra: Any) -> dict[str, Any]:
    """The settings besides the model and the data that change the result."""
    return {
        "head": None if head is None else head.name,
        "layers": dict(plan.layers),
        "reduction": plan.reduction,
        "bf16": plan.bf16,
        "device": plan.device.type,
        "collate_fn": plan.loader_kwargs.get("collate_fn"),
        "device_preprocessing": plan.device_preprocessing,
        "key_extra": key_extra,
    }


def progress_shown(progress: bool | None) -> bool:
    """Whether a library call shows its progress bars: as asked, else (``None``) only where
    stderr is a terminal, so that logs, pipes and pytest's capture get none."""
    if progress is not None:
        return bool(progress)
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _reading(plan: _Plan) -> Reading:
    return Reading(plan.loader_kwargs, plan.batch_size, plan.progress, plan.desc)


def _tell_waiting(plan: _Plan, lock: Path) -> None:
    if plan.progress:
        tqdm.write(f"{plan.desc}: waiting for another process (lock {lock})", sys.stderr)


def _head_to_capture(
    model: nn.Module, head: str | nn.Module | None, penultimate: bool
) -> Head | None:
    if penultimate:
        return find_head(model, head)
    if head is not None:
        raise ValueError("head= selects the penultimate features; it needs penultimate=True")
    return None


def _check_layers(model: nn.Module, extra_layers: Mapping[str, str] | None) -> dict[str, str]:
    layers = dict(extra_layers or {})
    for name, path in layers.items():
        if not isinstance(name, str) or not isinstance(path, str):
            raise ValueError(
                f"extra_layers maps names to module paths (str), got {name!r}: {path!r}"
            )
        try:
            model.get_submodule(path)
        except AttributeError:
            known = [n for n, _ in model.named_modules() if n][:20]
            raise ValueError(
                f"extra_layers['{name}']: {type(model).__name__} has no module '{path}'; "
                f"its modules include {', '.join(known)}"
            ) from None
    return layers


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_reduction(reduction: Reduction) -> None:
    if not callable(reduction) and reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} or a function, got {reduction!r}")


def default_num_workers(device: str | torch.device) -> int:
    """DataLoader workers for reading inputs to a model on ``device``.

    On an accelerator, the usable CPUs less one (the main process drives the device), at most
    16: decoding images is then the limit, and each worker decodes in parallel. On the CPU,
    none: the model is the limit there, and workers would take cores from its threads.
    """
    if torch.device(device).type == "cpu":
        return 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(16, (usable or 1) - 1))


def loader_arguments(
    num_workers: int | None,
    loader_kwargs: Mapping[str, Any] | None,
    device: torch.device,
    device_preprocessing: DeviceStage | None = None,
) -> dict[str, Any]:
    """The DataLoader arguments besides the dataset and the batching: ``loader_kwargs`` with
    the defaults (workers, pinned memory on CUDA, the device stage's ``collate``) filled in."""
    kwargs = dict(loader_kwargs or {})
    clashing = [name for name in _LOADER_ARGUMENTS_WE_SET if name in kwargs]
    if clashing:
        raise ValueError(
            f"loader_kwargs must not set {', '.join(clashing)}: batches follow the chunks, in "
            "dataset order (use batch_size=...)"
        )
    collate = getattr(device_preprocessing, "collate", None)
    if collate is not None:
        if "collate_fn" in kwargs:
            raise ValueError("loader_kwargs must not set collate_fn: device_preprocessing does")
        kwargs["collate_fn"] = collate
    kwargs.setdefault(
        "num_workers", default_num_workers(device) if num_workers is None else num_workers
    )
    kwargs.setdefault("pin_memory", device.type == "cuda")
    return kwargs


# -- the forward passes ---------------------------------------------------------------------


def _extract(
    model: nn.Module,
    head: Head | None,
    dataset: Dataset,
    ranges: list[tuple[int, int]],
    plan: _Plan,
    ranks: Ranks,
) -> Features:
    """Without a cache: each rank runs its chunks, and every rank receives all of them."""
    mine = ranges[ranks.rank :: ranks.world_size]
    parts: list[tuple[int, Features]] = []
    _run(model, head, dataset, mine, plan, lambda start, stop, part: parts.append((start, part)))
    everything = [part for rank_parts in ranks.gather(parts) for part in rank_parts]
    return Features.cat([part for _, part in sorted(everything, key=lambda item: item[0])])


def _run(
    model: nn.Module,
    head: Head | None,
    dataset: Dataset,
    ranges: list[tuple[int, int]],
    plan: _Plan,
    on_chunk: OnChunk,
) -> None:
    """Forward the samples of ``ranges`` in order; call ``on_chunk`` after each range."""
    if not ranges:
        return
    size = plan.batch_size
    batches = [
        list(range(first, min(first + size, stop)))
        for start, stop in ranges
        for first in range(start, stop, size)
    ]
    loader = DataLoader(dataset, batch_sampler=batches, **plan.loader_kwargs)
    batch_iterator = iter(loader)
    total = sum(stop - start for start, stop in ranges)
    with (
        layer_outputs(model, plan.layers) as captured,
        tqdm(total=total, desc=plan.desc, unit="sample", disable=not plan.progress) as bar,
    ):
        for start, stop in ranges:
            parts, deferred = [], []
            for _ in range(math.ceil((stop - start) / size)):
                inputs, labels = _pair(next(batch_iterator))
                parts.append(_forward(model, head, inputs, labels, captured, plan, deferred))
                bar.update(len(labels))
            _wait_for_copies(plan.device)  # the host waits for the device once per chunk
            if head is not None:
                check_deferred(model, head, deferred, parts[0].logits.shape[1])
            on_chunk(start, stop, Features.cat(parts))


def _pair(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        got = f"{len(batch)} items" if isinstance(batch, (list, tuple)) else type(batch).__name__
        raise ValueError(f"dataset items must be pairs (input, label); a batch holds {got}")
    inputs, labels = batch
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one number per sample, got shape {tuple(labels.shape)}")
    return inputs, labels


def _forward(
    model: nn.Module,
    head: Head | None,
    inputs: Tensor,
    labels: Tensor,
    captured: dict[str, list[Tensor]],
    plan: _Plan,
    deferred: list[Tensor],
) -> Features:
    for outputs in captured.values():
        outputs.clear()
    device = plan.device
    with torch.no_grad():
        inputs = _on_device(inputs, device, plan.device_preprocessing)
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=plan.bf16),
    ):
        if head is None:
            logits = forward_logits(model, inputs)
            features = logits.new_empty(logits.shape[0], 0)
        else:
            logits, features = forward_with_features(model, head, inputs, deferred)
        extras = {
            name: _reduce(name, outputs, plan.reduction) for name, outputs in captured.items()
        }
    return Features(
        _stored(logits), _stored(features), labels, {n: _stored(v) for n, v in extras.items()}
    )


def _on_device(inputs: Any, device: torch.device, stage: DeviceStage | None) -> Tensor:
    """The batch's inputs on ``device``, through the device stage if there is one."""
    if stage is None:
        return inputs.to(device, non_blocking=True)
    return stage(inputs, device)


def _reduce(name: str, outputs: list[Tensor], reduction: Reduction) -> Tensor:
    if len(outputs) != 1:
        raise ValueError(
            f"extra layer '{name}' ran {len(outputs)} times in one forward pass; capture a "
            "module that runs exactly once"
        )
    output = outputs[0]
    if not isinstance(output, Tensor):
        raise ValueError(f"extra layer '{name}' returns {type(output).__name__}, not a tensor")
    if callable(reduction):
        return reduction(output)
    if reduction == "mean":
        return output.flatten(2).mean(2) if output.ndim > 2 else output
    if reduction == "flatten":
        return output.flatten(1)
    return output


def _stored(tensor: Tensor) -> Tensor:
    """``tensor`` on the host (float32 for half precision). From CUDA, copied into pinned
    memory without waiting: valid after :func:`_wait_for_copies`."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    tensor = tensor.detach()
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def _wait_for_copies(device: torch.device) -> None:
    """Wait for the device's queued work, the copies of :func:`_stored` included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
