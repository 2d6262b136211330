"""Score detectors on a pytorch-ood benchmark: the paper's metrics as a pandas DataFrame.

:func:`evaluate` runs every model once per test set and scores every detector from that pass:

- the ID test set is read once, and each OOD set once (``benchmark.test_sets(known=True,
  unknown=False)`` and ``test_sets(known=False, unknown=True)``); a benchmark that does not
  support these is read through its combined test sets (the ID part of a combined
  ``ConcatDataset(ID, OOD)`` that all sets share is still read only once);
- **from the cache** of :func:`gradood.features.extract_features` (one forward pass per model,
  head and dataset, on disk with ``cache_dir``): every ``LogitsDetector`` with a ``model``
  (``predict_logits``: MSP, Energy, ...; these need no head and run on any classifier, e.g.
  one whose output is post-processed after its last layer), every ``FeaturesDetector`` whose
  ``encoder`` is a :func:`gradood.heads.penultimate_encoder` (``predict_features``:
  :class:`gradood.GradNorm <gradood.detectors.gradnorm.GradNorm>` at any ``p`` and ``T``,
  pytorch-ood's ``Mahalanobis`` as the registry builds it, ...), pytorch-ood's ``ODIN`` with
  ``eps == 0`` (then :math:`\\hat x = x` and the score is MSP at temperature :math:`T` of the
  logits, :math:`-\\max_c \\mathrm{softmax}(z / T)_c`: scored from the cached logits without ODIN's
  backward pass), and any detector that follows the :class:`CachedScorer` protocol (scores from
  :class:`~gradood.representations.Features`, including extra layer outputs);
- **on the raw inputs** (``detector.predict(x)``, all such detectors in one pass over each
  dataset): everything else, e.g. ODIN with ``eps > 0``, gradient detectors (Lee & AlRegib,
  GradNorm with ``params=``), Mahalanobis with input preprocessing.

Detectors that need fitting must be fitted before (e.g. on
``extract_features(model, benchmark.train_set())``: ``detector.fit_features(f.features,
f.labels)``); :func:`evaluate` never fits.

Note: ``gradood.evaluate`` is this function; import the module's other names with
``from gradood.evaluate import detector_grid``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pandas as pd
import torch
from pytorch_ood.api import Detector, FeaturesDetector, GradientDetector, LogitsDetector
from pytorch_ood.detector import ODIN, MaxSoftmax
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .cache import CorruptCacheError
from .distributed import Ranks, current_ranks, resolve_device
from .features import (
    DEFAULT_CHUNK_SIZE,
    DeviceStage,
    Features,
    extract_features,
    loader_arguments,
    progress_shown,
)
from .heads import Head, PenultimateEncoder, find_head
from .metrics import paper_metrics
from .validation import check_finite_scores, settings_text

__all__ = [
    "AVERAGE",
    "KEY_COLUMNS",
    "METRICS",
    "SIZE_COLUMNS",
    "CachedScorer",
    "detector_grid",
    "evaluate",
]

#: the metric columns, as :func:`gradood.paper_metrics <gradood.metrics.paper_metrics>` names them
#: (fractions)
METRICS = ("FPR95", "AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR")
#: the columns that name a row of a result table (``settings``: all of the detector's settings)
KEY_COLUMNS = ("method", "settings", "ood_data")
#: the columns of a row's test-set sizes (ID and OOD samples)
SIZE_COLUMNS = ("n_id", "n_ood")
#: the ``ood_data`` value of the rows that average over the OOD sets
AVERAGE = "Average"
# rows scored from cached representations at a time, to bound detectors' temporary memory
_SCORE_ROWS = 8192
_RESERVED_COLUMNS = (*KEY_COLUMNS, *METRICS, *SIZE_COLUMNS)

DetectorEntry = Detector | tuple[str, Detector] | tuple[str, Mapping[str, Any], Detector]


@runtime_checkable
class CachedScorer(Protocol):
    """A detector scored from :class:`~gradood.representations.Features` of its ``model``.

    Optional attributes: ``head`` (module name or module; found if absent) and
    ``cached_layers`` (``{name: module path}`` of layers to extract, spatially averaged, into
    ``Features.extras[name]``, e.g. the feature layers of a Mahalanobis ensemble). An instance
    whose settings need the raw inputs (e.g. input preprocessing with ``eps > 0``) sets
    ``predict_cached = None``; it is then scored with ``predict(x)``.
    """

    model: nn.Module

    def predict_cached(self, features: Features) -> Tensor:
        """Outlier scores (higher = more OOD), one per row of ``features``."""


@dataclass(frozen=True)
class _Entry:
    method: str
    settings: dict[str, Any]
    detector: Detector


@dataclass
class _Source:
    """A model whose logits, penultimate features (at ``head``; none without a head: logits
    only) and ``layers`` are extracted."""

    model: nn.Module
    head: Head | None
    layers: dict[str, str]


@dataclass(frozen=True)
class _Route:
    """How an entry is scored from its source's :class:`Features`."""

    source: tuple[int, str | None]
    score: Callable[[Features], Tensor]


