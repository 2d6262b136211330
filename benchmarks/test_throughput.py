"""Images per second of every registered detector, side by side with what gradood replaces, and
the time of the whole ImageNet protocol.

**The matrix**, ``test_detector_throughput[<model>-<size>px-b<batch>-<dtype>-<detector>]``:
``detector.predict(x)`` under ``torch.no_grad()`` (the gradient detectors enable what they
need) on a batch of random inputs (random weights too: the cost does not
depend on them) for

- every built-in detector of the registry (``gradood.available_detectors()``), at the model's
  protocol preset where it has one; ODIN twice: ``odin-eps0`` (the ImageNet preset, T = 1000 and
  epsilon 0: pytorch-ood's ``predict`` still runs the input-gradient pass, which
  ``gradood.evaluate`` skips by scoring the cached logits) and ``odin-eps0.004`` (the CIFAR
  preset);
- torchvision ResNet-50 at 224 px, BiT-S-R101x1 at 480 px, the CIFAR ResNet-20 at 32 px;
- batch sizes 1, 64 and 256; fp32, and bfloat16 autocast (``bf16``).

Without ``--gradood-gpu``, a CPU set runs (one torch thread, see ``benchmarks/conftest.py``):
ResNet-20 at batch 64 with every detector in fp32, and in bf16 (skipped with the reason where
the CPU cannot autocast to bfloat16) the paper's detectors only (:data:`CPU_BF16`), to keep the
CPU run short. ``--gradood-gpu`` runs the whole matrix on the GPU (those cases are marked
``gradood_gpu``).

Fitted detectors are fitted on random data, as their cost does not depend on the fit, as their
registry recipe's fit kind and representation say, every class labelled in turn: detectors of
the penultimate features on random features (two per class, at least 64) that the head
classifies as their labels (SHE keeps only correctly classified ones), the others through
``gradood.build_and_fit`` on random images (two per class) given as the training and the
tuning loader (Lee & AlRegib trains for one epoch, the paper's Mahalanobis fits its regression
on 10 samples).

**Timing.** Warm-up calls (for 0.2 s, at least one) calibrate the number of rounds to a time
budget (0.3 s on the CPU, 2 s on the GPU; at least five rounds on the GPU, three on the CPU,
where no verdict depends on these figures: images per second of the fastest round);
pytest-benchmark then times the rounds, CUDA synchronized inside the timing. ``extra_info``
holds images per second (fastest round, and mean), on CUDA the peak memory of one more call
(``max_memory_allocated`` after ``reset_peak_memory_stats``, and its increment over the memory
allocated before; not on the CPU, where in one process the allocator keeps what earlier cases
freed, so a call's resident-set peak is not its own), the device, batch size, dtype, torch
version and thread count. Under ``--benchmark-disable`` each case runs once, untimed. While
timing, glibc's allocator keeps freed memory (``speed.steady_allocator``): otherwise which case
ran first would change the others' page faults.

**References** (GPU only, same model and batch, the same group): the official per-sample
GradNorm loop, pytorch-ood's ``GradNorm`` (restricted to the head's weight) and
``GradUncertainty`` (all parameters), one batched forward + backward pass and gradood's
Lee & AlRegib features (one pass over the batch), in images per second. The speed targets are
ratios of paired rounds, measured and judged by ``test_speed_targets.py``.

**The ImageNet protocol**: the time of Table 1 (MSP, ODIN, Energy, GradNorm) and Tables 7 and 8
(GradNorm at 10 norms and 15 temperatures) from raw images, as
``gradood.harness.checks.measure`` runs
them (JPEG decoding, the 480 x 480 resize and normalization, one BiT forward pass per image, 27
detector settings from the cached features, the metrics), measured on a generated sample of
375 x 500 JPEGs and extrapolated to the protocol's 85,640 images; beside it, the official
per-sample GradNorm time for the same (see ``test_imagenet_protocol_time``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torchvision
from pytorch_ood.api import Detector
from pytorch_ood.detector import GradNorm as PoodGradNorm
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from gradood import available_detectors, build_and_fit, create_detector
from gradood.harness.checks import measure, measurement_plan, paper_checks
from gradood.harness.speed import (
    FEATURES,
    FORWARD_BACKWARD,
    GRAD_UNCERTAINTY,
    bf16_autocast_problem,
    calibrated_rounds,
    device_name,
    lee_alregib_workload,
    native_cpu_bf16,
    official_per_sample,
    peak_memory,
    random_batch,
)
from gradood.harness.timing import SpeedCheck, Target
from gradood.heads import find_head
from gradood.models import bit_s_r101x1, resnet20
from gradood.protocols import protocol_class
from gradood.registry import detector_spec
from gradood.testing import BigTransferStyleNet, make_imagenet_layout

# -- models, detectors and cases ----------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """A model of the matrix, its input size, classes and its protocol's registry preset."""

    name: str
    build: Callable[[], nn.Module]
    size: int
    num_classes: int
    preset: str


