"""The --gradood-gpu option and the gpu marker, in a pytest run of their own."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from miniature_projects import MINIATURE_FILE, only_protocol_hooks
from PIL import Image
from torch import Tensor

from gradood.detectors.gradnorm import PAPER_NORMS, PAPER_TEMPERATURES
from gradood.models import BIT_S_R101X1
from gradood.testing import BigTransferStyleNet, make_imagenet_layout

from references import entrywise_norm, official_gradients, reference_metrics

REPO = Path(__file__).resolve().parents[1]

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@pytest.fixture
def project(pytester):
    pytester.makepyfile(
        test_sample="""
        import pytest

        @pytest.mark.gradood_gpu
        def test_on_gpu(device):
            assert device == "cuda"

        def test_anywhere(device):
            assert device in ("cpu", "cuda")
        """
    )
    return pytester


def test_gpu_tests_are_skipped_without_the_option(project):
    result = project.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs a CUDA device: run with --gradood-gpu*"])


@no_cuda
def test_gpu_option_without_cuda_is_a_usage_error(project):
    result = project.runpytest("--gradood-gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gradood-gpu was given, but torch finds no CUDA device*"])


@no_cuda
@pytest.mark.parametrize("spelling", ["--gpu", "--gradood-gpu"])
@pytest.mark.parametrize("path", ["tests", "benchmarks"])
def test_repository_paths_accept_the_gpu_option(path, spelling):
    """Both spellings in this repository (its root conftest adds the short one); the error
    names the one typed."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", path, spelling, "--collect-only", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert f"{spelling} was given, but torch finds no CUDA device" in run.stderr


# -- the harness, end to end -------------------------------------------------------------------

HOOKS = (
    only_protocol_hooks("imagenet", "ImageNet")
    + """

import torch

from gradood.testing import BigTransferStyleNet


@pytest.hookimpl(tryfirst=True)
def pytest_gradood_load_model(config, protocol):
    torch.manual_seed(0)
    return BigTransferStyleNet(num_classes=3)
"""
)


def _run_pytest(args: list[str], tmp_path: Path, extra_path: Path | None = None):
    # one torch thread, as in this process (tests/conftest.py): small tensors, shared cores
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def _images(folder: Path) -> Tensor:
    transform = BIT_S_R101X1.transform()
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    return torch.stack([transform(Image.open(path)) for path in paths])


def _expected_rows(root: Path) -> dict[tuple[str, str], dict[str, float]]:
    """Independently: images read with PIL, the official per-sample GradNorm (autograd of the
    head weight on each sample's own penultimate feature), sklearn and a brute-force FPR95."""
    torch.manual_seed(0)
    model = BigTransferStyleNet(num_classes=3).eval()
    head = model.head.conv
    sets = {"ID": _images(root / "id_data" / "ILSVRC-2012" / "val")}
    for name in ("iNaturalist", "SUN", "Places", "Textures"):
        sets[name] = _images(root / "ood_data" / name)

    with torch.no_grad():  # one forward pass per set: pooled features and logits
        pooled = {
            k: model.head.avg(model.before_head(model.body(model.root(x)))) for k, x in sets.items()
        }
        features = {k: f.flatten(1) for k, f in pooled.items()}
        logits = {k: head(f).flatten(1).double() for k, f in pooled.items()}

    def gradnorm(name: str, p: float, temperature: float) -> np.ndarray:
        grads = official_gradients(
            lambda h: head(h[:, :, None, None]).flatten(1),
            [head.weight],
            features[name],
            temperature,
        )
        return np.array([float(entrywise_norm(grad, p)) for grad in grads])

    def logit_score(name: str, method: str) -> np.ndarray:
        if method == "MSP":
            return logits[name].softmax(1).amax(1).numpy()
        if method == "ODIN":
            return (logits[name] / 1000).softmax(1).amax(1).numpy()
        return torch.logsumexp(logits[name], 1).numpy()  # Energy, T = 1

    settings = [("GradNorm", p, 1.0) for p in PAPER_NORMS]
    settings += [("GradNorm", 1.0, t) for t in PAPER_TEMPERATURES if t != 1.0]
    settings += [(m, None, None) for m in ("MSP", "ODIN", "Energy")]
    expected = {}
    for method, p, temperature in settings:
        if method == "GradNorm":
            scores = {k: gradnorm(k, p, temperature) for k in sets}
        else:
            scores = {k: logit_score(k, method) for k in sets}
        per_set = {
            name: reference_metrics(scores["ID"], scores[name]) for name in sets if name != "ID"
        }
        per_set["Average"] = {
            metric: float(np.mean([row[metric] for row in per_set.values()]))
            for metric in ("FPR95", "AUROC")
        }
        for name, row in per_set.items():
            expected[(method, p, temperature, name)] = row
    return expected