@dataclass(frozen=True)
class _Options:
    device: torch.device | None
    batch_size: int
    num_workers: int | None
    loader_kwargs: Mapping[str, Any]
    device_preprocessing: DeviceStage | None
    cache_dir: Any
    bf16: bool
    chunk_size: int
    progress: bool
    hash_files: bool
    recompute: bool
    on_corrupt: Callable[[CorruptCacheError], object] | None


@dataclass(frozen=True)
class _TestSets:
    """``id_set`` with the ``ood`` sets, or (``id_set is None``) combined ID + OOD sets."""

    id_set: Dataset | None
    ood: list[tuple[str, Dataset]]


def detector_grid(
    method: str, factory: Callable[..., Detector], **space: Iterable[Any]
) -> list[tuple[str, dict[str, Any], Detector]]:
    """``(method, settings, factory(**settings))`` for every combination of ``space``'s values.

    Example: ``detector_grid("GradNorm", functools.partial(GradNorm, model), p=PAPER_NORMS)``.
    """
    names = list(space)
    grid = []
    for values in itertools.product(*(list(space[name]) for name in names)):
        settings = dict(zip(names, values, strict=True))
        grid.append((method, settings, factory(**settings)))
    return grid


def evaluate(
    benchmark: Any,
    detectors: Mapping[str, Detector] | Iterable[DetectorEntry],
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    loader_kwargs: Mapping[str, Any] | None = None,
    device_preprocessing: DeviceStage | None = None,
    cache_dir: Any = None,
    bf16: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool | None = None,
    hash_files: bool = False,
    recompute: bool = False,
    on_corrupt: Callable[[CorruptCacheError], object] | None = None,
) -> pd.DataFrame:
    """The paper's metrics of every detector on every OOD set of ``benchmark``.

    :param benchmark: a pytorch-ood ``Benchmark`` (``ood_names`` and ``test_sets()``; OOD
        samples labelled < 0)
    :param detectors: ``{method: detector}``, or a sequence of detectors, ``(method, detector)``
        or ``(method, settings, detector)`` (see :func:`detector_grid`); without explicit
        settings, they are the detector's ``get_hyperparameters()``
    :param device: where to run; detectors (and their models) are moved there. ``None``: leave
        them where they are
    :param batch_size: samples per forward pass (and per ``predict`` call of raw-input detectors)
    :param num_workers: DataLoader worker processes; ``None``: as
        :func:`gradood.features.default_num_workers` chooses for the device
    :param loader_kwargs: further DataLoader arguments
    :param device_preprocessing: the batch stage run on the device before the models (see
        :func:`gradood.features.extract_features`); ``None``: the benchmark's
        ``device_preprocessing`` attribute if it has one (a protocol opened with
        ``decoder="device"``)
    :param cache_dir: directory of the feature cache (see :mod:`gradood.features`); ``None``
        keeps the features in memory only. Multi-process runs (``torchrun``) split the forward
        passes and the raw-input scoring between the processes, and all return the full table
    :param bf16: extract under bfloat16 autocast
    :param chunk_size: samples per cache chunk (the unit of resumption and sharding)
    :param progress: show progress bars; ``None``: only where stderr is a terminal
        (:func:`gradood.features.progress_shown`)
    :param hash_files: key cached datasets that list their files also by the files' bytes
    :param recompute: extract again and replace the cache entries
    :param on_corrupt: where a cache entry fails its check: told the error, then the entry is
        extracted again (see :func:`gradood.features.extract_features`); ``None``: raised
    :return: one row per (method, settings, OOD set) in the order given, then an ``Average``
        row per (method, settings) with the mean of each metric over the OOD sets. Columns:
        ``method``, ``settings`` (text, e.g. ``"p=1, temperature=1"``), one column per setting
        name, ``ood_data``, ``FPR95``, ``AUROC``, ``AUPR-IN``, ``AUPR-OUT``, ``FPR95TPR``
        (fractions, see :func:`gradood.paper_metrics <gradood.metrics.paper_metrics>`),
        ``n_id`` and ``n_ood`` (sample counts; in ``Average`` rows, ``n_ood`` sums over the OOD
        sets)
    :raises ValueError: on bad detector specifications, a benchmark whose ID set holds OOD
        labels or whose OOD sets hold ID labels, or detectors returning the wrong number of
        scores
    """
    entries = _entries(detectors)
    options = _Options(
        device=None if device is None else resolve_device(device),
        batch_size=batch_size,
        num_workers=num_workers,
        loader_kwargs=dict(loader_kwargs or {}),
        device_preprocessing=device_preprocessing
        or getattr(benchmark, "device_preprocessing", None),
        cache_dir=cache_dir,
        bf16=bf16,
        chunk_size=chunk_size,
        progress=progress_shown(progress),
        hash_files=hash_files,
        recompute=recompute,
        on_corrupt=on_corrupt,
    )
    if options.device is not None:
        for entry in entries:
            entry.detector.to(options.device)
    sources, routes = _routes(entries)
    ranks = current_ranks(options.device or torch.device("cpu"))

    def score(name: str, dataset: Dataset) -> tuple[list[Tensor], Tensor]:
        return _score_dataset(name, dataset, entries, sources, routes, options, ranks)

    results = _score_test_sets(_test_sets(benchmark), score, _name(benchmark))
    rows = []
    for index, entry in enumerate(entries):
        per_set = [_row(entry, name, scores[index], labels) for name, scores, labels in results]
        rows += [*per_set, _average(per_set)]
    return _frame(rows, entries)