RESNET20 = Architecture("resnet20", resnet20, 32, 10, "cifar10")
RESNET50 = Architecture("resnet50", torchvision.models.resnet50, 224, 1000, "imagenet")
BIT = Architecture("bit-s-r101x1", bit_s_r101x1, 480, 1000, "imagenet")


@dataclass(frozen=True)
class Config:
    """One model, batch size and precision: one side-by-side group."""

    arch: Architecture
    batch: int
    dtype: str  # "fp32", or "bf16" (bfloat16 autocast)

    def __str__(self) -> str:
        return f"{self.arch.name}-{self.arch.size}px-b{self.batch}-{self.dtype}"

    @property
    def group(self) -> str:
        return f"throughput {self}"


def builtin_detectors() -> list[str]:
    """The registry's built-in names (plugins are not timed)."""
    return [
        name
        for name in available_detectors()
        if detector_spec(name).factory.__module__.startswith("gradood.")
    ]


#: detector id -> (registered name, preset; ``None``: the model's protocol preset where the
#: detector has one). ODIN at both of the paper's epsilons; every other built-in once.
DETECTORS: dict[str, tuple[str, str | None]] = {
    "odin-eps0": ("odin", "imagenet"),
    "odin-eps0.004": ("odin", "cifar"),
    **{name: (name, None) for name in builtin_detectors() if name != "odin"},
}
#: settings that only make fitting on random data faster (the cost of ``predict`` is the same)
FAST_FIT = {
    "lee-alregib": {"epochs": 1},
    "mahalanobis-paper": {"samples": 10, "progress": False},
}
#: the detectors that pytorch-ood or gradood already timed in bf16 before the registry grew;
#: the others are timed in fp32 only on the CPU, to keep ``pytest benchmarks`` short
CPU_BF16 = ["msp", "odin-eps0", "odin-eps0.004", "energy", "mahalanobis", "mahalanobis-paper"]
CPU_BF16 += ["gradnorm", "lee-alregib"]


def _fitted(model: nn.Module, arch: Architecture, detector_id: str, device: str) -> Detector:
    """Detector ``detector_id`` built by its registry recipe and fitted as its fit kind says,
    on random data: detectors of the penultimate features on random features
    (:func:`_random_features`), the others through ``build_and_fit`` on random images."""
    name, preset = DETECTORS[detector_id]
    spec = detector_spec(name)
    if preset is None and arch.preset in spec.presets:
        preset = arch.preset
    settings = FAST_FIT.get(name, {})
    if spec.fit == "train" and spec.scores_from == "features":
        detector = create_detector(name, model, preset=preset, **settings)
        detector.fit_features(*_random_features(model, arch, device))
        return detector
    loader = None if spec.fit == "none" else _random_loader(arch, device)
    return build_and_fit(
        name, model, preset=preset, train_loader=loader, tuning_loader=loader, **settings
    )


def _random_features(model: nn.Module, arch: Architecture, device: str) -> tuple[Tensor, Tensor]:
    """Random penultimate features, every class labelled in turn and each classified as its
    label by the head (SHE keeps the correctly classified ones): ``10 W^+ e_y`` plus noise."""
    rows = max(2 * arch.num_classes, 64)  # KNN's k = 50 neighbours
    labels = torch.arange(rows, device=device) % arch.num_classes
    weight = find_head(model).module.weight.detach().flatten(1)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(rows, weight.shape[1], generator=generator).to(device)
    features = 10 * torch.linalg.pinv(weight)[:, labels].T + 0.01 * noise
    return features, labels


