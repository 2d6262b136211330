"""--gradood-download: what it plans to fetch, the missing-data lines that name it, a run that
downloads against a local server (127.0.0.1), and the provenance report."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from download_server import Served, local_server
from pytorch_ood.dataset.img import LSUNCrop, Textures
from subset_archives import subset_archive
from torchvision.datasets import CIFAR10, CIFAR100, SVHN

from gradood.harness.downloading import missing_line, planned_downloads
from gradood.models.bit import BIT_S_R101X1_URL
from gradood.protocols import MissingDataset
from gradood.protocols.imagenet import AUTHORS_OOD_URL
from gradood.protocols.places365 import PLACES365_BASE_URL
from gradood.testing import make_imagenet_layout

AUTHORS = [f"{AUTHORS_OOD_URL}{name}.tar.gz" for name in ("iNaturalist", "SUN", "Places")]


def test_the_plan_lists_each_public_file_once_and_never_imagenet(tmp_path):
    data, checkpoints = tmp_path / "data", tmp_path / "checkpoints"
    planned = planned_downloads(["cifar10", "cifar100", "imagenet"], data, checkpoints)

    assert [p.url for p in planned] == [
        CIFAR10.url,
        SVHN.split_list["test"][0],
        LSUNCrop.url,
        f"{PLACES365_BASE_URL}filelist_places365-standard.tar",
        f"{PLACES365_BASE_URL}test_256.tar",
        Textures.url,
        CIFAR100.url,
        *AUTHORS,
        BIT_S_R101X1_URL,
    ]
    assert len({p.path for p in planned}) == len(planned)
    by_url = {p.url: p for p in planned}
    assert by_url[CIFAR10.url].what == "cifar10: CIFAR-10 test, cifar10: CIFAR-10 train"
    assert by_url[CIFAR10.url].size == 170_498_071
    assert by_url[BIT_S_R101X1_URL].path == checkpoints / "BiT-S-R101x1-flat-finetune.pth.tar"
    assert not by_url[BIT_S_R101X1_URL].published_checksum
    assert [by_url[url].published_checksum for url in AUTHORS] == [False] * 3
    assert by_url[CIFAR10.url].published_checksum
    # one DTD archive, kept in the data root, makes both dtd/ and the ImageNet protocol's
    # ood_data/Textures: fetched once
    assert by_url[Textures.url].path == data / Textures.filename
    assert "imagenet: Textures" in by_url[Textures.url].what


def test_the_plan_leaves_out_what_is_there(tmp_path):
    layout = make_imagenet_layout(tmp_path / "data")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "BiT-S-R101x1-flat-finetune.pth.tar").write_bytes(b"mine")
    assert planned_downloads(["imagenet"], layout.root, tmp_path / "checkpoints") == []

    shutil.rmtree(layout.root / "ood_data" / "SUN")
    planned = planned_downloads(["imagenet"], layout.root, tmp_path / "checkpoints")
    assert [(p.url, p.path) for p in planned] == [(AUTHORS[1], layout.root / "SUN.tar.gz")]


def test_the_plan_asks_the_server_for_unknown_sizes(tmp_path, monkeypatch):
    served = Served({AUTHORS[0]: b"x" * 1234})
    with local_server(served, monkeypatch):
        planned = planned_downloads(["imagenet"], tmp_path, tmp_path, probe=True)
    sizes = {p.url: p.size for p in planned}
    assert sizes[AUTHORS[0]] == 1234
    assert sizes[AUTHORS[1]] is None  # the server does not have it (404)


def _problem(name: str, path: Path) -> MissingDataset:
    return MissingDataset(name, path, 0, 10, "images", "not found", "how")


def test_missing_data_names_the_option_for_downloadable_data_only(tmp_path):
    inaturalist = missing_line("imagenet", _problem("iNaturalist", tmp_path / "x"), tmp_path)
    imagenet = missing_line("imagenet", _problem("ImageNet-1k val", tmp_path / "x"), tmp_path)
    assert inaturalist.endswith("With the harness: run with --gradood-download.")
    assert "--gradood-download" not in imagenet and "image-net.org" not in imagenet
    assert imagenet == f"- {_problem('ImageNet-1k val', tmp_path / 'x')}."
    (tmp_path / "ood_data" / "iNaturalist").mkdir(parents=True)  # incomplete: never replaced
    incomplete = missing_line("imagenet", _problem("iNaturalist", tmp_path / "x"), tmp_path)
    assert "move it away, then run with --gradood-download" in incomplete


def _open_with_the_miniatures_counts(pytester, layout) -> None:
    """A conftest whose protocols expect the miniature's counts (and no published checksums)."""
    pytester.makeconftest(
        f"""
        from gradood.protocols import Expected, ExpectedData, make_protocol  # the repr needs both

        def pytest_gradood_open_protocol(config, name):
            expected = ExpectedData({dict(layout.expected.counts)!r}, verify_checksums=False)
            return make_protocol(name, {str(layout.root)!r}, expected=expected)
        """
    )