def _score_test_sets(
    test_sets: _TestSets,
    score: Callable[[str, Dataset], tuple[list[Tensor], Tensor]],
    benchmark: str,
) -> list[tuple[str, list[Tensor], Tensor]]:
    """Per OOD set: every entry's scores on ID + OOD samples, and their labels."""
    shared_id = None
    if test_sets.id_set is not None:
        shared_id = score("ID", test_sets.id_set)
        _check_labels(shared_id[1], known=True, name=f"the ID test set of {benchmark}")
    results = []
    for name, dataset in test_sets.ood:
        scores, labels = score(name, dataset)
        if shared_id is not None:
            _check_labels(labels, known=False, name=f"the OOD set '{name}' of {benchmark}")
            scores = [torch.cat([i, o]) for i, o in zip(shared_id[0], scores, strict=True)]
            labels = torch.cat([shared_id[1], labels])
        results.append((name, scores, labels))
    return results


# -- what to run -----------------------------------------------------------------------------


def _entries(detectors: Mapping[str, Detector] | Iterable[DetectorEntry]) -> list[_Entry]:
    if isinstance(detectors, Detector):
        raise TypeError("detectors must be a mapping or a sequence; wrap a single detector: [d]")
    items = list(detectors.items()) if isinstance(detectors, Mapping) else list(detectors)
    if not items:
        raise ValueError("evaluate needs at least one detector")
    entries = []
    for item in items:
        if isinstance(item, Detector):
            item = (type(item).__name__, item)
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise TypeError(
                "each detector must be a Detector, (method, detector) or (method, settings, "
                f"detector); got {item!r}"
            )
        method, *settings, detector = item
        if not isinstance(detector, Detector) or not isinstance(method, str):
            raise TypeError(f"expected (method: str, [settings,] Detector), got {item!r}")
        found = dict(settings[0]) if settings else _hyperparameters(detector)
        entries.append(_Entry(method, found, detector))
    _check_unique(entries)
    return entries


