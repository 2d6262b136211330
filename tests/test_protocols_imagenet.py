"""The ImageNet protocol on generated miniatures: contents, order, labels, preprocessing, the
checks of every dataset, missing(), downloads only on request and never over files."""

from __future__ import annotations

import gc
import hashlib
import io
import re
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from download_server import Served, local_server
from PIL import Image
from pytorch_ood.detector import MaxSoftmax
from subset_archives import subset_archive

import gradood
from gradood.downloads import UnsafeArchiveError, recorded_sha256
from gradood.models import BIT_S_R101X1, Preprocessing
from gradood.protocols import (
    DatasetNotFoundError,
    Expected,
    ExpectedData,
    ImageNetGradNorm,
    available_protocols,
    make_protocol,
    protocol_class,
)
from gradood.protocols.imagenet import AUTHORS_OOD_URL
from gradood.testing import BigTransferStyleNet, forbid_downloads, make_imagenet_layout

OOD_NAMES = ["iNaturalist", "SUN", "Places", "Textures"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    forbid_downloads(monkeypatch)


@pytest.fixture
def layout(tmp_path):
    return make_imagenet_layout(tmp_path / "data", classes=3, images_per_class=2)


def _image_size(image):
    """A transform that keeps the test from decoding into tensors: the image's size."""
    return image.size


def _labels(dataset):
    return [dataset[i][1] for i in range(len(dataset))]


def _ood_folder(root: Path, name: str) -> Path:
    return root / "ood_data" / name


def test_opens_a_complete_miniature_in_the_papers_order(layout):
    benchmark = layout.open(transform=_image_size)
    counts = {name: layout.expected[name].images for name in OOD_NAMES}

    assert benchmark.ood_names == OOD_NAMES == ImageNetGradNorm.ood_names
    assert len(benchmark.test_in) == 6
    for name, ood, combined in zip(
        OOD_NAMES, benchmark.test_oods, benchmark.test_sets(), strict=True
    ):
        assert Path(ood.root) == _ood_folder(layout.root, name)
        assert len(ood) == counts[name]
        assert _labels(combined) == _labels(benchmark.test_in) + [-1] * counts[name]


def test_id_labels_are_the_sorted_wnid_folders(layout):
    test_in = layout.open(transform=_image_size).test_in
    wnids = sorted(p.name for p in (layout.root / "id_data/ILSVRC-2012/val").iterdir())

    assert test_in.classes == wnids
    for index, (path, label) in enumerate(test_in.samples):
        assert Path(path).parent.name == wnids[label]
        assert test_in[index][1] == label >= 0


def test_default_transform_is_the_official_480_resize(layout):
    benchmark = layout.open()
    id_image, _ = benchmark.test_in[0]
    ood_image, _ = benchmark.test_oods[3][0]

    assert id_image.shape == ood_image.shape == (3, 480, 480)
    for dataset, tensor in ((benchmark.test_in, id_image), (benchmark.test_oods[3], ood_image)):
        # reference: PIL's bilinear resize to 480 x 480, then (x / 255 - 0.5) / 0.5; the two
        # differ by float32 rounding of the division and normalization only
        reference = Image.open(dataset.samples[0][0]).convert("RGB")
        pixels = np.asarray(reference.resize((480, 480), Image.BILINEAR), dtype=np.float64)
        expected = torch.from_numpy((pixels / 255 - 0.5) / 0.5).permute(2, 0, 1)
        torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=1e-6)


def test_test_sets_known_and_unknown(layout):
    benchmark = layout.open(transform=_image_size)

    assert benchmark.test_sets(known=True, unknown=False) == [benchmark.test_in]
    assert benchmark.test_sets(known=False, unknown=True) == benchmark.test_oods
    with pytest.raises(ValueError, match="At least one"):
        benchmark.test_sets(known=False, unknown=False)


def test_pytorch_ood_evaluate_runs_on_it(layout):
    # 24 x 24 inputs keep the forward passes cheap; the preprocessing is tested above
    benchmark = layout.open(transform=Preprocessing((24, 24), (0.5,) * 3, (0.5,) * 3).transform())
    detector = MaxSoftmax(BigTransferStyleNet(num_classes=3).eval())

    results = benchmark.evaluate(detector, loader_kwargs={"batch_size": 16})

    assert [r["Dataset"] for r in results] == OOD_NAMES
    assert all(0 <= r["AUROC"] <= 1 for r in results)


