"""The CIFAR-10 and CIFAR-100 protocols on generated miniatures: contents, order, labels,
preprocessing, the checks of every dataset, the Places365 sample, downloads."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from download_server import Served, local_server
from PIL import Image
from pytorch_ood.dataset.img import Textures
from pytorch_ood.detector import MaxSoftmax
from torchvision.datasets import CIFAR10, SVHN, Places365

import gradood.protocols.places365 as places365_module
from gradood.models import CIFAR_RESNET20
from gradood.protocols import (
    PLACES365_SEED,
    CIFAR10GradNorm,
    CIFAR100GradNorm,
    DatasetNotFoundError,
    Expected,
    ExpectedData,
    protocol_class,
    sample_places365,
)
from gradood.protocols.places365 import (
    PLACES365_BASE_URL,
    PLACES365_CATEGORIES,
    PLACES365_DEVKIT,
    PLACES365_TEST_IMAGES,
    PLACES365_TEST_LIST,
    Places365SampleSource,
    Places365TestImages,
)
from gradood.testing import SmallCNN, forbid_downloads, make_cifar_layout

OOD_NAMES = ["SVHN", "LSUN (crop)", "Places365", "Textures"]
PROTOCOLS = {
    "cifar10": ("CIFAR-10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR-100", "cifar-100-python"),
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    forbid_downloads(monkeypatch)


@pytest.fixture
def layouts(tmp_path):
    return make_cifar_layout(tmp_path / "data")


def _labels(dataset):
    return [dataset[i][1] for i in range(len(dataset))]


def _size(image):
    return image.size


def _unchanged(image):
    return image


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_opens_a_complete_miniature_in_the_papers_order(layouts, protocol):
    layout = layouts[protocol]
    benchmark = layout.open(transform=_size)
    name, folder = PROTOCOLS[protocol]
    test_labels = _labels(benchmark.test_in)

    assert benchmark.ood_names == OOD_NAMES == protocol_class(protocol).ood_names
    with open(
        layout.root / folder / ("test_batch" if protocol == "cifar10" else "test"), "rb"
    ) as f:
        stored = pickle.load(f)
    assert test_labels == stored["labels" if protocol == "cifar10" else "fine_labels"]
    assert len(test_labels) == layout.expected[f"{name} test"].images and min(test_labels) >= 0
    for ood_name, combined in zip(OOD_NAMES, benchmark.test_sets(), strict=True):
        count = layout.expected[ood_name].images
        assert _labels(combined) == test_labels + [-1] * count
    assert len(benchmark.train_set()) == layout.expected[f"{name} train"].images
    assert all(
        0 <= y < layout.expected[f"{name} train"].classes for y in _labels(benchmark.train_set())
    )


def test_each_ood_set_serves_its_own_images(layouts):
    benchmark = layouts["cifar10"].open(transform=_unchanged)
    svhn, lsun, places, textures = benchmark.test_oods
    stored = scipy.io.loadmat(layouts["cifar10"].root / "svhn" / "test_32x32.mat")["X"]

    assert np.array_equal(np.asarray(svhn[0][0]), stored[..., 0])
    assert lsun[0][0].size == (36, 36)
    assert Path(places.dataset.imgs[places.indices[0]][0]).parent.name == "test_256"
    assert Path(textures.samples[0][0]).parts[-3:-1] == ("images", "banded")


def test_default_transform_crops_non_square_images_and_keeps_32x32_ones(layouts):
    benchmark = layouts["cifar10"].open()
    plain = CIFAR_RESNET20.transform()

    cifar_image = Image.fromarray(benchmark.test_in.data[0])
    assert torch.equal(benchmark.test_in[0][0], plain(cifar_image))
    places = benchmark.test_oods[2]
    square = Image.open(places.dataset.imgs[places.indices[0]][0])
    assert torch.equal(places[0][0], plain(square.resize((32, 32), Image.BILINEAR)))

    textures = benchmark.test_oods[3]
    for index, (path, _) in enumerate(textures.samples):
        image = Image.open(path).convert("RGB")
        # reference: shorter side to 32 (the longer one scaled and truncated, as torchvision
        # does), then the central 32 x 32 (offsets rounded half to even, as torchvision does)
        width, height = image.size
        scale = 32 / min(width, height)
        size = (32, int(height * scale)) if width <= height else (int(width * scale), 32)
        resized = image.resize(size, Image.BILINEAR)
        left, top = round((size[0] - 32) / 2), round((size[1] - 32) / 2)
        cropped = resized.crop((left, top, left + 32, top + 32))
        assert textures[index][0].shape == (3, 32, 32)
        assert torch.equal(textures[index][0], plain(cropped))


def test_datasets_pickle_for_dataloader_workers(layouts):
    benchmark = layouts["cifar10"].open()
    for dataset in benchmark.test_sets():
        copy = pickle.loads(pickle.dumps(dataset))
        assert len(copy) == len(dataset)
        assert torch.equal(copy[len(copy) - 1][0], dataset[len(dataset) - 1][0])
    expected = layouts["cifar10"].expected
    assert pickle.loads(pickle.dumps(expected)) == expected


def test_pytorch_ood_evaluate_runs_on_it(layouts):
    benchmark = layouts["cifar100"].open()
    results = benchmark.evaluate(MaxSoftmax(SmallCNN(num_classes=4).eval()), {"batch_size": 64})
    assert [r["Dataset"] for r in results] == OOD_NAMES


def _cifar_files(root: Path) -> list[Path]:
    return sorted((root / "cifar-10-batches-py").iterdir())


@pytest.mark.parametrize(
    ("damage", "path", "found", "source"),
    [
        (lambda r: shutil.rmtree(r / "cifar-10-batches-py"), "cifar-10-batches-py", 0, "CIFAR10("),
        (lambda r: (r / "svhn/test_32x32.mat").unlink(), "svhn", 0, "test_32x32.mat"),
        (lambda r: next((r / "LSUN/test").iterdir()).unlink(), "LSUN", 2, "LSUN.tar.gz"),
        (lambda r: shutil.rmtree(r / "dtd"), "dtd/images", 0, "dtd-r1.0.1.tar.gz"),
        (lambda r: (r / "places365/places365_test.txt").unlink(), "places365", 0, "test_256.tar"),
    ],
    ids=["cifar", "svhn", "lsun", "textures", "places365-list"],
)
def test_absent_or_incomplete_set_names_path_counts_and_source(
    layouts, damage, path, found, source
):
    layout = layouts["cifar10"]
    damage(layout.root)

    with pytest.raises(DatasetNotFoundError) as raised:
        layout.open()

    error = raised.value
    assert (error.path, error.found) == (layout.root / path, found)
    assert source in error.source
    assert f"found {found} " in str(error) and f"expected {error.expected:,}" in str(error)


def test_a_class_folder_without_images_is_counted_not_a_torchvision_error(layouts):
    layout = layouts["cifar10"]
    for image in (layout.root / "dtd/images/banded").iterdir():
        image.unlink()

    with pytest.raises(DatasetNotFoundError, match="incomplete") as raised:
        layout.open()

    assert (raised.value.path, raised.value.found, raised.value.expected) == (
        layout.root / "dtd/images",
        2,
        4,
    )


def test_places365_lists_are_md5_checked(layouts):
    layout = layouts["cifar10"]
    with pytest.raises(DatasetNotFoundError, match="md5 check") as raised:
        Places365SampleSource("Places365").open(
            layout.root,
            layout.expected["Places365"],
            transform=None,
            target_transform=None,
            verify_checksums=True,  # the generated lists are not the published ones
        )
    assert raised.value.found is None
    assert f"categories_places365.txt does not match {PLACES365_CATEGORIES[1]}" in str(raised.value)


_TORCHVISION_READS_PLACES365_TEST = ("test", True) in Places365._IMAGES_META


@pytest.mark.skipif(
    not _TORCHVISION_READS_PLACES365_TEST,
    reason="torchvision < 0.22: its Places365 has no test split to compare with",
)
def test_places365_test_images_are_torchvisions_test_split(layouts):
    class Unchecked(Places365):  # the generated lists fail the published md5s
        _CATEGORIES_META = (Places365._CATEGORIES_META[0], None)
        _FILE_LIST_META = {s: (f, None) for s, (f, _) in Places365._FILE_LIST_META.items()}

    folder = layouts["cifar10"].root / "places365"
    theirs = Unchecked(str(folder), split="test", small=True, transform=np.asarray)
    ours = Places365TestImages(folder, transform=np.asarray)

    assert ours.imgs == theirs.imgs and len(ours) == len(theirs) == 12
    for (our_image, our_target), (image, target) in zip(ours, theirs, strict=True):
        assert np.array_equal(our_image, image) and our_target is target is None
    # the published facts gradood states itself are torchvision's
    stated = [
        PLACES365_BASE_URL,
        PLACES365_DEVKIT,
        PLACES365_TEST_IMAGES,
        PLACES365_CATEGORIES,
        PLACES365_TEST_LIST,
    ]
    assert stated == [
        Places365._BASE_URL,
        Places365._DEVKIT_META["standard"],
        Places365._IMAGES_META[("test", True)],
        Places365._CATEGORIES_META,
        Places365._FILE_LIST_META["test"],
    ]


def test_places365_test_set_must_be_complete(layouts):
    layout = layouts["cifar10"]
    places = layout.open(transform=_size).test_oods[2]
    sampled = {places.dataset.imgs[i][0] for i in places.indices}
    images = layout.root / "places365" / "test_256"
    next(p for p in sorted(images.iterdir()) if str(p) not in sampled).unlink()

    with pytest.raises(DatasetNotFoundError, match="incomplete") as raised:
        layout.open()

    assert (raised.value.path, raised.value.found, raised.value.expected) == (images, 11, 12)


def test_counts_must_be_exact(layouts):
    layout = layouts["cifar10"]
    counts = {**layout.expected.counts, "CIFAR-10 test": Expected(7, classes=3)}

    with pytest.raises(DatasetNotFoundError, match="found 6 images, expected 7"):
        layout.open(expected=ExpectedData(counts, verify_checksums=False))


def test_checksums_are_verified_by_default(layouts):
    layout = layouts["cifar10"]
    files = {p: p.read_bytes() for p in _cifar_files(layout.root)}

    with pytest.raises(DatasetNotFoundError, match="md5") as raised:
        layout.open(expected=ExpectedData(layout.expected.counts))  # verify_checksums=True
    assert raised.value.found is None
    assert "expected 6 images, found files that fail the check" in str(raised.value)
    with pytest.raises(DatasetNotFoundError, match="expected 10,000"):
        CIFAR10GradNorm(layout.root)  # the paper's counts and checksums
    assert {p: p.read_bytes() for p in _cifar_files(layout.root)} == files


def test_missing_lists_exactly_what_is_missing(layouts):
    layout = layouts["cifar100"]
    assert layout.missing(include_train=True) == []
    (layout.root / "svhn/test_32x32.mat").unlink()
    shutil.rmtree(layout.root / "LSUN")
    assert [m.name for m in layout.missing(include_train=True)] == ["SVHN", "LSUN (crop)"]

    # torchvision reads a CIFAR split only if all of the folder's files are there
    (layout.root / "cifar-100-python/train").unlink()
    missing = layout.missing(include_train=True)
    assert [m.name for m in missing] == ["CIFAR-100 test", "SVHN", "LSUN (crop)", "CIFAR-100 train"]
    assert missing[0].problem == "not found (missing train)"


def test_the_papers_counts(layouts):
    for cls, name in ((CIFAR10GradNorm, "CIFAR-10"), (CIFAR100GradNorm, "CIFAR-100")):
        classes = 10 if cls is CIFAR10GradNorm else 100
        assert cls.paper_expected.verify_checksums
        assert cls.paper_expected.counts == {
            f"{name} test": Expected(10_000, classes=classes),
            f"{name} train": Expected(50_000, classes=classes),
            "SVHN": Expected(26_032),
            "LSUN (crop)": Expected(10_000),
            "Places365": Expected(10_000, drawn_from=328_500),
            "Textures": Expected(5_640, classes=47),
        }
        assert cls.paper_tables == ("Table 6",) and cls.detector_preset == cls.name
        assert cls.preprocessing == CIFAR_RESNET20


# -- the Places365 sample ------------------------------------------------------------------


def _documented_sample(names, size, seed):
    """docs/datasets.md's recipe, step by step: hex SHA-256 of f"{seed}:{name}", smallest first."""
    digests = {hashlib.sha256(f"{seed}:{name}".encode()).hexdigest(): name for name in names}
    chosen = {digests[d] for d in sorted(digests)[:size]}
    return [i for i, name in enumerate(names) if name in chosen]