def test_harness_end_to_end_on_a_miniature_imagenet(tmp_path):
    miniature = make_imagenet_layout(
        tmp_path / "data",
        classes=3,
        images_per_class=3,
        ood_counts={"iNaturalist": 4, "SUN": 3, "Places": 5, "Textures": 4},
    )
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / MINIATURE_FILE).write_bytes(pickle.dumps(miniature))
    (plugin_dir / "miniature_hooks.py").write_text(HOOKS)
    run = _run_pytest(
        [
            "benchmarks/test_paper_tables.py",
            "-p",
            "miniature_hooks",
            "-k",
            "(table1 or table7 or table8) and not Mahalanobis",
            "--gradood-report-dir",
            str(tmp_path / "reports"),
            "--gradood-cache-dir",
            str(tmp_path / "cache"),
        ],
        tmp_path,
        extra_path=plugin_dir,
    )
    # a random model is far from the paper's numbers: the checks fail, and say so
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout[-3000:] + run.stderr
    assert "imagenet  145 of 145 rows run, 0 within tolerance" in run.stdout
    (folder,) = (tmp_path / "reports").iterdir()
    report = pd.read_csv(folder / "paper.csv")
    assert {"figure4_norms.png", "figure5_temperatures.png", "paper.md"} <= {
        p.name for p in folder.iterdir()
    }
    expected = _expected_rows(tmp_path / "data")
    assert len(report) == 20 + 50 + 75  # Table 1 without Mahalanobis, Tables 7 and 8
    for row in report.itertuples(index=False):
        p = None if row.method != "GradNorm" else row.p
        temperature = None if row.method != "GradNorm" else row.temperature
        reference = expected[(row.method, p, temperature, row.ood_data)]
        # float32 forward passes in batches vs one sample at a time: scores differ in the
        # 7th digit, far from reordering any two of these few samples
        assert row._8 == pytest.approx(reference["FPR95"], abs=1e-9), row.check
        assert row._11 == pytest.approx(reference["AUROC"], abs=1e-9), row.check


def _failed_tests(output: str) -> str:
    """The inner run's FAILED lines and the end of its output, for an assertion message."""
    failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return "inner failures:\n" + "\n".join(failed) + "\n...\n" + output[-1500:]