def test_a_run_with_the_option_downloads_records_and_reports(pytester, tmp_path, monkeypatch):
    layout = make_imagenet_layout(tmp_path / "data")
    subset = layout.root / "ood_data" / "iNaturalist"
    content = subset_archive(subset, tmp_path / "served.tar.gz")
    shutil.rmtree(subset)
    served = Served({AUTHORS[0]: content, BIT_S_R101X1_URL: b"checkpoint bytes"})
    _open_with_the_miniatures_counts(pytester, layout)
    pytester.makepyfile(
        """
        def test_open(request):
            hook = request.config.hook
            try:  # the bytes served are no checkpoint: the default hook cannot load them
                hook.pytest_gradood_load_model(config=request.config, protocol="imagenet")
            except ValueError as error:
                if "recorded at its first download" in str(error):
                    raise
            hook.pytest_gradood_open_protocol(config=request.config, name="imagenet")
        """
    )
    checkpoints, reports = tmp_path / "checkpoints", tmp_path / "reports"
    options = [
        f"--gradood-data-root={layout.root}",
        f"--gradood-checkpoint-dir={checkpoints}",
        f"--gradood-report-dir={reports}",
        "-p",
        "no:cacheprovider",
    ]
    with local_server(served, monkeypatch):
        result = pytester.runpytest_inprocess("--gradood-download", *options)

    result.assert_outcomes(passed=1)
    assert [url for url, _ in served.requests] == [BIT_S_R101X1_URL, AUTHORS[0]]
    assert sorted(p.name for p in subset.rglob("*.jpg")) != []
    digest = hashlib.sha256(b"checkpoint bytes").hexdigest()
    checkpoint = checkpoints / "BiT-S-R101x1-flat-finetune.pth.tar"
    assert (checkpoints / f"{checkpoint.name}.sha256").read_text().split()[0] == digest
    (provenance,) = reports.glob("*/data-provenance.md")
    text = provenance.read_text()
    first = text.splitlines()[2]
    assert first.startswith("Never verified against a published checksum: ")
    assert "iNaturalist" in first and "imagenet model" in first and "Textures" in first
    assert "| iNaturalist | no | no published checksum: installed by gradood" in text
    assert "| ImageNet-1k val | no | checked by count only" in text
    assert "never verified against a published checksum" in result.stdout.str()

    checkpoint.write_bytes(b"changed")  # later use: the record is checked at every load
    result = pytester.runpytest_inprocess(*options)
    result.assert_outcomes(failed=1)
    assert "recorded at its first download" in result.stdout.str()
    assert len(served.requests) == 2  # without the option nothing is fetched


@pytest.mark.parametrize("variable", ["1", None])
def test_the_option_has_an_environment_variable(pytester, monkeypatch, variable):
    if variable is None:
        monkeypatch.delenv("GRADOOD_DOWNLOAD", raising=False)
    else:
        monkeypatch.setenv("GRADOOD_DOWNLOAD", variable)
    pytester.makepyfile(
        """
        from gradood.harness.downloading import wants_download

        def test_wants(request):
            print("WANTS", wants_download(request.config))
        """
    )
    result = pytester.runpytest_inprocess("-s", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"*WANTS {variable == '1'}*"])


