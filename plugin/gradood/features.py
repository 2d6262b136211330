"""One forward pass per (model, dataset): logits, penultimate features and chosen layer outputs,
cached on disk, resumable after an interruption, and sharded across ``torchrun`` processes.

:func:`extract_features` runs the model once over a dataset (through
:func:`gradood.heads.forward_with_features`) and returns a :class:`Features` object, from which
every logits detector (``predict_logits``), every penultimate-features detector
(``predict_features``: GradNorm at any ``p`` and ``T``, Mahalanobis, ...) and every detector of
further layer outputs scores without running the model again.

**The cache.** With ``cache_dir``, the result is stored as ``features-<key>.pt`` in that
directory. The key is a digest (:mod:`gradood.fingerprint`) of

- the model: its class, every parameter and buffer (bytes), submodule attributes, training
  flags and forward hooks;
- the dataset: its class, length and attributes, including the transform (described by its
  content, not its ``repr``: two ``Lambda`` transforms differ by their function's code and
  closure), and its data. A dataset that lists its files (``samples`` / ``imgs`` of
  torchvision's ``ImageFolder``, ``files`` of pytorch-ood's image datasets) is keyed by the
  path, size and modification time of every file (with ``hash_files=True``, also by the bytes
  of every file); one that holds its data (``TensorDataset``, CIFAR's ``data``) by those bytes.
  Any other dataset (a file list under another name, data made on the fly, a listed file that
  cannot be read) is keyed by the content of **every sample**, read once through the
  DataLoader (the transform runs, the model does not) before the cache is looked up. This
  costs one extra read of the data on each call (no forward pass), and is sound: nothing less
  than every sample determines the result. (Hashing during the extraction instead would save
  that read on a miss only: a hit must read every sample anyway, to check a recorded hash.)
- the head, the extra layers and their reduction, bf16 autocast, the device type, the torch
  version and ``key_extra`` (free material, e.g. a code version).

Any change of these gives a new key, so a stale result is never returned; the cache does not
see edits of the source code of a model's or a transform's methods (pass ``key_extra``), nor a
dataset class that lists files or holds arrays but reads something else. The cache is not
used, with a warning that says why, if an input cannot be described stably (an object whose
only description is a memory address) or the dataset is random: its transform holds one of
torchvision's random transforms (``Random*``, ``ColorJitter``, ``RandAugment``,
``AutoAugment``, ...), or the first, middle or last sample differs between two reads.

**Integrity.** Every cache file records a BLAKE2b checksum of its tensors, verified on every
read: a file changed on disk (a flipped bit) raises :class:`CacheError` naming it;
``recompute=True`` extracts again and replaces it.

**Concurrency.** Processes sharing a ``cache_dir`` take turns per key: the extraction holds an
exclusive ``flock`` on ``features-<key>.lock`` (see :func:`gradood.files.exclusive_lock`; on
NFS, Linux maps it to a POSIX lock). A second process waits, then finds the final file and
reads it; both get the same result and no file is left but the final one.

**Resuming.** The dataset is cut into chunks of ``chunk_size`` samples; each finished chunk is
written at once to ``features-<key>.chunks/``, and a later call skips the chunks that exist.
When all are there, they are assembled into the final file and removed. Every file is written
to a temporary file in the same directory and then renamed (``os.replace``), so no partial file
is ever visible under a final name. Only files with these names (and the lock) are created or
removed.

**Sharding.** Under ``torchrun`` (``torch.distributed`` initialized, or ``RANK`` and
``WORLD_SIZE`` set), rank ``r`` of ``W`` extracts chunks ``r, r + W, ...`` into the shared
``cache_dir`` (which must be visible to every process), rank 0 assembles them after a barrier
(rank 0 holds the lock), and every rank returns the result. The ranks check that they agree on
the key. Without a cache, the ranks exchange their chunks in memory (``all_gather_object``).
The dataset must be index-deterministic: sample ``i`` must not depend on the access order
(pytorch-ood's ``GaussianNoise`` and ``UniformNoise`` draw from one shared generator and are not).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .capture import layer_outputs
from .distributed import Ranks, current_ranks, resolve_device
from .files import atomic_torch_save, exclusive_lock
from .fingerprint import Fingerprint, keyed_by_attributes, qualified_name
from .heads import Head, check_deferred, find_head, forward_logits, forward_with_features

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "REDUCTIONS",
    "CacheError",
    "Features",
    "default_num_workers",
    "extract_features",
    "loader_arguments",
]

#: samples per chunk: the unit of resumption and of sharding
DEFAULT_CHUNK_SIZE = 2048
#: how a captured layer output (B x C x H x W) becomes one row per sample
REDUCTIONS = ("mean", "flatten", "none")
FORMAT_VERSION = 2  # 2: a checksum of the tensors

Reduction = str | Callable[[Tensor], Tensor]
#: a batch stage run on the device: ``stage(inputs as collated, device) -> model input``
DeviceStage = Callable[[Any, torch.device], Tensor]
_CHUNK_NAME = re.compile(r"chunk-\d{10}-\d{10}\.pt")
_LOADER_ARGUMENTS_WE_SET = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last")
_AGAIN = "delete it, or pass recompute=True, to extract again"


class CacheError(ValueError):
    """A cache file does not hold what its name says (it was changed by something else)."""


@dataclass(frozen=True)
class Features:
    """What one forward pass gives for a dataset, one row per sample, in dataset order.

    ``logits`` (N x C), ``features`` (N x D, the penultimate features entering the head),
    ``labels`` (N; pytorch-ood convention: < 0 for OOD) and ``extras`` (name -> N x ...,
    the reduced outputs of other layers).
    """

    logits: Tensor
    features: Tensor
    labels: Tensor
    extras: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rows = self.labels.shape[0] if self.labels.ndim else -1
        named = {"logits": self.logits, "features": self.features, **self.extras}
        wrong = {name: tuple(t.shape) for name, t in named.items() if t.ndim == 0 or len(t) != rows}
        if rows < 0 or wrong:
            raise ValueError(
                f"Features: every tensor needs one row per label ({rows} labels); got {wrong}"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: slice | Tensor | Sequence[int]) -> Features:
        """The rows selected by a slice, index tensor or boolean mask."""
        return Features(
            self.logits[index],
            self.features[index],
            self.labels[index],
            {name: value[index] for name, value in self.extras.items()},
        )

    @staticmethod
    def cat(parts: Sequence[Features]) -> Features:
        """The rows of ``parts``, one after the other (all with the same extras)."""
        if not parts:
            raise ValueError("Features.cat needs at least one part")
        names = list(parts[0].extras)
        if any(list(part.extras) != names for part in parts):
            raise ValueError("Features.cat: the parts have different extras")
        return Features(
            torch.cat([part.logits for part in parts]),
            torch.cat([part.features for part in parts]),
            torch.cat([part.labels for part in parts]),
            {name: torch.cat([part.extras[name] for part in parts]) for name in names},
        )

    def to(self, device: str | torch.device) -> Features:
        return Features(
            self.logits.to(device),
            self.features.to(device),
            self.labels.to(device),
            {name: value.to(device) for name, value in self.extras.items()},
        )

    def _tensors(self) -> dict[str, Any]:
        return {
            "logits": self.logits,
            "features": self.features,
            "labels": self.labels,
            "extras": dict(self.extras),
        }


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


@dataclass(frozen=True)
class _Key:
    digest: str
    parts: dict[str, str]
    unstable: list[str]
    summary: dict[str, Any]


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
    progress: bool = True,
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
        :class:`CacheError`)
    :param progress: show a progress bar (on rank 0)
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
        progress=progress and ranks.main,
        desc=desc or f"features of {type(dataset).__name__}",
    )
    ranges = [(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)]
    if cache_dir is None:
        return _extract(model, found_head, dataset, ranges, plan, ranks)

    key = _cache_key(model, found_head, dataset, plan, key_extra, hash_files)
    if any(ranks.gather(bool(key.unstable))):  # all ranks take the same path
        warnings.warn(
            "extract_features: not using the cache (the result is computed, not stored), "
            f"since {'; '.join(key.unstable) or 'rank 0 says so'}",
            stacklevel=2,
        )
        return _extract(model, found_head, dataset, ranges, plan, ranks)
    _check_same_key(ranks, key)
    store = _Store(Path(cache_dir).expanduser(), key)
    with _lock(store, plan) if ranks.main else nullcontext():  # rank 0 speaks for all
        if recompute and ranks.main:
            store.clear()
        return _extract_cached(model, found_head, dataset, ranges, plan, store, ranks)


def _lock(store: _Store, plan: _Plan) -> AbstractContextManager:
    def tell() -> None:
        if plan.progress:
            tqdm.write(f"{plan.desc}: waiting for another process (lock {store.lock})", sys.stderr)

    return exclusive_lock(store.lock, on_wait=tell)


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
    on_chunk: Callable[[int, int, Features], None],
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


# -- the cache key ---------------------------------------------------------------------------


def _cache_key(
    model: nn.Module,
    head: Head | None,
    dataset: Dataset,
    plan: _Plan,
    key_extra: Any,
    hash_files: bool,
) -> _Key:
    model_print = Fingerprint().add(model, "model")
    data_print = Fingerprint(hash_files=hash_files).add(len(dataset)).add(dataset, "dataset")
    reduction = plan.reduction
    settings_print = Fingerprint().add(
        {
            "format": FORMAT_VERSION,
            "torch": str(torch.__version__),
            "head": None if head is None else head.name,
            "layers": dict(plan.layers),
            "reduction": reduction,
            "bf16": plan.bf16,
            "device": plan.device.type,
            "collate_fn": plan.loader_kwargs.get("collate_fn"),
            "device_preprocessing": plan.device_preprocessing,
            "key_extra": key_extra,
        },
        "settings",
    )
    prints = (model_print, data_print, settings_print)
    unstable = [reason for found in prints for reason in _reasons(found)]
    unstable += _differing_reads(dataset)
    by_samples = not (keyed_by_attributes(dataset) and not data_print.missing_files)
    if by_samples and not unstable:
        unstable += _add_samples(dataset, plan, data_print)
    parts = {
        "model": model_print.hexdigest(),
        "dataset": data_print.hexdigest(),
        "settings": settings_print.hexdigest(),
    }
    digest = hashlib.blake2b("|".join(parts.values()).encode(), digest_size=20).hexdigest()
    summary = {
        "model": qualified_name(type(model)),
        "head": None if head is None else head.name,
        "dataset": qualified_name(type(dataset)),
        "samples": len(dataset),
        "dataset_keyed_by": "every sample" if by_samples else "files or data it holds",
        "hash_files": hash_files,
        "extra_layers": dict(plan.layers),
        "reduction": reduction if isinstance(reduction, str) else qualified_name(reduction),
        "bf16": plan.bf16,
        "device": plan.device.type,
        "torch": str(torch.__version__),
    }
    return _Key(digest, parts, unstable, summary)


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


def _add_samples(dataset: Dataset, plan: _Plan, fingerprint: Fingerprint) -> list[str]:
    """Feed the digest of every sample, in order, to ``fingerprint`` (one read of the data
    through the DataLoader, without the model); returns the reasons not to cache, if any."""
    kwargs = {**plan.loader_kwargs, "collate_fn": _as_list, "pin_memory": False}
    loader = DataLoader(dataset, batch_size=plan.batch_size, **kwargs)
    index = 0
    with tqdm(
        total=len(dataset), desc=f"{plan.desc}: key", unit="sample", disable=not plan.progress
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


def _check_same_key(ranks: Ranks, key: _Key) -> None:
    every = ranks.gather(key.parts)
    for rank, parts in enumerate(every):
        differing = [name for name in parts if parts[name] != every[0][name]]
        if differing:
            raise ValueError(
                f"rank {rank} and rank 0 differ in their {' and '.join(differing)} (different "
                "weights, data or settings per process); every rank must extract the same thing"
            )


# -- the files -------------------------------------------------------------------------------


def _checksum(features: Features) -> str:
    """BLAKE2b of the tensors' dtypes, shapes and bytes."""
    return Fingerprint().add(features._tensors()).hexdigest()