def test_pytest_benchmarks_on_a_fresh_install(tmp_path):
    """`pytest benchmarks` without data: the bundled benchmark runs, the paper checks are
    skipped with one short line each (the details go into the report), exit 0, and the run
    ends in the summary; a second run repeats the bundled table."""
    no_data, no_checkpoints = tmp_path / "no-data", tmp_path / "no-checkpoints"
    no_data.mkdir()
    no_checkpoints.mkdir()  # empty folders: one-line skips (absent ones: a usage error)
    common = ["--benchmark-disable", "--gradood-data-root", str(no_data)]
    common += ["--gradood-checkpoint-dir", str(no_checkpoints)]
    common += ["--gradood-cache-dir", str(tmp_path / "cache")]
    first = _run_pytest(
        ["benchmarks", *common, "--gradood-report-dir", str(tmp_path / "r1")], tmp_path
    )
    assert first.returncode == pytest.ExitCode.OK, _failed_tests(first.stdout + first.stderr)
    lines = first.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "gradood summary" in line)
    summary = lines[start + 1 : -1]
    assert len(lines) - start <= 40 and max(map(len, summary)) <= 100, "\n".join(lines[start:])
    text = "\n".join(summary)
    assert "bundled digits benchmark: DigitsCNN" in text
    assert "fitting" not in first.stdout  # progress shows on a terminal only, not in a log
    assert "gradnorm-u p=1 T=1" in text and "gradnorm-v p=1 T=1" in text
    assert "gradnorm AUROC " in text and "U (feature norm)" in text  # why it is below 50 %
    (folder,) = (tmp_path / "r1").iterdir()
    details = folder / "missing-data.md"
    assert "imagenet  0 of 160 rows run: 5 datasets missing (details: missing-data.md" in text
    assert "found 0 images, expected 50,000" in details.read_text()
    skips = [line for line in lines if line.startswith("SKIPPED")]
    # one short line each: pytest's prefix and location, then at most 70 characters of reason
    # (the protocol, what is missing, the report's file), no path
    reasons = [line.split(": ", 1)[1] for line in skips]
    assert skips and all(len(reason) <= 70 and "/" not in reason for reason in reasons), skips
    assert not any("expected 50,000" in line for line in skips)
    second = _run_pytest(
        ["benchmarks/test_bundled.py", *common, "--gradood-report-dir", str(tmp_path / "r2")],
        tmp_path,
    )
    assert second.returncode == pytest.ExitCode.OK, _failed_tests(second.stdout + second.stderr)
    tables = [
        next((tmp_path / run).glob("*/bundled-digits-benchmark.csv")).read_text()
        for run in ("r1", "r2")
    ]
    assert tables[0] == tables[1]


@pytest.mark.parametrize("option", ["--gradood-report-dir", "--gradood-cache-dir"])
def test_an_unwritable_directory_is_a_usage_error_before_any_test(pytester, option):
    pytester.makepyfile(test_sample="def test_never_runs():\n    raise AssertionError")
    blocker = pytester.path / "a-file"
    blocker.write_text("not a directory")
    result = pytester.runpytest(option, str(blocker / "reports"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*{option}*{blocker}/reports: cannot write there: {blocker} is not a directory*"]
    )
    assert "test_never_runs" not in result.stdout.str()


def _documented_file(name: str) -> str:
    """The code block that follows the line `name`: in docs/harness.md ("The harness in your
    own project")."""
    text = (REPO / "docs" / "harness.md").read_text()
    after = text[text.index(f"`{name}`:\n") :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```", start)]


def test_the_harness_in_another_project_as_the_docs_say(tmp_path):
    """The installed package's entry point, the docs' two files, an empty folder outside
    the repository: the paper's checks run on the hooks' data and model."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("conftest.py", "test_paper.py"):
        (project / name).write_text(_documented_file(name))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, _failed_tests(run.stdout + run.stderr)
    assert "125 failed" in run.stdout  # a random network: every row is off the paper
    assert "imagenet  125 of 125 rows run, 0 within tolerance" in run.stdout
    (folder,) = (project / "reports").iterdir()
    assert len(pd.read_csv(folder / "paper.csv")) == 125
    assert {"figure4_norms.png", "figure5_temperatures.png"} <= {p.name for p in folder.iterdir()}


def test_a_project_that_never_uses_the_harness_is_not_stopped_by_its_defaults(pytester):
    """The plugin loads in every project where gradood is installed: its default folders are
    not checked up front (a read-only checkout runs its own tests as before)."""
    pytester.makepyfile(test_sample="def test_runs():\n    assert True")
    (pytester.path / "reports").write_text("a file where the default report folder would be")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
