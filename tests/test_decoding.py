"""The three decoding paths give the same inputs, within the stated resize tolerance.

The reference is the official code's path: PIL decodes and resizes (``Preprocessing.transform``).
On the CPU, torchvision and PIL decode JPEGs with the same library (identical pixels), so the
only difference is the resize kernel's rounding: at most 1 of 255 per pixel value.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from gradood import GradNorm, evaluate
from gradood.decoding import (
    DECODERS,
    DevicePreprocessing,
    TensorPreprocessing,
    decoding,
    read_encoded,
    read_rgb,
)
from gradood.features import default_num_workers, extract_features
from gradood.models.preprocessing import BIT_S_R101X1, CIFAR_RESNET20, Preprocessing
from gradood.protocols import ImageReadError
from gradood.testing import (
    forbid_downloads,
    make_cifar_layout,
    make_imagenet_layout,
    write_photo_like,
)

SMALL_BIT = Preprocessing(size=(48, 40), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
PREPROCESSINGS = [BIT_S_R101X1, CIFAR_RESNET20, SMALL_BIT]
# (height, width, mode, format): upscaled, downscaled, grey, CMYK, and a PNG named .JPEG
# (ImageNet holds such files)
IMAGES = [
    (375, 500, "RGB", "JPEG"),
    (900, 1200, "RGB", "JPEG"),
    (31, 47, "L", "JPEG"),
    (120, 90, "CMYK", "JPEG"),
    (64, 80, "RGB", "PNG"),
]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    return [
        write_photo_like(folder / f"{i}.JPEG", (h, w), seed=i, mode=mode, image_format=kind)
        for i, (h, w, mode, kind) in enumerate(IMAGES)
    ]


def _pil_path(path: Path, preprocessing: Preprocessing) -> torch.Tensor:
    with Image.open(path) as image:
        return preprocessing.transform()(image)


def _levels(difference: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """A difference of normalized inputs in pixel levels (of 255), per channel."""
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    return difference.abs() * std * 255


# one level of 255, plus float32 rounding of the normalization (far below 1e-3 levels)
LEVEL_TOLERANCE = 1 + 1e-3


@pytest.mark.parametrize("preprocessing", PREPROCESSINGS, ids=lambda p: "x".join(map(str, p.size)))
def test_tensor_and_device_paths_match_pil_within_one_level(image_files, preprocessing):
    tensor_path = TensorPreprocessing(preprocessing)
    device_path = DevicePreprocessing(preprocessing)
    batch = device_path([read_encoded(path) for path in image_files], "cpu")
    assert batch.shape == (len(image_files), 3, *preprocessing.size)
    for row, path in zip(batch, image_files, strict=True):
        reference = _pil_path(path, preprocessing)
        from_tensor = tensor_path(read_rgb(path))
        assert from_tensor.dtype == reference.dtype == torch.float32
        for candidate in (from_tensor, row):
            levels = _levels(candidate - reference, preprocessing)
            # how many values round the other way depends on the kernels (0.3 % of them with
            # torchvision 0.29, 20 % with 0.16); by how much does not
            assert levels.max() <= LEVEL_TOLERANCE, path.name
        torch.testing.assert_close(row, from_tensor, rtol=0, atol=0)


def test_decoders_agree_with_pil_pixel_for_pixel(image_files):
    """Without a resize, the tensor decoder is PIL's, to the pixel (CMYK and grey included)."""
    for path in image_files:
        with Image.open(path) as image:
            reference = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(read_rgb(path), reference), path.name


def test_each_loader_opens_a_file_with_pil_once(image_files, monkeypatch):
    """The header check and the decoding share one ``Image.open`` (one copy of the bytes): a
    JPEG (RGB, grey, CMYK) and a PNG on the tensor path, and the device path's loader."""
    opens = []
    real_open = Image.open

    def counted_open(*args, **kwargs):
        opens.append(args)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counted_open)
    for path in image_files:
        for loader in (read_rgb, read_encoded):
            opens.clear()
            loader(path)
            assert len(opens) == 1, (loader.__name__, path.name)


def test_tensor_path_takes_pil_images_from_arrays():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = TensorPreprocessing(CIFAR_RESNET20)(image)
    torch.testing.assert_close(out, CIFAR_RESNET20.transform()(image), rtol=0, atol=1e-6)


