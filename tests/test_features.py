"""Feature extraction: equal to a direct forward pass, cached, keyed by every input, resumable,
written atomically, and sharded across processes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torchvision.transforms as T
from corruption import flip_exponent_bit
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision.datasets import ImageFolder

from gradood.features import CacheError, Features, extract_features
from gradood.testing import BigTransferStyleNet, SmallCNN, write_image_folder

# float64 everywhere: the extraction and the direct forward do the same arithmetic, batched
# differently; batching changes summation order at most, a relative error of a few float64 ulps
# per layer, far below this tolerance
RTOL = 1e-12


class Counted:
    """Counts the samples that pass through the models' forward. A class attribute, so that the
    count is not part of the models' fingerprints (instance attributes are)."""

    samples = 0
    fail_after_batches: int | None = None

    @classmethod
    def record(cls, x: torch.Tensor) -> None:
        if cls.fail_after_batches is not None:
            if cls.fail_after_batches == 0:
                raise RuntimeError("simulated interruption")
            cls.fail_after_batches -= 1
        cls.samples += x.shape[0]


class CountingCNN(SmallCNN):
    def forward(self, x):
        Counted.record(x)
        return super().forward(x)


class CountingBiT(BigTransferStyleNet):
    def forward(self, x):
        Counted.record(x)
        return super().forward(x)


@pytest.fixture(autouse=True)
def reset_counter():
    Counted.samples, Counted.fail_after_batches = 0, None
    yield
    Counted.fail_after_batches = None


def make_model(kind: str = "cnn", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = (CountingCNN(num_classes=5) if kind == "cnn" else CountingBiT(num_classes=5)).double()
    for module in model.modules():  # non-trivial statistics, so that evaluation mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def tensor_dataset(size: int = 20, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 3, 8, 8, generator=generator, dtype=torch.float64)
    return TensorDataset(x, torch.arange(size) % 5)


def to_double(tensor):
    return tensor.double()


def image_transform(mean: float = 0.5) -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize((mean,) * 3, (0.25,) * 3), T.Lambda(to_double)])


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    write_image_folder(root, {"cat": 6, "dog": 5}, size=(8, 8), seed=1)
    return root


def direct(model, dataset, layers=None):
    """The reference: the model on the stacked dataset, the head's input by a hook."""
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    head = model.fc if hasattr(model, "fc") else model.head.conv
    captured = {}

    def keep(name, value):  # a forward hook that returns None leaves the output alone
        captured[name] = value

    handles = [head.register_forward_hook(lambda m, i, o: keep("h", i[0]))]
    for name, path in (layers or {}).items():
        hook = lambda m, i, o, name=name: keep(name, o.mean(dim=(2, 3)))  # noqa: E731
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    extras = {name: captured[name] for name in layers or {}}
    return Features(logits, captured["h"].flatten(1), labels, extras)


def assert_same(actual: Features, expected: Features, rtol: float = RTOL) -> None:
    torch.testing.assert_close(actual.logits, expected.logits, rtol=rtol, atol=0)
    torch.testing.assert_close(actual.features, expected.features, rtol=rtol, atol=0)
    assert torch.equal(actual.labels, expected.labels)
    assert actual.extras.keys() == expected.extras.keys()
    for name in expected.extras:
        torch.testing.assert_close(actual.extras[name], expected.extras[name], rtol=rtol, atol=0)


def extract(model, dataset, cache_dir=None, **kwargs) -> Features:
    kwargs = {"batch_size": 4, "chunk_size": 8, "progress": False, **kwargs}
    return extract_features(model, dataset, cache_dir=cache_dir, **kwargs)


@pytest.mark.parametrize("kind", ["cnn", "bit"])
def test_equals_a_direct_forward_pass(kind, folder, tmp_path):
    model = make_model(kind)
    layers = {"conv": "features.2"} if kind == "cnn" else {"body": "body.2", "root": "root.conv"}
    for dataset in (tensor_dataset(), ImageFolder(folder, transform=image_transform())):
        expected = direct(model, dataset, layers)
        assert_same(extract(model, dataset, extra_layers=layers), expected)
        cached = extract(model, dataset, tmp_path / "cache", extra_layers=layers)
        assert_same(cached, expected)
        assert_same(extract(model, dataset, tmp_path / "cache", extra_layers=layers), cached, 0)