def _random_loader(arch: Architecture, device: str) -> DataLoader:
    """Random images, two per class, every class labelled in turn."""
    rows = 2 * arch.num_classes
    images = random_batch(rows, arch.size, device)
    labels = torch.arange(rows, device=device) % arch.num_classes
    return DataLoader(TensorDataset(images, labels), batch_size=64)


OFFICIAL = "official-gradnorm-per-sample"
POOD_GRADNORM = "pytorch-ood-gradnorm"
POOD_GRAD_UNCERTAINTY = "pytorch-ood-graduncertainty"
BATCHED_FORWARD_BACKWARD = "forward-backward"
LEE_ALREGIB_FEATURES = "lee-alregib-features"


def _pood_gradnorm(model: nn.Module, x: Tensor) -> Callable[[], object]:
    weight = f"{find_head(model).name}.weight"
    detector = PoodGradNorm(model, param_filter=lambda name: name == weight)
    return lambda: detector.predict(x)


#: reference id -> ``(model, x) -> workload``
REFERENCES: dict[str, Callable[[nn.Module, Tensor], Callable[[], object]]] = {
    OFFICIAL: lambda model, x: lambda: official_per_sample(model, x),
    POOD_GRADNORM: _pood_gradnorm,
    POOD_GRAD_UNCERTAINTY: lambda model, x: lee_alregib_workload(GRAD_UNCERTAINTY, model, x),
    BATCHED_FORWARD_BACKWARD: lambda model, x: lee_alregib_workload(FORWARD_BACKWARD, model, x),
    LEE_ALREGIB_FEATURES: lambda model, x: lee_alregib_workload(FEATURES, model, x),
}

# -- which cases run --------------------------------------------------------------------------

CPU_SETS = [
    (Config(RESNET20, 64, "fp32"), list(DETECTORS)),
    (Config(RESNET20, 64, "bf16"), CPU_BF16),
]
CPU_CONFIGS = [config for config, _ in CPU_SETS]
GPU_CONFIGS = [
    config
    for arch in (RESNET50, BIT, RESNET20)
    for batch in (1, 64, 256)
    for dtype in ("fp32", "bf16")
    if (config := Config(arch, batch, dtype)) not in CPU_CONFIGS
]
#: the references' images per second beside the detectors' (GPU only: on the CPU their ratios
#: are measured in paired rounds by test_speed_targets.py)
REFERENCE_CONFIGS = [
    Config(arch, batch, "fp32") for arch in (RESNET20, RESNET50, BIT) for batch in (64, 256)
]
CPU_MEMORY_NOT_MEASURED = (
    "not measured on the CPU: in one process the allocator keeps what earlier cases freed, so "
    "a call's resident-set peak is not its own (test_speed_targets.py measures fresh "
    "processes)"
)
#: time budget per case (seconds of timed rounds) and the fewest rounds, by device type
BUDGET_S = {"cpu": 0.3, "cuda": 2.0}
MIN_ROUNDS = {"cpu": 3, "cuda": 5}


def _param(config: Config, name: str, gpu: bool) -> object:
    return pytest.param(
        config, name, id=f"{config}-{name}", marks=[pytest.mark.gradood_gpu] if gpu else []
    )


DETECTOR_CASES = [_param(c, name, False) for c, names in CPU_SETS for name in names] + [
    _param(c, name, True) for c in GPU_CONFIGS for name in DETECTORS
]
REFERENCE_CASES = [_param(c, name, True) for c in REFERENCE_CONFIGS for name in REFERENCES]


class Zoo:
    """The models, input batches and fitted detectors of this run, each built once."""

    def __init__(self, device: str):
        self.device = device
        self._models: dict[str, nn.Module] = {}
        self._batches: dict[tuple[str, int], Tensor] = {}
        self._detectors: dict[tuple[str, str], Detector] = {}

    def model(self, arch: Architecture) -> nn.Module:
        if arch.name not in self._models:
            torch.manual_seed(0)
            self._models[arch.name] = arch.build().eval().to(self.device)
        return self._models[arch.name]

    def batch(self, arch: Architecture, size: int) -> Tensor:
        key = (arch.name, size)
        if key not in self._batches:
            self._batches[key] = random_batch(size, arch.size, self.device)
        return self._batches[key]

    def detector(self, arch: Architecture, name: str) -> Detector:
        key = (arch.name, name)
        if key not in self._detectors:
            self._detectors[key] = _fitted(self.model(arch), arch, name, self.device)
        return self._detectors[key]