def test_bad_inputs_are_named(tmp_path, image_files):
    corrupt = tmp_path / "corrupt.JPEG"
    corrupt.write_bytes(image_files[0].read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cannot decode image '.*corrupt\.JPEG'"):
        DevicePreprocessing(SMALL_BIT)([read_encoded(corrupt)], "cpu")
    with pytest.raises(ValueError, match=r"needs encoded images .* got Image"):
        DevicePreprocessing.collate([(Image.new("RGB", (4, 4)), 0)])
    with pytest.raises(ValueError, match=r"3 x H x W uint8 RGB image, got torch.float32"):
        TensorPreprocessing(SMALL_BIT)(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"decoder must be one of \('pil', 'tensor', 'device'\)"):
        decoding(SMALL_BIT, "nvjpeg")


def test_default_workers_follow_the_device(monkeypatch):
    assert default_num_workers("cpu") == 0
    for usable, expected in [(1, 1), (2, 1), (16, 15), (64, 16)]:
        monkeypatch.setattr("os.sched_getaffinity", lambda _, n=usable: set(range(n)))
        assert default_num_workers("cuda") == expected


class _Pooled(nn.Module):
    """A classifier of the mean colour: the inputs decide its outputs, at negligible cost."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 4)
        torch.manual_seed(0)
        nn.init.normal_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


def _folder(root: Path, image_files: list[Path]) -> Path:
    for k, path in enumerate(image_files):
        (root / f"class{k % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"class{k % 2}" / path.name).write_bytes(path.read_bytes())
    return root


def test_extract_features_through_each_path(tmp_path, image_files):
    """Each path's features agree with PIL's; each is cached under its own key."""
    root = _folder(tmp_path / "folder", image_files)
    model = _Pooled().eval()
    results = {}
    for decoder in DECODERS:
        parts = decoding(SMALL_BIT, decoder)
        kwargs = {} if parts.loader is None else {"loader": parts.loader}
        dataset = ImageFolder(str(root), transform=parts.transform, **kwargs)
        results[decoder] = extract_features(
            model,
            dataset,
            batch_size=2,
            cache_dir=tmp_path / "cache",
            device_preprocessing=parts.device_preprocessing,
            progress=False,
        )
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == len(DECODERS)
    pil = results["pil"]
    for decoder in ("tensor", "device"):
        assert torch.equal(results[decoder].labels, pil.labels)
        # a mean over pixels moves by at most the largest per-pixel difference
        bound = LEVEL_TOLERANCE / (255 * 0.5)
        assert (results[decoder].features - pil.features).abs().max() <= bound
        weights = model.fc.weight.detach().abs().sum(1)
        assert ((results[decoder].logits - pil.logits).abs() <= weights * bound + 1e-6).all()


def test_encoded_images_cross_worker_processes(tmp_path, image_files):
    """The device path's encoded images and its collate work through DataLoader workers."""
    root = _folder(tmp_path / "folder", image_files)
    parts = decoding(SMALL_BIT, "device")
    dataset = ImageFolder(str(root), loader=parts.loader)
    model = _Pooled().eval()
    kwargs = {"batch_size": 2, "device_preprocessing": parts.device_preprocessing}
    in_workers = extract_features(model, dataset, num_workers=2, progress=False, **kwargs)
    in_process = extract_features(model, dataset, num_workers=0, progress=False, **kwargs)
    torch.testing.assert_close(in_workers.features, in_process.features, rtol=0, atol=0)


def test_protocol_decoders_give_the_same_inputs(tmp_path):
    """Every dataset of a protocol opened with each decoder: features as PIL's, within the
    bound; evaluate takes the benchmark's device stage for cached and raw-input detectors."""
    miniature = make_imagenet_layout(tmp_path / "data", image_size=(40, 56))
    model = _Pooled().eval()
    bound = LEVEL_TOLERANCE / (255 * 0.5)
    benchmarks = {decoder: miniature.open(decoder=decoder) for decoder in DECODERS}
    for index in range(len(benchmarks["pil"].test_oods) + 1):
        features = {}
        for decoder, benchmark in benchmarks.items():
            dataset = ([benchmark.test_in, *benchmark.test_oods])[index]
            features[decoder] = extract_features(
                model,
                dataset,
                device_preprocessing=benchmark.device_preprocessing,
                progress=False,
            ).features
        for decoder in ("tensor", "device"):
            assert (features[decoder] - features["pil"]).abs().max() <= bound
    table = evaluate(
        benchmarks["device"],
        {"head": GradNorm(model, head="fc"), "params": GradNorm(model, params=["fc.weight"])},
        batch_size=4,
        progress=False,
    )
    head, params = (table[table.method == name].reset_index() for name in ("head", "params"))
    # the same scores up to float32 rounding: at most one near-tied pair may swap
    one_pair = 1 / (head.n_id * head.n_ood)
    assert ((head.AUROC - params.AUROC).abs() <= one_pair).all()


def test_decoders_a_protocol_cannot_use_are_refused(tmp_path, monkeypatch):
    forbid_downloads(monkeypatch)
    miniature = make_cifar_layout(tmp_path / "data")["cifar10"]
    for decoder in ("tensor", "device"):
        with pytest.raises(ValueError, match=r"CIFAR10GradNorm reads images with decoder in"):
            miniature.open(decoder=decoder)
    imagenet = make_imagenet_layout(tmp_path / "imagenet")
    with pytest.raises(ValueError, match="it takes no transform="):
        imagenet.open(decoder="device", transform=lambda image: image)


def test_a_corrupt_file_is_named_with_its_index(tmp_path):
    miniature = make_imagenet_layout(tmp_path / "data")
    victim = sorted((tmp_path / "data" / "ood_data" / "SUN").rglob("*.jpg"))[1]
    victim.write_bytes(victim.read_bytes()[:100])
    benchmark = miniature.open(decoder="tensor")
    loader = DataLoader(benchmark.test_oods[1], batch_size=4)
    with pytest.raises(ImageReadError, match=r"cannot read image 1 of SUN \('.*00001\.jpg'\)"):
        next(iter(loader))


def test_encoded_images_round_trip(image_files):
    encoded = read_encoded(image_files[0])
    assert encoded.path == str(image_files[0])
    assert encoded.data.dtype == torch.uint8
    assert bytes(encoded.data.numpy()) == image_files[0].read_bytes()
    assert Image.open(io.BytesIO(bytes(encoded.data.numpy()))).size == (500, 375)