def test_reductions_of_extra_layers():
    model, dataset = make_model(), tensor_dataset(6)
    maps = {}
    handle = model.features[2].register_forward_hook(lambda m, i, o: maps.update(o=o))
    with torch.no_grad():
        model(torch.stack([dataset[i][0] for i in range(6)]))
    handle.remove()
    layer = {"conv": "features.2"}
    for reduction, expected in [
        ("flatten", maps["o"].flatten(1)),
        ("none", maps["o"]),
        (lambda o: o.amax(dim=(2, 3)), maps["o"].amax(dim=(2, 3))),
    ]:
        found = extract(model, dataset, extra_layers=layer, reduction=reduction).extras["conv"]
        torch.testing.assert_close(found, expected, rtol=RTOL, atol=0)


def test_a_cache_hit_does_not_run_the_model(folder, tmp_path):
    model = make_model()
    dataset = ImageFolder(folder, transform=image_transform())
    first = extract(model, dataset, tmp_path / "cache")
    assert Counted.samples == len(dataset)
    again = extract(
        model, ImageFolder(str(folder), transform=image_transform()), tmp_path / "cache"
    )
    assert Counted.samples == len(dataset)
    assert_same(again, first, rtol=0)
    # the result survives as one file; the chunks are gone
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        p.name for p in (tmp_path / "cache").glob("features-*.pt")
    ]


def _changed_weights(model, dataset, folder):
    with torch.no_grad():
        model.fc.weight[0, 0] += 1e-9
    return model, dataset


def _changed_buffer(model, dataset, folder):
    with torch.no_grad():
        model.features[1].running_var[0] *= 1.001
    return model, dataset


def _changed_transform(model, dataset, folder):
    return model, ImageFolder(folder, transform=image_transform(mean=0.4))


def _changed_lambda(model, dataset, folder):
    # the same repr ("Lambda()") and the same output type, another function
    transform = image_transform()
    transform.transforms[-1] = T.Lambda(lambda t: t.double() * 1.5)
    return model, ImageFolder(folder, transform=transform)


def _modified_file(model, dataset, folder):
    path = folder / "dog" / "0002.png"
    stat = os.stat(path)
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(path)
    # a later modification time, also where the file system's clock is coarse
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    return model, ImageFolder(folder, transform=image_transform())


def _added_file(model, dataset, folder):
    write_image_folder(folder, {"bird": 1}, size=(8, 8), seed=5)
    return model, ImageFolder(folder, transform=image_transform())


@pytest.mark.parametrize(
    "change",
    [
        _changed_weights,
        _changed_buffer,
        _changed_transform,
        _changed_lambda,
        _modified_file,
        _added_file,
    ],
)
def test_a_changed_input_misses_the_cache(change, folder, tmp_path):
    model = make_model()
    dataset = ImageFolder(folder, transform=image_transform())
    extract(model, dataset, tmp_path / "cache")
    model, dataset = change(model, dataset, folder)
    Counted.samples = 0
    result = extract(model, dataset, tmp_path / "cache")
    assert Counted.samples == len(dataset)
    assert_same(result, direct(model, dataset))
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 2


@pytest.mark.parametrize(
    "setting",
    [{"extra_layers": {"conv": "features.2"}}, {"head": "fc"}, {"key_extra": "v2"}],
    ids=["extra-layers", "explicit-head-same-key", "key-extra"],
)
def test_extraction_settings_are_part_of_the_key(setting, tmp_path):
    model, dataset = make_model(), tensor_dataset(10)
    extract(model, dataset, tmp_path)
    Counted.samples = 0
    extract(model, dataset, tmp_path, **setting)
    # naming the head that would be found anyway gives the same key
    assert Counted.samples == (0 if "head" in setting else len(dataset))


def test_training_mode_warns_and_is_part_of_the_key(tmp_path):
    model, dataset = make_model(), tensor_dataset(10)
    extract(model, dataset, tmp_path)
    model.train()
    Counted.samples = 0
    with pytest.warns(UserWarning, match="training mode"):
        extract(model, dataset, tmp_path)
    assert Counted.samples == len(dataset)


def test_an_interrupted_extraction_resumes(tmp_path):
    model, dataset = make_model(), tensor_dataset(20)
    uninterrupted = extract(model, dataset)  # chunks of 8 samples, batches of 4
    Counted.samples, Counted.fail_after_batches = 0, 3
    with pytest.raises(RuntimeError, match="simulated interruption"):
        extract(model, dataset, tmp_path)
    # batches 1 and 2 completed the first chunk; batch 3 was half of the second
    (chunk_dir,) = tmp_path.glob("features-*.chunks")
    assert [p.name for p in chunk_dir.iterdir()] == ["chunk-0000000000-0000000008.pt"]
    assert not list(tmp_path.glob("features-*.pt"))
    Counted.samples, Counted.fail_after_batches = 0, None
    resumed = extract(model, dataset, tmp_path)
    assert Counted.samples == 20 - 8
    assert_same(resumed, uninterrupted, rtol=0)
    assert not chunk_dir.exists()