@pytest.fixture(scope="module")
def zoo(device: str) -> Zoo:
    return Zoo(device)


# -- timing ------------------------------------------------------------------------------------


def _in_precision(work: Callable[[], object], dtype: str, device: str) -> Callable[[], object]:
    if dtype == "fp32":
        return work
    problem = bf16_autocast_problem(device)
    if problem is not None:
        pytest.skip(problem)
    device_type = torch.device(device).type

    def autocast() -> object:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return work()

    return autocast


def _timed(
    benchmark, side_by_side, config: Config, name: str, work: Callable[[], object], device: str
) -> object:
    """Time ``work`` as ``name`` in ``config``'s group and record what the JSON needs; skips
    (with the reason) when the GPU runs out of memory."""
    work = _in_precision(work, config.dtype, device)
    benchmark.extra_info.update(
        model=config.arch.name,
        resolution=config.arch.size,
        batch_size=config.batch,
        dtype="bfloat16 autocast" if config.dtype == "bf16" else "float32",
        workload=name,
        device=device_name(device),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
    )
    if torch.device(device).type == "cpu":
        benchmark.extra_info["cpu_native_bf16"] = native_cpu_bf16()
    try:
        if benchmark.disabled:
            return side_by_side.measure(benchmark, config.group, name, work, 1, warmup_rounds=0)
        kind = torch.device(device).type
        rounds = calibrated_rounds(work, device, BUDGET_S[kind], min_rounds=MIN_ROUNDS[kind])
        result = side_by_side.measure(benchmark, config.group, name, work, rounds, warmup_rounds=0)
        _record_throughput_and_memory(benchmark, config.batch, work, device)
        return result
    except torch.cuda.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        pytest.skip(f"{config}: out of GPU memory ({str(error).splitlines()[0]})")


def _record_throughput_and_memory(
    benchmark, images: int, work: Callable[[], object], device: str
) -> None:
    stats = benchmark.stats.stats
    info = benchmark.extra_info
    info["images_per_second"] = images / stats.min
    info["images_per_second_mean"] = images / stats.mean
    if torch.device(device).type != "cuda":
        info["memory_measure"] = CPU_MEMORY_NOT_MEASURED
        return
    memory = peak_memory(work, device)
    info["peak_memory_MiB"] = round(memory["peak"] / 2**20, 1)
    info["peak_memory_increment_MiB"] = round(max(0, memory["peak"] - memory["before"]) / 2**20, 1)
    info["memory_measure"] = memory["method"]


def _inference(zoo: Zoo, config: Config, name: str) -> Callable[[], Tensor]:
    """``predict`` of detector ``name`` on ``config``'s batch, as inference runs it."""
    detector = zoo.detector(config.arch, name)
    x = zoo.batch(config.arch, config.batch)

    def predict() -> Tensor:
        with torch.no_grad():  # the gradient detectors enable what they need
            return detector.predict(x)

    return predict


def _check_scores(scores: object, batch: int) -> None:
    assert isinstance(scores, Tensor) and scores.shape == (batch,), scores
    assert bool(torch.isfinite(scores).all()), scores


# -- the matrix and the references -------------------------------------------------------------


def test_every_builtin_detector_is_timed():
    """A detector added to the registry must be added to the matrix (plugins are not)."""
    assert set(builtin_detectors()) == {registered for registered, _preset in DETECTORS.values()}
    assert set(CPU_BF16) <= set(DETECTORS)


@pytest.mark.parametrize(("config", "name"), DETECTOR_CASES)
def test_detector_throughput(config: Config, name: str, benchmark, side_by_side, zoo, device):
    scores = _timed(benchmark, side_by_side, config, name, _inference(zoo, config, name), device)
    _check_scores(scores, config.batch)


