"""Failures in the harness's run: each protocol's rows accounted for in the summary (run,
skipped, raised, not reached), a failure shared by many rows shown in full once and in one
line per later row, a plan that promises only what the run can do, and a corrupt cache entry
computed again."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch
from corruption import flip_exponent_bit
from download_server import Served, local_server
from miniature_projects import CIFAR10_HOOKS, harness_options, make_cifar10_project

RANDOM_MODEL = """

import torch
from gradood.models import resnet20


@pytest.hookimpl(tryfirst=True)
def pytest_gradood_load_model(config, protocol):
    torch.manual_seed(0)
    return resnet20(3)
"""


@pytest.fixture
def project(pytester, tmp_path):
    return make_cifar10_project(pytester, tmp_path)


def _truncated_torch_file() -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(4000)}}, buffer)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _details(text: str) -> str:
    """The failures' reports: the output before pytest's short summary, which repeats each
    failure's message (truncated to the terminal's width, or in full on a CI machine)."""
    return text.partition("short test summary info")[0]


def test_an_unreadable_checkpoint_is_said_in_the_plan_and_its_rows_counted(project, tmp_path):
    checkpoint = tmp_path / "checkpoints" / "resnet20-cifar10-1epochs.pt"
    checkpoint.write_bytes(_truncated_torch_file())
    result = project.runpytest_inprocess(
        *harness_options(tmp_path), "--gradood-train", "--gradood-train-epochs", "1"
    )
    text = result.stdout.str()
    result.assert_outcomes(failed=20, skipped=20)
    assert "model: resnet20-cifar10-1epochs.pt unreadable: it is not a checkpoint" in text
    assert "will resume training" not in text
    assert "cifar10   0 of 20 rows run: 20 raised (details: missing-data.md)" in text
    # the path shortened to the file's name (the details have it whole)
    assert "first error: ValueError: 'resnet20-cifar10-1epochs.pt' is not a checkpoint" in text
    assert "cifar100  0 of 20 rows run: only the CIFAR-10 miniature" in text
    # the error in full once, in the first row; one line for each of the 19 others
    assert text.count("def read_checkpoint(") == 1
    assert _details(text).count("(the same failure as in test_paper.py::test_table6[") == 19
    (folder,) = (tmp_path / "reports").iterdir()
    details = (folder / "missing-data.md").read_text()
    assert "## cifar10 error" in details and "Traceback (most recent call last)" in details
    assert checkpoint.read_bytes() == _truncated_torch_file()  # the user's file stays


def test_an_offline_download_fails_each_row_in_proportion(project, tmp_path, monkeypatch):
    """Every row of Table 6 needs a download that fails: the first row of each protocol shows
    it in full, the others in one line each; the summary counts them (before, each row
    re-raised one stored exception whose traceback grew by each raise: 48,176 lines for
    Table 6)."""
    project.makeconftest("")  # the default hooks: the data root is empty
    served = Served()  # answers 404 to everything
    data = tmp_path / "nothing-here"
    with local_server(served, monkeypatch):
        result = project.runpytest_inprocess(
            *harness_options(tmp_path), "--gradood-download", f"--gradood-data-root={data}"
        )
    text = result.stdout.str()
    result.assert_outcomes(failed=40)
    assert "data: to fetch: CIFAR-10 test" in text
    assert text.count("in _download_data") == 2  # cifar10's and cifar100's, once each
    assert _details(text).count("the same failure as in test_paper.py::test_table6[") == 38
    assert len(text.splitlines()) < 1000  # 40 rows: linear
    for protocol in ("cifar10 ", "cifar100"):
        assert f"{protocol}  0 of 20 rows run: 20 raised (details: missing-data.md)" in text
    # the URL and the paths shortened to their file names (the details have them whole)
    assert text.count("first error: DownloadError: cifar-10") == 2
    assert len(served.requests) == 2  # one per protocol: a 404 is not asked again in the run


def test_a_corrupt_cache_entry_is_computed_again_with_a_line_saying_so(project, tmp_path):
    project.makeconftest(CIFAR10_HOOKS + RANDOM_MODEL)
    options = [*harness_options(tmp_path), "-k", "GradNorm and not Average"]
    first = project.runpytest_inprocess(*options)
    outcomes = first.parseoutcomes()  # a random model: most rows fail, none raises
    assert outcomes.get("failed", 0) + outcomes.get("passed", 0) == 4, first.stdout.str()[-3000:]
    finals = sorted((tmp_path / "cache").glob("features-*.pt"))
    assert finals
    payload = torch.load(finals[0], weights_only=True)
    flip_exponent_bit(finals[0], payload["logits"][0, 0])  # a stored logit

    second = project.runpytest_inprocess(*options)
    text = second.stdout.str()
    assert second.parseoutcomes() == outcomes  # measured again: nothing raised
    assert f"gradood: the cache file {finals[0]} fails its checksum" in text
    assert text.count("extracting it again") == 1
    assert "CacheError" not in text


def test_the_checkpoint_header_check_names_what_is_wrong(tmp_path):
    from gradood.harness.readable import checkpoint_problem

    path = tmp_path / "model.pth.tar"
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(3)}}, buffer)
    cases = {
        b"": "it is empty",
        b"<html>not found</html>": "it is not a torch file",
        buffer.getvalue()[:-40]: "it is a zip archive that cannot be read",
        buffer.getvalue(): None,
    }
    legacy = io.BytesIO()
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    cases[legacy.getvalue()] = None
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hello")
    cases[other.getvalue()] = "it is a zip archive without the data.pkl"
    for content, expected in cases.items():
        path.write_bytes(content)
        problem = checkpoint_problem(path, read_whole=False)
        assert problem is None if expected is None else problem.startswith(expected), problem


def test_the_plan_of_a_download_says_what_no_download_gives(pytester, tmp_path, monkeypatch):
    """ImageNet itself is never downloaded: the plan says it is missing (first, as it stops the
    protocol), lists what the option fetches, and downloads nothing itself (the checkpoint is
    to fetch, not fetched before the plan is shown and then said to fail)."""
    pytester.makepyfile(test_paper="from gradood.harness.paper_tests import test_table1\n")
    served = Served()  # answers 404 to everything
    with local_server(served, monkeypatch):
        result = pytester.runpytest_inprocess(
            "-p", "no:cacheprovider", "--gradood-download",
            f"--gradood-data-root={tmp_path / 'data'}",
            f"--gradood-checkpoint-dir={tmp_path / 'checkpoints'}",
            f"--gradood-report-dir={tmp_path / 'reports'}",
        )  # fmt: skip
    text = result.stdout.str()
    plan = text[text.index("gradood plan:") : text.index("test_paper.py")]
    plan = " ".join(plan.split())  # the plan wraps its long lines at spaces
    assert "not run; data: missing: ImageNet-1k val (no download); to fetch: iN" in plan
    assert "model: to fetch: BiT-S-R101x1-flat-finetune.pth.tar" in plan
    assert "cannot be loaded" not in plan and "to fetch: ImageNet" not in plan
    assert "imagenet  0 of " in text and " raised (details: missing-data.md)" in text