def _hyperparameters(detector: Detector) -> dict[str, Any]:
    try:
        return dict(detector.get_hyperparameters())
    except AttributeError:
        return {}


def _check_unique(entries: list[_Entry]) -> None:
    seen = set()
    for entry in entries:
        clash = [name for name in entry.settings if name in _RESERVED_COLUMNS]
        if clash:
            raise ValueError(f"{entry.method}: setting names {clash} clash with result columns")
        label = (entry.method, settings_text(entry.settings))
        if label in seen:
            raise ValueError(f"two detectors are named {label[0]} with settings '{label[1]}'")
        seen.add(label)


def _routes(
    entries: list[_Entry],
) -> tuple[dict[tuple[int, str | None], _Source], list[_Route | None]]:
    """The models to extract, and for each entry how it is scored from them (None: raw).

    A detector of logits only shares the extraction of a detector of the same model that needs
    its head, if there is one; else its model is run for the logits alone, without a head.
    """
    found = [_cached_scoring(entry.detector) for entry in entries]
    with_head = {id(f[0]): f[1].name for f in found if f is not None and f[1] is not None}
    sources: dict[tuple[int, str | None], _Source] = {}
    routes: list[_Route | None] = []
    for entry, scoring in zip(entries, found, strict=True):
        if scoring is None:
            routes.append(None)
            continue
        model, head, layers, score = scoring
        key = (id(model), head.name if head is not None else with_head.get(id(model)))
        if key[1] is not None and head is None:
            head = find_head(model, key[1])
        source = sources.setdefault(key, _Source(model, head, {}))
        for name, path in layers.items():
            if source.layers.setdefault(name, path) != path:
                raise ValueError(
                    f"{entry.method}: the cached layer '{name}' is '{path}', but another "
                    f"detector of the same model uses '{source.layers[name]}'"
                )
        routes.append(_Route(key, score))
    return sources, routes


def _cached_scoring(
    detector: Detector,
) -> tuple[nn.Module, Head | None, Mapping[str, str], Callable[[Features], Tensor]] | None:
    """The model, the head (``None``: logits only), the extra layers and the score function of
    a detector scored from the cache; ``None`` for one that needs the raw inputs."""
    if isinstance(detector, ODIN):
        if detector.model is None or float(detector.eps) != 0.0:
            return None
        temperature = detector.temperature
        # eps = 0: x_hat = x, so ODIN is MSP at temperature T on the logits
        return detector.model, None, {}, lambda f: MaxSoftmax.score(f.logits, temperature)
    if callable(getattr(detector, "predict_cached", None)) and detector.model is not None:
        head = find_head(detector.model, getattr(detector, "head", None))
        layers = getattr(detector, "cached_layers", None) or {}
        return detector.model, head, layers, detector.predict_cached
    if isinstance(detector, GradientDetector):
        return None
    if isinstance(detector, LogitsDetector) and getattr(detector, "model", None) is not None:
        return detector.model, None, {}, lambda f: detector.predict_logits(f.logits)
    encoder = getattr(detector, "encoder", None)
    if isinstance(detector, FeaturesDetector) and isinstance(encoder, PenultimateEncoder):
        return encoder.model, encoder.head, {}, lambda f: detector.predict_features(f.features)
    return None