@pytest.mark.parametrize(("config", "name"), REFERENCE_CASES)
def test_reference_throughput(config: Config, name: str, benchmark, side_by_side, zoo, device):
    model = zoo.model(config.arch)
    x = zoo.batch(config.arch, config.batch)
    result = _timed(benchmark, side_by_side, config, name, REFERENCES[name](model, x), device)
    if name == BATCHED_FORWARD_BACKWARD:
        assert len(result) == len(list(model.parameters()))
    elif name == LEE_ALREGIB_FEATURES:
        assert result.shape == (config.batch, len(list(model.parameters())))
    else:
        _check_scores(result, config.batch)


# -- the whole ImageNet protocol ---------------------------------------------------------------

#: a typical ImageNet photo (height, width); random pixels compress to about 115 kB, close to
#: the validation set's mean file size, but decode no faster than photos
SAMPLE_IMAGE_SIZE = (375, 500)
#: the protocol's measurements without fitting: Table 1 (Mahalanobis apart) and Tables 7, 8
PROTOCOL_TABLES = ("table1", "table7", "table8")
PROTOCOL_GROUP = "imagenet protocol bit-s-r101x1-480px"


@dataclass(frozen=True)
class ProtocolSample:
    """A generated sample of the ImageNet layout, and how the pipeline reads it."""

    classes: int
    per_class: int
    per_ood_set: int
    official_images: int  # images timed in the official per-sample loop
    batch_size: int
    num_workers: int

    @property
    def images(self) -> int:
        return self.classes * self.per_class + 4 * self.per_ood_set


def _protocol_sample(device: str) -> ProtocolSample:
    if torch.device(device).type == "cuda":  # batch and workers: the official script's
        return ProtocolSample(8, 128, 256, 32, 256, min(16, os.cpu_count() or 1))
    return ProtocolSample(1, 1, 1, 1, 8, 0)


@dataclass
class ProtocolSetup:
    sample: ProtocolSample
    benchmark: object
    model: nn.Module
    official_inputs: Tensor
    plan: list

    group = PROTOCOL_GROUP

    @property
    def pipeline_row(self) -> str:
        """pytest-benchmark's name of the pipeline's row: what one round of it covers."""
        return f"gradood: {len(self.plan)} settings x {self.sample.images} images"

    @property
    def official_row(self) -> str:
        """pytest-benchmark's name of the official loop's row (the baseline of the summary's
        ``protocol speedup``, a ratio per image: the rows' times over their images)."""
        images = self.sample.official_images
        return f"official (baseline): 1 setting x {images} image{'s' if images > 1 else ''}"


@pytest.fixture(scope="module")
def protocol(request, tmp_path_factory, zoo, device) -> ProtocolSetup:
    """The sample, opened as the protocol, with BiT-S-R101x1; under ``--benchmark-disable``
    (nothing is timed, the code paths run once) a miniature BiT-style network instead."""
    sample = _protocol_sample(device)
    miniature = make_imagenet_layout(
        tmp_path_factory.mktemp("imagenet-sample"),
        classes=sample.classes,
        images_per_class=sample.per_class,
        ood_counts=dict.fromkeys(("iNaturalist", "SUN", "Places", "Textures"), sample.per_ood_set),
        texture_classes=1,
        image_size=SAMPLE_IMAGE_SIZE,
    )
    benchmark = miniature.open()
    id_set = benchmark.test_sets(known=True, unknown=False)[0]
    assert len(id_set) + sum(len(d) for d in benchmark.test_sets(known=False)) == sample.images
    official_inputs = torch.stack([id_set[i][0] for i in range(sample.official_images)])
    plan = measurement_plan(paper_checks(PROTOCOL_TABLES), "imagenet", "forward")
    if request.config.getoption("benchmark_disable"):
        model = BigTransferStyleNet(num_classes=BIT.num_classes).eval().to(device)
    else:
        model = zoo.model(BIT)
    return ProtocolSetup(sample, benchmark, model, official_inputs.to(device), plan)