def test_a_failed_write_leaves_no_file_and_user_files_alone(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "features-mine.pt").write_bytes(b"also mine")
    real_save = torch.save

    def save_then_fail(obj, file, *args, **kwargs):
        file.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_then_fail)
    model, dataset = make_model(), tensor_dataset(6)
    with pytest.raises(OSError, match="disk full"):
        extract(model, dataset, tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "features-mine.pt",
        "notes.txt",
    ]
    monkeypatch.setattr(torch, "save", real_save)
    extract(model, dataset, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "features-mine.pt").read_bytes() == b"also mine"
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".")]) == 0


def test_a_cache_file_that_does_not_match_its_name_is_an_error(tmp_path):
    model, dataset = make_model(), tensor_dataset(6)
    extract(model, dataset, tmp_path)
    (final,) = tmp_path.glob("features-*.pt")
    payload = torch.load(final, weights_only=True)
    payload["stop"] = 5
    torch.save(payload, final)
    with pytest.raises(CacheError, match=str(final.name)):
        extract(model, dataset, tmp_path)
    final.write_bytes(b"garbage")
    with pytest.raises(CacheError, match="cannot be read"):
        extract(model, dataset, tmp_path)


class RandomDataset(Dataset):
    """Exposes no data, and returns new values on every read."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.randn(3, 8, 8, dtype=torch.float64), 0


def test_an_unstable_dataset_is_not_cached(tmp_path):
    with pytest.warns(UserWarning, match="not using the cache.*differs between two reads"):
        result = extract(make_model(), RandomDataset(), tmp_path)
    assert len(result) == 4
    assert not list(tmp_path.iterdir())


SAMPLE_OFFSET = {"value": 0.0}  # read by IndexSeeded, invisible to its fingerprint


class IndexSeeded(Dataset):
    """Exposes no data; deterministic per index: keyed by the content of every sample."""

    def __len__(self):
        return 6

    def __getitem__(self, index):
        value = index + SAMPLE_OFFSET["value"]
        return torch.full((3, 8, 8), value, dtype=torch.float64), index % 5


def test_an_opaque_deterministic_dataset_is_keyed_by_its_samples(tmp_path, monkeypatch):
    model = make_model()
    extract(model, IndexSeeded(), tmp_path)
    extract(model, IndexSeeded(), tmp_path)
    assert Counted.samples == 6
    monkeypatch.setitem(SAMPLE_OFFSET, "value", 0.5)  # changes the first sample
    extract(model, IndexSeeded(), tmp_path)
    assert Counted.samples == 12


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"extra_layers": {"x": "no.such"}}, "has no module 'no.such'"),
        ({"reduction": "max"}, "reduction must be one of"),
        ({"loader_kwargs": {"shuffle": True}}, "must not set shuffle"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"chunk_size": 2.5}, "chunk_size must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        extract(make_model(), tensor_dataset(4), **kwargs)


def test_bad_datasets_are_named():
    with pytest.raises(ValueError, match="empty"):
        extract(make_model(), tensor_dataset(0))
    triples = TensorDataset(torch.zeros(2, 3, 8, 8).double(), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="pairs"):
        extract(make_model(), triples)


class InPlaceRescaled(CountingCNN):
    """Rescales the head's output in place: the storage stays the head's, the values do not."""

    def forward(self, x):
        out = super().forward(x)
        out /= 2.0
        return out


def test_an_in_place_change_after_the_head_is_an_error():
    model = make_model()
    rescaled = InPlaceRescaled(num_classes=5).double().eval()
    rescaled.load_state_dict(model.state_dict())
    with pytest.raises(
        ValueError, match=r"not the output of its head 'fc' \(a layer or an in-place"
    ):
        extract(rescaled, tensor_dataset(4))
    logits_only = extract(rescaled, tensor_dataset(4), penultimate=False)
    expected = direct(model, tensor_dataset(4))
    torch.testing.assert_close(logits_only.logits, expected.logits / 2, rtol=RTOL, atol=0)
    assert logits_only.features.shape == (4, 0)


def test_logits_only_needs_no_head(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten()
    )
    model = model.double().eval()
    dataset = tensor_dataset(6)
    with torch.no_grad():
        expected = model(dataset.tensors[0])
    for cache_dir in (None, tmp_path, tmp_path):  # computed, then written and read back
        found = extract(model, dataset, cache_dir, penultimate=False)
        torch.testing.assert_close(found.logits, expected, rtol=RTOL, atol=0)
    with pytest.raises(ValueError, match="head= selects the penultimate features"):
        extract(model, dataset, penultimate=False, head="0")


def test_bf16_autocast_is_keyed_and_close_to_float32(tmp_path, device):
    model = make_model().float().to(device)
    dataset = TensorDataset(tensor_dataset(8).tensors[0].float(), torch.arange(8) % 5)
    full = extract(model, dataset, tmp_path)
    half = extract(model, dataset, tmp_path, bf16=True)
    assert Counted.samples == 16
    assert half.logits.dtype == torch.float32
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3 per operation); over
    # two convolutions, normalizations and the head the error grows to about 1e-2 of the scale
    scale = full.logits.abs().max()
    torch.testing.assert_close(half.logits, full.logits, rtol=0, atol=float(5e-2 * scale))


def test_features_objects():
    part = Features(torch.zeros(3, 2), torch.ones(3, 4), torch.arange(3), {"a": torch.ones(3, 1)})
    joined = Features.cat([part, part[1:]])
    assert len(joined) == 5
    assert torch.equal(joined.labels, torch.tensor([0, 1, 2, 1, 2]))
    assert joined.extras["a"].shape == (5, 1)
    with pytest.raises(ValueError, match="one row per label"):
        Features(torch.zeros(2, 2), torch.ones(3, 4), torch.arange(3))


def _extract_as_torchrun_would(rank, port, cache_dir, results):
    # torchrun's environment; extract_features initializes the process group from it (gloo)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    Counted.samples = 0
    features = extract(make_model("bit"), tensor_dataset(27), cache_dir, chunk_size=4)
    torch.save({"features": features, "samples": Counted.samples}, results / f"rank{rank}.pt")
    # no dist.destroy_process_group(): the forked process ends with os._exit, which releases the
    # group, and on torch < 2.8 destroying a gloo group can deadlock (its destructor keeps the
    # GIL while joining a worker thread that needs it to free a finished collective's tensors)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("cached", [True, False], ids=["shared-cache-dir", "in-memory"])
def test_two_processes_share_the_extraction(cached, tmp_path):
    """2 CPU processes (gloo) with torchrun's environment: each extracts its chunks, through a
    shared cache directory or in memory, and both get everything."""
    # fork: the children inherit the imported modules, so they start in milliseconds
    mp.start_processes(
        _extract_as_torchrun_would,
        args=(_free_port(), tmp_path / "cache" if cached else None, tmp_path),
        nprocs=2,
        start_method="fork",
    )
    single = extract(make_model("bit"), tensor_dataset(27))
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for result in results:
        assert_same(result["features"], single, rtol=0)
    # 7 chunks of 4 (the last of 3): rank 0 takes chunks 0, 2, 4, 6 and rank 1 chunks 1, 3, 5
    assert [result["samples"] for result in results] == [4 + 4 + 4 + 3, 4 + 4 + 4]
    if cached:
        assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".pt"]


# -- issue 13: a key that is sound for every dataset, randomness, races, corruption ----------


class PathList(Dataset):
    """Keeps its files under a name the fingerprint does not know (``paths``)."""

    def __init__(self, paths):
        self.paths = [str(path) for path in paths]
        self.transform = image_transform()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), index % 5


def test_a_custom_dataset_with_a_changed_file_misses_the_cache(folder, tmp_path):
    paths = sorted(folder.rglob("*.png"))
    model = make_model()
    extract(model, PathList(paths), tmp_path / "cache")
    # not the first, middle or last sample: a key of three samples does not see it
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(paths[3])
    Counted.samples = 0
    result = extract(model, PathList(paths), tmp_path / "cache")
    assert Counted.samples == len(paths)
    assert_same(result, direct(model, PathList(paths)))


class TransformedTensors(Dataset):
    """Tensors (a known data source) through a transform."""

    def __init__(self, transform):
        self.inputs = tensor_dataset(8).tensors[0]
        self.transform = transform

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return self.transform(self.inputs[index]), index % 5


def add_noise(tensor):
    return tensor + torch.rand_like(tensor)


def random_image_transform():
    return T.Compose([T.RandomResizedCrop(8), T.ToTensor(), T.Lambda(to_double)])


@pytest.mark.parametrize(
    ("make_dataset", "reason"),
    [
        (lambda folder: TransformedTensors(T.RandomHorizontalFlip()), "RandomHorizontalFlip"),
        # a random op no class name reveals: two reads of the same sample differ
        (lambda folder: TransformedTensors(T.Lambda(add_noise)), "differs between two reads"),
        (lambda folder: ImageFolder(folder, transform=random_image_transform()), "RandomResized"),
    ],
    ids=["tensors-flip", "tensors-noise", "image-folder-crop"],
)
def test_a_random_transform_is_never_cached(make_dataset, reason, folder, tmp_path):
    dataset = make_dataset(folder)
    with pytest.warns(UserWarning, match=f"not using the cache.*{reason}"):
        result = extract(make_model(), dataset, tmp_path / "cache")
    assert len(result) == len(dataset)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def _race(barrier, trials, cache_root, results, rank):
    """One of two processes extracting the same thing into one cache directory per trial."""
    model, dataset = make_model(), tensor_dataset(48)
    for trial in range(trials):
        barrier.wait(timeout=30)  # both start each trial together
        Counted.samples = 0
        features = extract(model, dataset, cache_root / str(trial), batch_size=2, chunk_size=2)
        torch.save({**features._tensors(), "run": Counted.samples}, results / f"{trial}-{rank}.pt")


def test_two_processes_racing_on_one_cache_dir(tmp_path):
    """Independent processes (not ranks of one run), 10 trials: both succeed with the same
    result, one of them runs the model, and each trial leaves exactly the final file."""
    context = torch.multiprocessing.get_context("fork")  # children inherit the imports
    barrier, trials = context.Barrier(2), 10
    processes = [
        context.Process(target=_race, args=(barrier, trials, tmp_path / "cache", tmp_path, rank))
        for rank in (0, 1)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    # the same batches as in the processes: the same arithmetic, the same bits
    expected = extract(make_model(), tensor_dataset(48), batch_size=2, chunk_size=2)._tensors()
    for trial in range(trials):
        found = [torch.load(tmp_path / f"{trial}-{r}.pt", weights_only=True) for r in (0, 1)]
        for result in found:
            for name in ("logits", "features", "labels"):
                assert torch.equal(result[name], expected[name])
        # one process ran the model; the other waited and read its result
        assert sorted(result["run"] for result in found) == [0, 48]
        left = sorted(p.name for p in (tmp_path / "cache" / str(trial)).rglob("*"))
        assert len(left) == 1 and left[0].startswith("features-") and left[0].endswith(".pt")


def test_a_flipped_bit_in_a_cached_tensor_is_an_error(tmp_path):
    model, dataset = make_model(), tensor_dataset(6)
    expected = extract(model, dataset, tmp_path)
    (final,) = tmp_path.glob("features-*.pt")
    flip_exponent_bit(final, expected.features[2, 1])  # a float64 feature
    with pytest.raises(CacheError, match=f"{final.name}.*checksum"):
        extract(model, dataset, tmp_path)
    Counted.samples = 0
    again = extract(model, dataset, tmp_path, recompute=True)
    assert Counted.samples == len(dataset)
    assert_same(again, expected, rtol=0)
    assert_same(extract(model, dataset, tmp_path), expected, rtol=0)


def _write_bmp(path: Path, value: int) -> None:
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)  # uncompressed


def test_hash_files_sees_a_rewrite_that_keeps_size_and_mtime(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    paths = [tmp_path / "images" / "a" / f"{i}.bmp" for i in range(3)]
    for index, path in enumerate(paths):
        _write_bmp(path, 10 * index)
    model = make_model()

    def dataset():
        return ImageFolder(tmp_path / "images", transform=image_transform())

    for hash_files in (False, True):
        extract(model, dataset(), tmp_path / "cache", hash_files=hash_files)
    # other pixels, the same size and modification time: only the bytes tell
    stat = os.stat(paths[1])
    _write_bmp(paths[1], 99)
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(paths[1]).st_size == stat.st_size
    Counted.samples = 0
    extract(model, dataset(), tmp_path / "cache")  # keyed by size and time: a hit
    assert Counted.samples == 0
    result = extract(model, dataset(), tmp_path / "cache", hash_files=True)
    assert Counted.samples == 3
    assert_same(result, direct(model, dataset()))