def _test_sets(benchmark: Any) -> _TestSets:
    names = list(benchmark.ood_names)
    try:
        known = list(benchmark.test_sets(known=True, unknown=False))
        unknown = list(benchmark.test_sets(known=False, unknown=True))
    except (TypeError, ValueError, NotImplementedError):
        known, unknown = [], []
    if len(known) == 1 and len(unknown) == len(names) and all(known[0] is not u for u in unknown):
        return _TestSets(known[0], list(zip(names, unknown, strict=True)))
    combined = list(benchmark.test_sets())
    if len(combined) != len(names):
        raise ValueError(
            f"{_name(benchmark)}.test_sets() gives {len(combined)} sets for {len(names)} ood_names"
        )
    shared = _shared_id_part(combined)
    if shared is not None:
        return _TestSets(shared, [(n, d.datasets[1]) for n, d in zip(names, combined, strict=True)])
    return _TestSets(None, list(zip(names, combined, strict=True)))


def _shared_id_part(combined: list[Dataset]) -> Dataset | None:
    """The ID set if every combined set is ``ConcatDataset([ID, OOD])`` with the same ID."""
    if not all(isinstance(d, ConcatDataset) and len(d.datasets) == 2 for d in combined):
        return None
    first = combined[0].datasets[0]
    return first if all(d.datasets[0] is first for d in combined) else None


# -- scoring ---------------------------------------------------------------------------------


def _score_dataset(
    name: str,
    dataset: Dataset,
    entries: list[_Entry],
    sources: dict[tuple[int, str | None], _Source],
    routes: list[_Route | None],
    options: _Options,
    ranks: Ranks,
) -> tuple[list[Tensor], Tensor]:
    """Scores of every entry on ``dataset`` (float64, in dataset order), and its labels."""
    scores: list[Tensor | None] = [None] * len(entries)
    labels = None
    for key, source in sources.items():
        features = extract_features(
            source.model,
            dataset,
            head=None if source.head is None else source.head.name,
            penultimate=source.head is not None,
            cache_dir=options.cache_dir,
            batch_size=options.batch_size,
            num_workers=options.num_workers,
            loader_kwargs=options.loader_kwargs,
            device=options.device,
            device_preprocessing=options.device_preprocessing,
            bf16=options.bf16,
            extra_layers=source.layers,
            chunk_size=options.chunk_size,
            hash_files=options.hash_files,
            recompute=options.recompute,
            on_corrupt=options.on_corrupt,
            progress=options.progress,
            desc=f"{name}: forward {type(source.model).__name__}",
        )
        labels = features.labels
        for index, route in enumerate(routes):
            if route is not None and route.source == key:
                scores[index] = _scores_from_cache(entries[index], route.score, features, name)
    raw = [index for index, route in enumerate(routes) if route is None]
    if raw:
        raw_scores, labels = _scores_from_inputs(
            [entries[i] for i in raw], dataset, options, ranks, name
        )
        for index, values in zip(raw, raw_scores, strict=True):
            scores[index] = values
    return scores, labels


def _scores_from_cache(
    entry: _Entry, score: Callable[[Features], Tensor], features: Features, dataset: str
) -> Tensor:
    parts = []
    for start in range(0, len(features), _SCORE_ROWS):
        rows = features[start : start + _SCORE_ROWS]
        with _context(entry, dataset):
            values = score(rows)
        parts.append(_checked(entry, values, len(rows), dataset))
    return torch.cat(parts)