@pytest.mark.parametrize("name", OOD_NAMES)
def test_absent_ood_set_names_path_counts_and_source(layout, name):
    shutil.rmtree(_ood_folder(layout.root, name))

    with pytest.raises(DatasetNotFoundError) as raised:
        layout.open()

    error = raised.value
    expected = layout.expected[name].images
    assert (error.path, error.found, error.expected) == (
        _ood_folder(layout.root, name),
        0,
        expected,
    )
    archive = "dtd-r1.0.1.tar.gz" if name == "Textures" else f"{AUTHORS_OOD_URL}{name}.tar.gz"
    assert archive in error.source
    message = str(error)
    assert str(error.path) in message and f"found 0 images, expected {expected}" in message
    assert isinstance(error, FileNotFoundError)


@pytest.mark.parametrize("name", OOD_NAMES)
def test_ood_set_with_an_image_less_or_more_is_rejected(layout, name):
    images = sorted(_ood_folder(layout.root, name).rglob("*.jpg"))
    expected = len(images)
    images[0].unlink()
    with pytest.raises(DatasetNotFoundError, match="incomplete") as raised:
        layout.open()
    assert (raised.value.found, raised.value.expected) == (expected - 1, expected)

    shutil.copy(images[1], images[0])
    shutil.copy(images[1], images[1].with_name("extra.jpg"))
    with pytest.raises(DatasetNotFoundError, match="more than") as raised:
        layout.open()
    assert (raised.value.found, raised.value.expected) == (expected + 1, expected)


def test_missing_class_folder_is_rejected(layout):
    val = layout.root / "id_data/ILSVRC-2012/val"
    shutil.rmtree(sorted(val.iterdir())[0])

    with pytest.raises(DatasetNotFoundError, match="found 2 class folders, expected 3") as raised:
        layout.open()

    assert (raised.value.path, raised.value.found, raised.value.expected) == (val, 2, 3)


def test_images_outside_class_folders_are_rejected(layout):
    folder = _ood_folder(layout.root, "SUN")
    for image in (folder / "images").iterdir():
        image.rename(folder / image.name)
    (folder / "images").rmdir()

    with pytest.raises(DatasetNotFoundError, match="no class subfolder") as raised:
        layout.open()

    assert raised.value.found == 0


def test_absent_imagenet_says_how_to_get_it(layout):
    shutil.rmtree(layout.root / "id_data")

    with pytest.raises(DatasetNotFoundError) as raised:
        layout.open()

    assert raised.value.path == layout.root / "id_data/ILSVRC-2012/val"
    assert "image-net.org" in raised.value.source
    assert "torchvision.datasets.ImageNet" in raised.value.source


def test_the_papers_counts_are_the_default(layout):
    assert ImageNetGradNorm.paper_expected.counts == {
        "ImageNet-1k val": Expected(50_000, classes=1_000),
        "ImageNet-1k train": Expected(1_281_167, classes=1_000),
        "iNaturalist": Expected(10_000),
        "SUN": Expected(10_000),
        "Places": Expected(10_000),
        "Textures": Expected(5_640, classes=47),
    }
    # the miniature is complete for its own counts, and rejected against the paper's
    with pytest.raises(DatasetNotFoundError, match="expected 1,000") as raised:
        ImageNetGradNorm(layout.root)
    assert raised.value.found == 3


def test_expected_counts_must_name_exactly_the_protocols_datasets(layout):
    counts = dict(layout.expected.counts)
    del counts["SUN"]
    with pytest.raises(ValueError, match="missing \\['SUN'\\]"):
        ImageNetGradNorm(layout.root, expected=ExpectedData(counts, verify_checksums=False))
    counts["SUM"] = Expected(2)
    with pytest.raises(ValueError, match="unknown \\['SUM'\\]"):
        ImageNetGradNorm.missing(layout.root, ExpectedData(counts, verify_checksums=False))


def test_missing_lists_exactly_what_is_missing(layout):
    assert layout.missing() == []
    shutil.rmtree(_ood_folder(layout.root, "SUN"))
    next(_ood_folder(layout.root, "Textures").rglob("*.jpg")).unlink()

    missing = layout.missing()

    assert [(m.name, m.found) for m in missing] == [("SUN", 0), ("Textures", 3)]
    assert missing[1].expected == 4 and "Textures" in str(missing[1].path)
    train = layout.missing(include_train=True)[-1]
    assert (train.name, train.path) == (
        "ImageNet-1k train",
        layout.root / "id_data/ILSVRC-2012/train",
    )


