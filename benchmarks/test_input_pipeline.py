"""The ImageNet protocol's input pipeline at the decode limit, side by side.

``extract_features`` reads each batch through a DataLoader (workers decode the JPEGs and resize
them to 480 x 480) and runs the model in the main process. Its images per second are measured
beside the **ceiling**: the same DataLoader arguments (workers, pinned memory, prefetch, batch
size, the device stage) over the same images, with nothing but the decoding, resizing and the
move to the device. Target: >= 0.8 of the ceiling, with the defaults
(``gradood.features.loader_arguments``) and as many workers as a GPU run gets on this machine
(``default_num_workers("cuda")``, at least one).

The model is a stand-in that costs next to nothing (mean colour into a linear head), so that
the ratio measures the pipeline's own cost (chunks, batch transfer, the gathering of outputs);
on a GPU, BiT-S-R101x1 runs beside the decoding in the same way. Each decoder of
:mod:`gradood.decoding` that runs on the device is measured (``"device"`` on CUDA only), and
the CPU time of ``"tensor"`` decoding against ``"pil"`` is reported (no target). On CUDA, the
device path's inputs are compared with PIL's (:mod:`gradood.decoding` states the tolerance).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gradood.decoding import DECODERS, DEVICE_MEAN_LEVELS, DevicePreprocessing, read_encoded
from gradood.features import default_num_workers, extract_features, loader_arguments
from gradood.harness.speed import synchronize
from gradood.harness.timing import PairedRounds, SpeedCheck, Target
from gradood.models.preprocessing import BIT_S_R101X1
from gradood.testing import make_imagenet_layout, write_photo_like

#: a typical ImageNet photo (height, width)
IMAGE_SIZE = (375, 500)
IMAGES = {"cpu": 64, "cuda": 1024}
BATCH = {"cpu": 16, "cuda": 128}
#: seconds of paired rounds per comparison (at least five rounds)
BUDGET_S = {"cpu": 2.0, "cuda": 6.0}
PIPELINE_TARGET = Target(0.8)


class MeanColour(nn.Module):
    """A classifier that costs nothing beside decoding: spatial mean into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def sample(tmp_path_factory, device):
    """JPEGs in the ImageNet layout; the ID set is the one read."""
    kind = torch.device(device).type
    per_class = IMAGES[kind] // 4
    return make_imagenet_layout(
        tmp_path_factory.mktemp("pipeline"),
        classes=4,
        images_per_class=per_class,
        image_size=IMAGE_SIZE,
    )


def _workers(device: str) -> int:
    return max(1, default_num_workers("cuda" if torch.device(device).type == "cpu" else device))


def _decoders(device: str) -> list[str]:
    return [d for d in DECODERS if d != "device" or torch.device(device).type == "cuda"]


def _ceiling(dataset: Dataset, stage, batch: int, workers: int, device: str) -> Callable:
    """Decoding, resizing and the move to the device alone, with extract_features's loader."""
    kwargs = loader_arguments(workers, None, torch.device(device), stage)
    loader = DataLoader(dataset, batch_size=batch, **kwargs)

    def read() -> int:
        count = 0
        for inputs, labels in loader:
            if stage is not None:
                inputs = stage(inputs, torch.device(device))
            else:
                inputs = inputs.to(device, non_blocking=True)
            count += len(labels)
        synchronize(device)
        return count

    return read


def _extraction(dataset: Dataset, stage, batch: int, workers: int, device: str) -> Callable:
    model = MeanColour().eval().to(device)

    def extract() -> int:
        features = extract_features(
            model,
            dataset,
            batch_size=batch,
            num_workers=workers,
            device=device,
            device_preprocessing=stage,
            progress=False,
        )
        return len(features)

    return extract


def _timed_ratio(benchmark, a: Callable, b: Callable, device: str) -> PairedRounds:
    rounds = PairedRounds(a, b, device)
    count = rounds.rounds_for(BUDGET_S[torch.device(device).type])
    benchmark.pedantic(rounds, rounds=count, warmup_rounds=0)
    return rounds


def _setting(decoder: str, batch: int, workers: int) -> str:
    return f"{decoder} 480px b{batch} w{workers}"


@pytest.mark.parametrize("decoder", DECODERS)
def test_extraction_at_the_decode_limit(decoder, sample, benchmark, speed_check, device):
    if decoder not in _decoders(device):
        pytest.skip("decoding on the device needs CUDA")
    if benchmark.disabled:
        pytest.skip("timing is disabled (--benchmark-disable)")
    kind = torch.device(device).type
    protocol = sample.open(decoder=decoder)
    dataset, stage = protocol.test_in, protocol.device_preprocessing
    batch, workers = BATCH[kind], _workers(device)
    ceiling = _ceiling(dataset, stage, batch, workers, device)
    extraction = _extraction(dataset, stage, batch, workers, device)
    assert ceiling() == extraction() == len(dataset)
    benchmark.group = "input pipeline"
    benchmark.name = f"extract_features / ceiling, {decoder}"
    # t_ceiling / t_extraction: the extraction's images/s as a fraction of the ceiling's
    ratio = _timed_ratio(benchmark, ceiling, extraction, device).result()
    check = SpeedCheck(
        _setting(decoder, batch, workers),
        "features / decode ceiling",
        ratio,
        PIPELINE_TARGET,
        f"input pipeline: {len(dataset)} JPEGs of {IMAGE_SIZE[1]} x {IMAGE_SIZE[0]} random pixels",
    )
    benchmark.extra_info.update(
        ratios=list(ratio.ratios), median=check.median, verdict=check.verdict, workers=workers
    )
    speed_check(check)


def test_tensor_decoding_speedup(sample, benchmark, speed_check, device):
    """CPU time per image of the ``"tensor"`` path against PIL's, in the main process."""
    if benchmark.disabled:
        pytest.skip("timing is disabled (--benchmark-disable)")
    pil, tensor = (sample.open(decoder=d).test_in for d in ("pil", "tensor"))
    indices = range(min(16, len(pil)))

    def read(dataset: Dataset) -> Callable[[], None]:
        return lambda: [dataset[i] for i in indices]

    benchmark.group = "input pipeline"
    benchmark.name = "decoding: pil / tensor"
    ratio = _timed_ratio(benchmark, read(pil), read(tensor), "cpu").result()
    speed_check(SpeedCheck("480px, one core", "decoding speedup tensor vs pil", ratio, Target()))


@pytest.mark.gradood_gpu
def test_device_decoding_matches_pil(tmp_path, device):
    """nvJPEG with the tensor resize against PIL, on photo-like JPEGs: the mean absolute
    difference of pixel values is below :data:`gradood.decoding.DEVICE_MEAN_LEVELS` of 255
    (the largest difference is printed)."""
    if torch.device(device).type != "cuda":
        pytest.skip("decoding on the device needs CUDA")
    sizes = [(375, 500), (500, 375), (900, 1200), (333, 500)] * 8
    paths = [write_photo_like(tmp_path / f"{k}.jpg", size, seed=k) for k, size in enumerate(sizes)]
    stage = DevicePreprocessing(BIT_S_R101X1)
    on_device = stage([read_encoded(path) for path in paths], torch.device(device)).cpu()
    pil = BIT_S_R101X1.transform()
    reference = torch.stack([pil(Image.open(path)) for path in paths])
    std = torch.tensor(BIT_S_R101X1.std).view(1, 3, 1, 1)
    levels = (on_device - reference).abs() * std * 255
    print(f"device decoding vs PIL: mean {levels.mean():.3f}, max {levels.max():.1f} of 255")
    assert levels.mean() < DEVICE_MEAN_LEVELS