def test_a_failed_download_fails_the_checks_naming_the_url_once(pytester, tmp_path, monkeypatch):
    layout = make_imagenet_layout(tmp_path / "data")
    shutil.rmtree(layout.root / "ood_data" / "SUN")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("attempt", [1, 2])
        def test_open(request, attempt):
            request.config.hook.pytest_gradood_open_protocol(config=request.config, name="imagenet")
        """
    )
    served = Served()  # answers 404 to everything
    with local_server(served, monkeypatch):
        result = pytester.runpytest_inprocess(
            "--gradood-download", f"--gradood-data-root={layout.root}", "-p", "no:cacheprovider"
        )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([f"*DownloadError: {AUTHORS[1]} answered HTTP 404*SUN.tar.gz*"])
    assert len(served.requests) == 1  # a 404 is not retried, nor asked again within the run
    assert not (layout.root / "ood_data" / "SUN").exists()


def test_a_download_that_fails_its_counts_is_removed_and_the_next_run_fetches_it_afresh(
    pytester, tmp_path, monkeypatch
):
    """A wrong but valid archive (one image short, no checksum published): the run says what
    it removed; the next run downloads it again (two requests), and records the right one."""
    layout = make_imagenet_layout(tmp_path / "data")
    subset = layout.root / "ood_data" / "iNaturalist"
    right = subset_archive(subset, tmp_path / "right.tar.gz")
    wrong = subset_archive(subset, tmp_path / "wrong.tar.gz", drop=1)
    shutil.rmtree(subset)
    served = Served({AUTHORS[0]: wrong})
    _open_with_the_miniatures_counts(pytester, layout)
    pytester.makepyfile(
        """
        def test_open(request):
            request.config.hook.pytest_gradood_open_protocol(config=request.config, name="imagenet")
        """
    )
    options = ["--gradood-download", f"--gradood-data-root={layout.root}", "-p", "no:cacheprovider"]
    with local_server(served, monkeypatch):
        result = pytester.runpytest_inprocess(*options)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            ["*iNaturalist: incomplete as downloaded (no published checksum)*were removed*afresh*"]
        )
        assert not subset.exists() and not (layout.root / "iNaturalist.tar.gz").exists()

        served.files[AUTHORS[0]] = right
        result = pytester.runpytest_inprocess(*options)
        result.assert_outcomes(passed=1)
    assert [url for url, _ in served.requests] == [AUTHORS[0], AUTHORS[0]]
    record = (layout.root / "iNaturalist.tar.gz.sha256").read_text().split()[0]
    assert record == hashlib.sha256(right).hexdigest()


@pytest.mark.parametrize("how", ["options", "environment"])
def test_the_minimum_download_speed_is_an_option_and_an_environment_variable(
    pytester, tmp_path, monkeypatch, how
):
    """A server dripping 1 byte/s against 100 bytes/s over 1 s: the run ends that download
    with the error naming the window given (the default window is 60 s)."""
    layout = make_imagenet_layout(tmp_path / "data")
    subset = layout.root / "ood_data" / "SUN"
    content = subset_archive(subset, tmp_path / "served.tar.gz")
    served = Served({AUTHORS[1]: content}, drips={AUTHORS[1]: 1.0})
    shutil.rmtree(subset)
    pytester.makepyfile(
        """
        def test_open(request):
            request.config.hook.pytest_gradood_open_protocol(config=request.config, name="imagenet")
        """
    )
    options = ["--gradood-download", f"--gradood-data-root={layout.root}", "-p", "no:cacheprovider"]
    if how == "options":
        options += ["--gradood-download-min-speed=100", "--gradood-download-speed-time=1"]
    else:
        monkeypatch.setenv("GRADOOD_DOWNLOAD_MIN_SPEED", "100")
        monkeypatch.setenv("GRADOOD_DOWNLOAD_SPEED_TIME", "1")
    with local_server(served, monkeypatch):
        result = pytester.runpytest_inprocess(*options)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*SlowDownloadError: {AUTHORS[1]}: SUN.tar.gz arrived at *below the minimum of 100 "
            "bytes/s over 1 s*"
        ]
    )


def test_the_checkpoints_download_has_the_same_minimum_speed(pytester, tmp_path, monkeypatch):
    served = Served({BIT_S_R101X1_URL: b"x" * 1000}, drips={BIT_S_R101X1_URL: 1.0})
    pytester.makepyfile(
        """
        def test_load(request):
            hook = request.config.hook
            hook.pytest_gradood_load_model(config=request.config, protocol="imagenet")
        """
    )
    checkpoints = tmp_path / "checkpoints"
    with local_server(served, monkeypatch):
        result = pytester.runpytest_inprocess(
            "--gradood-download", f"--gradood-checkpoint-dir={checkpoints}", "-p",
            "no:cacheprovider", "--gradood-download-min-speed=100",
            "--gradood-download-speed-time=1",
        )  # fmt: skip
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*SlowDownloadError: {BIT_S_R101X1_URL}: BiT-S-R101x1-flat-finetune.pth.tar arrived "
            "at *below the minimum of 100 bytes/s over 1 s*"
        ]
    )
    assert not (checkpoints / "BiT-S-R101x1-flat-finetune.pth.tar").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("GRADOOD_DOWNLOAD_MIN_SPEED", "-1"), ("GRADOOD_DOWNLOAD_SPEED_TIME", "0")],
)
def test_a_download_speed_out_of_range_is_a_usage_error(pytester, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{variable}={value}: a finite number*"])


@pytest.mark.parametrize(
    ("option", "problem"),
    [("--gradood-download-min-speed=-1", ">= 0"), ("--gradood-download-speed-time=0", "> 0")],
)
def test_a_download_speed_option_out_of_range_is_a_usage_error(pytester, option, problem):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    name = option.partition("=")[0]
    result.stderr.fnmatch_lines([f"*{name}: a finite number {problem}*"])


def test_a_dataset_there_but_incomplete_is_never_counted_as_fetched(pytester, tmp_path):
    """The plan of a run without the option: of ImageNet's five datasets missing, the option
    would fetch three (iNaturalist is there, if incomplete: never replaced; ImageNet-1k never
    downloaded); the missing-data line says to move iNaturalist away first."""
    data = tmp_path / "data"
    (data / "ood_data" / "iNaturalist").mkdir(parents=True)
    pytester.makepyfile(test_paper="from gradood.harness.paper_tests import test_table1\n")
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", f"--gradood-data-root={data}",
        f"--gradood-checkpoint-dir={tmp_path}", f"--gradood-report-dir={tmp_path / 'reports'}",
    )  # fmt: skip
    text = result.stdout.str()
    plan = " ".join(text[text.index("gradood plan:") : text.index("test_paper.py")].split())
    hint = "(--gradood-download would fetch 3; never ImageNet-1k val, iNaturalist (incomplete))"
    assert hint in plan
    (details,) = (tmp_path / "reports").glob("*/missing-data.md")
    assert "move it away, then run with --gradood-download" in details.read_text()