def test_train_set_is_checked_when_first_asked_for(tmp_path, layout):
    benchmark = layout.open(transform=_image_size)  # opens without a training set
    with pytest.raises(DatasetNotFoundError, match="id_data/ILSVRC-2012/train"):
        benchmark.train_set()

    with_train = make_imagenet_layout(tmp_path / "with_train", train_images_per_class=2)
    train = with_train.open(transform=_image_size).train_set()
    assert len(train) == 6 and set(_labels(train)) == {0, 1, 2}


def test_no_download_is_attempted_without_download_true(layout):
    # forbid_downloads (autouse) turns any download or connection into an AssertionError
    shutil.rmtree(_ood_folder(layout.root, "iNaturalist"))
    shutil.rmtree(_ood_folder(layout.root, "Textures"))
    with pytest.raises(DatasetNotFoundError):
        layout.open()
    assert [m.name for m in layout.missing()] == ["iNaturalist", "Textures"]


def test_download_installs_an_absent_authors_subset(tmp_path, layout, monkeypatch):
    folder = _ood_folder(layout.root, "iNaturalist")
    content = subset_archive(folder, tmp_path / "iNaturalist.tar.gz")
    shutil.rmtree(folder)
    url = f"{AUTHORS_OOD_URL}iNaturalist.tar.gz"
    served = Served({url: content})

    with local_server(served, monkeypatch):
        benchmark = layout.open(download=True, transform=_image_size)
        assert served.requests == [(url, None)]
        assert len(benchmark.test_oods[0]) == 3
        ood_data = layout.root / "ood_data"
        assert sorted(p.name for p in ood_data.iterdir() if not p.name.startswith(".")) == sorted(
            OOD_NAMES
        )
        # the archive is kept in the data root; no checksum is published for the authors'
        # archives: its SHA-256 is recorded beside it, once the counts checked out
        assert (layout.root / "iNaturalist.tar.gz.sha256").is_file()
        layout.open(download=True, transform=_image_size)  # present now: nothing fetched again
        assert len(served.requests) == 1


def test_a_download_that_fails_its_counts_is_removed_and_fetched_afresh(
    tmp_path, layout, monkeypatch
):
    """A wrong but valid archive (one image short) from a server that publishes no checksum:
    its SHA-256 is not recorded, the archive, its extraction and its note are removed, and the
    message says so; the next open downloads it again, and records the right one."""
    folder = _ood_folder(layout.root, "iNaturalist")
    images = len(list(folder.rglob("*.jpg")))
    right = subset_archive(folder, tmp_path / "right.tar.gz")
    wrong = subset_archive(folder, tmp_path / "wrong.tar.gz", drop=1)
    shutil.rmtree(folder)
    url = f"{AUTHORS_OOD_URL}iNaturalist.tar.gz"
    served = Served({url: wrong})

    with local_server(served, monkeypatch):
        with pytest.raises(DatasetNotFoundError) as raised:
            layout.open(download=True)
        message = str(raised.value)
        assert "incomplete as downloaded (no published checksum)" in message
        assert f"{layout.root / 'iNaturalist.tar.gz'} it was extracted from were removed" in (
            message
        )
        assert not folder.exists()
        left = sorted(p.name for p in layout.root.iterdir())
        assert not [name for name in left if name.startswith("iNaturalist")], left
        assert not list((layout.root / "ood_data").glob(".iNaturalist*")), "a note left"

        served.files[url] = right
        benchmark = layout.open(download=True, transform=_image_size)
        assert [u for u, _ in served.requests] == [url, url]  # downloaded afresh
        assert len(benchmark.test_oods[0]) == images
        sha256 = hashlib.sha256(right).hexdigest()
        assert recorded_sha256(layout.root / "iNaturalist.tar.gz") == sha256


def test_an_archive_put_there_by_hand_that_fails_the_counts_is_kept(tmp_path, layout):
    """Only what the download installed is removed: the user's archive stays, unrecorded."""
    folder = _ood_folder(layout.root, "SUN")
    wrong = subset_archive(folder, layout.root / "SUN.tar.gz", drop=1)
    shutil.rmtree(folder)

    with pytest.raises(DatasetNotFoundError, match="it was there before this download and is kept"):
        layout.open(download=True)  # no server: nothing is fetched (forbid_downloads)

    assert (layout.root / "SUN.tar.gz").read_bytes() == wrong
    assert recorded_sha256(layout.root / "SUN.tar.gz") is None
    assert not folder.exists()