def test_places365_sample_is_reproducible_and_the_documented_one(layouts, tmp_path):
    layout = layouts["cifar10"]
    first = layout.open(transform=_size).test_oods[2]
    second = layout.open(transform=_size).test_oods[2]
    names = [Path(p).name for p, _ in first.dataset.imgs]

    assert first.indices == second.indices
    assert len(first) == layout.expected["Places365"].images == 4
    assert first.indices == _documented_sample(names, 4, PLACES365_SEED)
    assert _labels(first) == [-1] * 4
    # another generated layout with the same names samples the same files
    other = make_cifar_layout(tmp_path / "other", seed=9)["cifar10"].open(transform=_size)
    assert other.test_oods[2].indices == first.indices


def test_sample_depends_on_the_names_only():
    names = [f"Places365_test_{k:08d}.jpg" for k in range(1, 501)]
    shuffled = random.Random(0).sample(names, len(names))

    chosen = [names[i] for i in sample_places365(names, 40)]

    assert sorted(shuffled[i] for i in sample_places365(shuffled, 40)) == chosen
    assert sample_places365(names, 40) == _documented_sample(names, 40, PLACES365_SEED)
    assert sample_places365(names, 40, seed=1) == _documented_sample(names, 40, 1)
    assert sample_places365(names, 40, seed=1) != sample_places365(names, 40)