def _scores_from_inputs(
    entries: list[_Entry], dataset: Dataset, options: _Options, ranks: Ranks, name: str
) -> tuple[list[Tensor], Tensor]:
    """Scores of raw-input detectors, all in one pass; split across the ranks of a run."""
    size = len(dataset)
    share = math.ceil(size / ranks.world_size)
    mine = range(min(ranks.rank * share, size), min((ranks.rank + 1) * share, size))
    part = Subset(dataset, mine) if ranks.distributed else dataset
    device = options.device or resolve_device(None, getattr(entries[0].detector, "model", None))
    stage = options.device_preprocessing
    kwargs = loader_arguments(options.num_workers, options.loader_kwargs, device, stage)
    loader = DataLoader(part, batch_size=options.batch_size, shuffle=False, **kwargs)
    scores: list[list[Tensor]] = [[] for _ in entries]
    labels = []
    bar = tqdm(
        loader, desc=f"{name}: raw-input detectors", disable=not (options.progress and ranks.main)
    )
    for inputs, targets in bar:
        if stage is not None:
            inputs = stage(inputs, device)
        elif options.device is not None:
            inputs = inputs.to(options.device)
        for entry, collected in zip(entries, scores, strict=True):
            with _context(entry, name):
                collected.append(
                    _checked(entry, entry.detector.predict(inputs), len(targets), name)
                )
        labels.append(torch.as_tensor(targets))
    local = ([_cat_or_empty(s) for s in scores], _cat_or_empty(labels, torch.long))
    every = ranks.gather(local)
    return (
        [torch.cat([rank[0][k] for rank in every]) for k in range(len(entries))],
        torch.cat([rank[1] for rank in every]),
    )


def _cat_or_empty(parts: list[Tensor], dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.cat(parts) if parts else torch.empty(0, dtype=dtype)


def _checked(entry: _Entry, scores: Any, expected: int, dataset: str) -> Tensor:
    if not isinstance(scores, Tensor) or scores.shape != (expected,):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"{entry.method} ({settings_text(entry.settings)}) returned scores of shape {shape} "
            f"on {expected} samples of '{dataset}'; expected one score per sample"
        )
    scores = scores.detach().to("cpu", torch.float64)
    return check_finite_scores(scores, entry.method, entry.settings)


@contextmanager
def _context(entry: _Entry, dataset: str) -> Iterator[None]:
    """Add the method and dataset to an exception raised while scoring (Python >= 3.11)."""
    try:
        yield
    except Exception as error:
        if hasattr(error, "add_note"):
            settings = settings_text(entry.settings)
            error.add_note(f"while scoring {entry.method} ({settings}) on '{dataset}'")
        raise


def _check_labels(labels: Tensor, *, known: bool, name: str) -> None:
    wrong = int((labels < 0).sum()) if known else int((labels >= 0).sum())
    if wrong:
        expected = "ID samples (labels >= 0)" if known else "OOD samples (labels < 0)"
        raise ValueError(
            f"{name} must hold only {expected}, but {wrong} of {len(labels)} are not; label "
            "OOD sets with negative targets (pytorch-ood's ToUnknown)"
        )


# -- the table -------------------------------------------------------------------------------


def _row(entry: _Entry, ood_name: str, scores: Tensor, labels: Tensor) -> dict[str, Any]:
    is_id = labels >= 0
    return {
        "method": entry.method,
        "settings": settings_text(entry.settings),
        **entry.settings,
        "ood_data": ood_name,
        **paper_metrics(scores, labels),
        "n_id": int(is_id.sum()),
        "n_ood": int((~is_id).sum()),
    }


def _average(rows: list[dict[str, Any]]) -> dict[str, Any]:
    average = {**rows[0], "ood_data": AVERAGE}
    for metric in METRICS:
        average[metric] = sum(row[metric] for row in rows) / len(rows)
    id_counts = {row["n_id"] for row in rows}
    average["n_id"] = id_counts.pop() if len(id_counts) == 1 else sum(r["n_id"] for r in rows)
    average["n_ood"] = sum(row["n_ood"] for row in rows)
    return average


def _frame(rows: list[dict[str, Any]], entries: list[_Entry]) -> pd.DataFrame:
    setting_columns = list(dict.fromkeys(name for e in entries for name in e.settings))
    columns = ["method", "settings", *setting_columns, "ood_data", *METRICS, *SIZE_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def _name(benchmark: Any) -> str:
    return type(benchmark).__name__