def test_download_refuses_an_archive_member_landing_outside(tmp_path, layout, monkeypatch):
    shutil.rmtree(_ood_folder(layout.root, "SUN"))
    archive = tmp_path / "SUN.tar.gz"
    escape = tarfile.TarInfo("SUN/../../escaped.jpg")
    escape.size = 4
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(escape, io.BytesIO(b"evil"))
    served = Served({f"{AUTHORS_OOD_URL}SUN.tar.gz": archive.read_bytes()})

    with local_server(served, monkeypatch), pytest.raises(UnsafeArchiveError, match="escaped"):
        layout.open(download=True)

    assert not _ood_folder(layout.root, "SUN").exists()
    assert not (layout.root / "escaped.jpg").exists()
    assert not (layout.root.parent / "escaped.jpg").exists()
    folders = sorted(p.name for p in (layout.root / "ood_data").iterdir() if p.is_dir())
    assert folders == ["Places", "Textures", "iNaturalist"]  # no extraction left behind


def test_download_leaves_an_incomplete_dataset_alone(layout):
    images = sorted(_ood_folder(layout.root, "Places").rglob("*.jpg"))
    images[0].unlink()

    with pytest.raises(DatasetNotFoundError, match="never overwrites"):
        layout.open(download=True)  # a download attempt would fail with AssertionError

    assert sorted(_ood_folder(layout.root, "Places").rglob("*.jpg")) == images[1:]


def test_download_never_overwrites_an_archive_that_fails_its_md5(layout):
    shutil.rmtree(_ood_folder(layout.root, "Textures"))
    archive = layout.root / "textures-r1_0_1.tar.gz"
    archive.write_bytes(b"not the DTD archive")

    with pytest.raises(FileExistsError, match="fails its md5"):
        layout.open(download=True)

    assert archive.read_bytes() == b"not the DTD archive"
    assert not _ood_folder(layout.root, "Textures").exists()


def test_registry(layout):
    assert available_protocols() == ["cifar10", "cifar100", "imagenet"]
    cls = protocol_class("imagenet")
    assert cls is ImageNetGradNorm
    assert cls.preprocessing == BIT_S_R101X1 and cls.paper_tables[0] == "Table 1"
    assert cls.detector_preset == "imagenet"
    assert cls.info.paper.url == "https://arxiv.org/abs/2110.00218" and cls.info.ai_coded
    opened = make_protocol("imagenet", layout.root, expected=layout.expected)
    assert isinstance(opened, ImageNetGradNorm) and len(opened.test_in) == 6
    with pytest.raises(ValueError, match="available: cifar10, cifar100, imagenet"):
        protocol_class("imagenet21k")


def test_layout_generator_is_deterministic_and_never_overwrites(tmp_path):
    first = make_imagenet_layout(tmp_path / "a", seed=3)
    second = make_imagenet_layout(tmp_path / "b", seed=3)
    other = make_imagenet_layout(tmp_path / "c", seed=4)

    def contents(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.*"))}

    assert contents(first.root) == contents(second.root)
    assert contents(first.root).keys() == contents(other.root).keys()
    assert contents(first.root) != contents(other.root)
    with pytest.raises(FileExistsError):
        make_imagenet_layout(tmp_path / "a")


@pytest.mark.parametrize(
    "arguments", [{"images": 0}, {"images": 2, "classes": -1}, {"images": 5, "drawn_from": 3}]
)
def test_expected_rejects_impossible_counts(arguments):
    with pytest.raises(ValueError, match="Expected"):
        Expected(**arguments)


def test_opening_leaves_no_unclosed_scandir_iterator(layout):
    # an unclosed os.scandir iterator warns when it is garbage-collected
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        layout.open(transform=_image_size)
        gc.collect()


def test_a_truncated_image_is_named_with_its_dataset_and_index(layout, tmp_path):
    benchmark = layout.open(transform=Preprocessing((24, 24), (0.5,) * 3, (0.5,) * 3).transform())
    path = Path(benchmark.test_oods[2].samples[2][0])  # the third of Places
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])  # opening counts files: it passes
    detector = MaxSoftmax(BigTransferStyleNet(num_classes=3).eval())
    for cache_dir in (None, tmp_path / "cache"):
        with pytest.raises(OSError, match=rf"image 2 of Places \('{re.escape(str(path))}'\)"):
            gradood.evaluate(
                benchmark, {"MSP": detector}, batch_size=4, cache_dir=cache_dir, progress=False
            )