def test_sample_of_the_real_size_is_spread_over_the_test_set():
    names = [f"Places365_test_{k:08d}.jpg" for k in range(1, 328_501)]

    indices = sample_places365(names, 10_000)

    assert len(set(indices)) == 10_000 and indices == sorted(indices)
    # a uniform sample puts Binomial(10,000, 1/10) ~ 1,000 +- 30 in each tenth of the list;
    # +-150 is 5 standard deviations
    per_tenth = np.bincount(np.asarray(indices) * 10 // len(names), minlength=10)
    assert np.all(np.abs(per_tenth - 1_000) < 150)


def test_sample_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cannot sample 3 of 2"):
        sample_places365(["a", "b"], 3)
    with pytest.raises(ValueError, match="repeat"):
        sample_places365(["a", "a"], 1)


# -- downloads -----------------------------------------------------------------------------


def test_no_download_is_attempted_without_download_true(layouts):
    # forbid_downloads (autouse) turns any download or connection into an AssertionError
    layout = layouts["cifar10"]
    for folder in ("cifar-10-batches-py", "svhn", "LSUN", "places365", "dtd"):
        shutil.rmtree(layout.root / folder)
    with pytest.raises(DatasetNotFoundError):
        layout.open()
    assert len(layout.missing()) == 5


def test_download_fetches_an_absent_svhn_with_torchvisions_url_and_md5(layouts, monkeypatch):
    layout = layouts["cifar10"]
    mat = layout.root / "svhn" / "test_32x32.mat"
    content = mat.read_bytes()
    mat.unlink()
    url, name, _ = SVHN.split_list["test"]
    # the miniature cannot match the published md5: torchvision's list is where it is read
    monkeypatch.setitem(SVHN.split_list, "test", [url, name, hashlib.md5(content).hexdigest()])
    served = Served({url: content})

    with local_server(served, monkeypatch):
        benchmark = layout.open(download=True, transform=_size)

    assert served.requests == [(url, None)]
    assert len(benchmark.test_oods[0]) == 5


def test_download_leaves_existing_files_alone(layouts):
    layout = layouts["cifar10"]
    (layout.root / "cifar-10-batches-py" / "data_batch_1").unlink()
    files = {p: p.read_bytes() for p in _cifar_files(layout.root)}

    # verified against the published md5s, the miniature fails; download must not replace it
    with pytest.raises(DatasetNotFoundError, match="never overwrites"):
        layout.open(download=True, expected=ExpectedData(layout.expected.counts))

    assert {p: p.read_bytes() for p in _cifar_files(layout.root)} == files


def test_download_never_overwrites_a_corrupted_archive(layouts):
    layout = layouts["cifar10"]
    shutil.rmtree(layout.root / "cifar-10-batches-py")
    archive = layout.root / "cifar-10-python.tar.gz"
    archive.write_bytes(b"truncated")

    with pytest.raises(FileExistsError, match="fails its md5"):
        layout.open(download=True)

    assert archive.read_bytes() == b"truncated"


def test_download_never_overwrites_places365_lists(layouts):
    layout = layouts["cifar10"]
    shutil.rmtree(layout.root / "places365" / "test_256")
    lists = {p: p.read_bytes() for p in (layout.root / "places365").iterdir()}
    with pytest.raises(FileExistsError, match="never overwrites"):
        layout.open(download=True)  # the generated lists fail the published md5s
    assert {p: p.read_bytes() for p in (layout.root / "places365").iterdir()} == lists


def _tar(source: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz" if archive.name.endswith("gz") else "w") as tar:
        tar.add(source, arcname=arcname)
    return archive


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_installs_absent_sets_from_their_published_archives(
    layouts, tmp_path, monkeypatch
):
    layout = layouts["cifar10"]
    root, served_dir = layout.root, tmp_path / "served"
    served_dir.mkdir()
    places, devkit = root / "places365", f"{PLACES365_BASE_URL}filelist_places365-standard.tar"
    test_images = f"{PLACES365_BASE_URL}test_256.tar"
    with tarfile.open(served_dir / "devkit.tar", "w") as tar:
        for name in ("categories_places365.txt", "places365_test.txt"):
            tar.add(places / name, arcname=name)
    archives = {
        CIFAR10.url: _tar(
            root / "cifar-10-batches-py", served_dir / "c.tar.gz", "cifar-10-batches-py"
        ),
        Textures.url: _tar(root / "dtd", served_dir / "t.tar.gz", "dtd"),
        devkit: served_dir / "devkit.tar",
        test_images: _tar(places / "test_256", served_dir / "p.tar", "test_256"),
    }
    # the miniatures cannot match the published md5s: the places they are read from
    monkeypatch.setattr(CIFAR10, "tgz_md5", _md5(archives[CIFAR10.url]))
    monkeypatch.setattr(
        places365_module, "PLACES365_DEVKIT", (devkit.rsplit("/")[-1], _md5(archives[devkit]))
    )
    monkeypatch.setattr(
        places365_module, "PLACES365_TEST_IMAGES", ("test_256.tar", _md5(archives[test_images]))
    )
    textures = next(s for s in CIFAR10GradNorm.ood_sources if s.name == "Textures")
    monkeypatch.setattr(
        textures, "archive", dataclasses.replace(textures.archive, md5=_md5(archives[Textures.url]))
    )
    for folder in ("cifar-10-batches-py", "dtd", "places365"):
        shutil.rmtree(root / folder)
    served = Served({url: path.read_bytes() for url, path in archives.items()})

    with local_server(served, monkeypatch):
        benchmark = layout.open(download=True, transform=_size)

    calls = [url for url, _ in served.requests]
    assert calls == [CIFAR10.url, devkit, test_images, Textures.url]
    assert [len(d) for d in benchmark.test_oods] == [5, 3, 4, 4]
    assert len(benchmark.test_in) == 6
    leftovers = {p.name for p in root.iterdir() if not p.name.startswith(".")} - {
        "cifar-10-batches-py",
        "cifar-100-python",
        "svhn",
        "LSUN",
        "places365",
        "dtd",
    }
    assert leftovers == {CIFAR10.filename, Textures.filename}  # the archives are kept