def _protocol_rounds(work: Callable[[], object], benchmark, device: str) -> int:
    """One round on the CPU (seconds per image of BiT at 480 px; the model is warm from the
    matrix, and a cold first round only makes the extrapolation an upper bound); on the GPU a
    warm-up and at least two rounds."""
    if benchmark.disabled or torch.device(device).type == "cpu":
        return 1
    return calibrated_rounds(work, device, 0, min_rounds=2)


def _gradnorm_settings(plan: list) -> int:
    return sum(m.detector == "gradnorm" for m in plan)


def test_imagenet_protocol_pipeline(protocol: ProtocolSetup, benchmark, side_by_side, device):
    """All of Table 1 (Mahalanobis apart) and Tables 7 and 8 from raw images, on the sample."""
    sample = protocol.sample

    def pipeline() -> dict:
        return measure(
            protocol.benchmark,
            protocol.model,
            protocol.plan,
            group="forward",
            preset="imagenet",
            device=device,
            batch_size=sample.batch_size,
            num_workers=sample.num_workers,
            progress=False,
        )

    rounds = _protocol_rounds(pipeline, benchmark, device)
    rows = side_by_side.measure(
        benchmark, protocol.group, protocol.pipeline_row, pipeline, rounds, 0
    )
    ood_sets = [source.name for source in protocol_class("imagenet").ood_sources]
    assert {(m, ood) for m in protocol.plan for ood in ood_sets} <= rows.keys()
    assert _gradnorm_settings(protocol.plan) == 24  # 10 norms + 15 temperatures, L1 at T = 1 shared
    benchmark.extra_info.update(
        images=sample.images, batch_size=sample.batch_size, num_workers=sample.num_workers
    )


def test_imagenet_protocol_official_per_sample(
    protocol: ProtocolSetup, benchmark, side_by_side, device
):
    """The official GradNorm loop (batch size 1, forward + backward) on decoded sample images."""
    x = protocol.official_inputs

    def official() -> Tensor:
        return official_per_sample(protocol.model, x)

    rounds = _protocol_rounds(official, benchmark, device)
    scores = side_by_side.measure(
        benchmark, protocol.group, protocol.official_row, official, rounds, 0
    )
    _check_scores(scores, x.shape[0])
    benchmark.extra_info["images"] = x.shape[0]


def test_imagenet_protocol_time(protocol: ProtocolSetup, side_by_side, speed_check, device):
    """The protocol's time extrapolated from the sample, beside the official per-sample GradNorm.

    gradood: one pass over the 85,640 images gives all 27 settings; the sample's time per image
    includes the fixed costs (data loaders, metrics), so the extrapolation is an upper bound.
    The official code scores one setting per run (L1 only, and an integer temperature: other
    norms and T < 1 need edits), with one forward + backward pass per image: Tables 7 and 8 need
    24 passes (10 norms at T = 1 and 15 temperatures at L1, L1 at T = 1 shared), Table 1's
    GradNorm one of them. Counted with the ID set scored once per setting (85,640 images).
    Data loading is left out of the official time (its 8 workers can hide it behind batch-1
    passes on a GPU), which favours it. Target: all 27 settings cost less than the official
    code's one setting (single rounds: no spread).
    """
    sample = protocol.sample
    try:
        pipeline_s = side_by_side.fastest[(protocol.group, protocol.pipeline_row)] / sample.images
        official_s = side_by_side.fastest[(protocol.group, protocol.official_row)]
        official_s /= sample.official_images
    except KeyError:
        pytest.skip("the pipeline and the official loop were not both timed in this run")
    expected = protocol_class("imagenet").paper_expected
    names = ["ImageNet-1k val", *(s.name for s in protocol_class("imagenet").ood_sources)]
    images = sum(expected[name].images for name in names)
    gradood_s = pipeline_s * images
    official_one_setting_s = official_s * images
    note = (
        f"ImageNet protocol per image: official {official_s:.3g} s, gradood {pipeline_s:.3g} s; "
        f"all: {_duration(official_one_setting_s)} vs {_duration(gradood_s)}"
    )
    speed_check(
        SpeedCheck(
            f"{BIT.name} {BIT.size}px",
            f"protocol speedup: {len(protocol.plan)} settings vs 1",
            official_one_setting_s / gradood_s,
            Target(1.0),
            note,
        )
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