class _Store:
    """The files of one key in the cache directory, and the only ones this module touches."""

    def __init__(self, directory: Path, key: _Key):
        self.key = key
        self.final = directory / f"features-{key.digest}.pt"
        self.chunk_dir = directory / f"features-{key.digest}.chunks"
        self.lock = directory / f"features-{key.digest}.lock"
        directory.mkdir(parents=True, exist_ok=True)

    def chunk(self, start: int, stop: int) -> Path:
        return self.chunk_dir / f"chunk-{start:010d}-{stop:010d}.pt"

    def save(self, path: Path, features: Features, start: int, stop: int) -> None:
        payload = {
            "format": FORMAT_VERSION,
            "digest": self.key.digest,
            "summary": self.key.summary,
            "start": start,
            "stop": stop,
            "checksum": _checksum(features),
            **features._tensors(),
        }
        atomic_torch_save(path, payload)

    def load(self, path: Path, start: int, stop: int) -> Features:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            features = Features(
                payload["logits"], payload["features"], payload["labels"], payload["extras"]
            )
            expected = (FORMAT_VERSION, self.key.digest, start, stop, stop - start)
            found = (
                payload["format"],
                payload["digest"],
                payload["start"],
                payload["stop"],
                len(features),
            )
            recorded = payload["checksum"] if found == expected else None
        except Exception as error:
            raise CacheError(
                f"the cache file {path} cannot be read ({type(error).__name__}: {error}); {_AGAIN}"
            ) from error
        if found != expected:
            raise CacheError(
                f"the cache file {path} holds (format, key, start, stop, rows) = {found}, not "
                f"{expected}; {_AGAIN}"
            )
        if recorded != _checksum(features):
            raise CacheError(
                f"the cache file {path} fails its checksum: its tensors changed on disk (a "
                f"flipped bit?); {_AGAIN}"
            )
        return features

    def load_final(self, size: int) -> Features:
        return self.load(self.final, 0, size)

    def assemble(self, ranges: list[tuple[int, int]]) -> Features:
        """Join the chunk files into the final file, then remove them."""
        missing = [str(self.chunk(*r)) for r in ranges if not self.chunk(*r).exists()]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(ranges)} chunk files are missing after extraction, e.g. "
                f"{missing[0]}: in a multi-process run, cache_dir must be a directory that every "
                "process sees (a shared file system)"
            )
        features = Features.cat([self.load(self.chunk(*r), *r) for r in ranges])
        self.save(self.final, features, 0, ranges[-1][1])
        self.remove_chunks()
        return features

    def clear(self) -> None:
        """Remove the final file and the chunks of this key."""
        self.final.unlink(missing_ok=True)
        self.remove_chunks()

    def remove_chunks(self) -> None:
        if not self.chunk_dir.is_dir():
            return
        for path in self.chunk_dir.iterdir():
            if _CHUNK_NAME.fullmatch(path.name):
                with suppress(FileNotFoundError):
                    path.unlink()
        with suppress(OSError):  # not empty: something else lives there; leave it
            self.chunk_dir.rmdir()


def _extract_cached(
    model: nn.Module,
    head: Head | None,
    dataset: Dataset,
    ranges: list[tuple[int, int]],
    plan: _Plan,
    store: _Store,
    ranks: Ranks,
) -> Features:
    size = ranges[-1][1]
    if ranks.from_main(store.final.exists()):
        return store.load_final(size)
    mine = [
        r
        for index, r in enumerate(ranges)
        if index % ranks.world_size == ranks.rank and not store.chunk(*r).exists()
    ]
    _run(
        model,
        head,
        dataset,
        mine,
        plan,
        lambda start, stop, part: store.save(store.chunk(start, stop), part, start, stop),
    )
    ranks.barrier()
    if not ranks.main:
        problem = ranks.from_main(None)
        if problem is not None:
            raise ValueError(f"rank 0 could not assemble the chunks: {problem}")
        return store.load_final(size)
    try:
        features = store.assemble(ranges)
    except ValueError as error:
        ranks.from_main(str(error))
        raise
    ranks.from_main(None)
    return features
