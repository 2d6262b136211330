"""``benchmarks/gpu-quick.sh --dry-run``: the GPU script's steps on the CPU, end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout"
)
def test_dry_run_writes_the_json_and_the_summary(tmp_path):
    out = tmp_path / "results"
    # the parts' time limit far above what a loaded machine needs (about 10 s each unloaded):
    # this test checks what the script writes, not how fast this machine is
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env["GRADOOD_GPU_QUICK_LIMIT_S"] = "900"
    # as inside a worker of pytest -n: the script's own runs must not take themselves for one
    # (pytest-benchmark and the harness read these from the environment)
    env.update(PYTEST_XDIST_WORKER="gw1", PYTEST_XDIST_WORKER_COUNT="2")
    run = subprocess.run(
        ["bash", "benchmarks/gpu-quick.sh", "--dry-run", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    document = json.loads((out / "cpu-dry-run.json").read_text())
    timed = {bench["name"]: bench for bench in document["benchmarks"]}
    # one side-by-side ratio (first part), two detectors' throughput (second part) and the
    # tensor decoder's pipeline against its ceiling (third part), merged; the paper flow (fourth
    # part) times no benchmark
    pipeline = "extract_features / ceiling, tensor"
    assert set(timed) == {"GradNorm / MSP throughput", "msp", "gradnorm", pipeline}
    assert timed[pipeline]["extra_info"]["verdict"] in {"met", "missed", "inconclusive"}
    assert timed["GradNorm / MSP throughput"]["extra_info"]["verdict"] in {
        "met",
        "missed",
        "inconclusive",
    }
    for name in ("msp", "gradnorm"):
        assert timed[name]["extra_info"]["images_per_second"] > 0
        assert timed[name]["extra_info"]["batch_size"] == 64
    summary = (out / "cpu-dry-run.md").read_text()
    assert "GradNorm / MSP throughput          resnet20 32px b64" in summary
    assert "| throughput resnet20-32px-b64-fp32 | gradnorm |" in summary
    assert "## targets (exit status 0)" in summary
    assert "## throughput (exit status 0)" in summary
    assert "## pipeline (exit status 0)" in summary
    assert "features / decode ceiling" in summary
    # the paper flow on the miniature: random and briefly trained models fail the rows (exit
    # status 1), the ResNet-20s are trained, and the plan and stage times follow its summary
    assert "## paper (exit status 1, no benchmark JSON)" in summary
    assert "rows run" in summary and "### Stage times" in summary
    for stage in ("cifar10 train", "cifar100 train", "cifar10 forward", "imagenet forward"):
        assert f"| {stage} |" in summary
    assert "shortened schedule (2 epochs, not the paper's 100)" in summary
    assert sorted(p.name for p in out.iterdir()) == ["cpu-dry-run.json", "cpu-dry-run.md"]


def test_a_crashed_part_reads_as_missing_by_name(tmp_path):
    """A part whose JSON is empty, truncated or not a benchmark document (its process died while
    writing it) is noted as missing, naming the file and the cause; the others are merged."""
    work = tmp_path / "work"
    work.mkdir()
    good = {"machine_info": {}, "commit_info": {}, "benchmarks": [{"name": "msp"}]}
    texts = {
        "good": json.dumps(good),
        "empty": "",
        "truncated": json.dumps(good)[:40],
        "list": "[]",
    }
    for part, text in texts.items():
        (work / f"{part}.json").write_text(text)
        (work / f"{part}.status").write_text("0\n")
    (work / "absent.status").write_text("124\n")
    stem = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "benchmarks/gpu_quick.py", str(work), str(stem), *texts, "absent"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert [
        b["name"] for b in json.loads((stem.with_suffix(".json")).read_text())["benchmarks"]
    ] == ["msp"]
    summary = stem.with_suffix(".md").read_text()
    assert "## good (exit status 0)\n" in summary
    # pytest-benchmark < 5 leaves an empty file where no benchmark ran
    assert "## empty (exit status 0, no benchmark JSON)\n" in summary
    assert "## truncated (exit status 0, benchmark JSON unreadable (truncated.json: " in summary
    assert (
        "## list (exit status 0, benchmark JSON unreadable (list.json: no list of benchmarks))"
        in (summary)
    )
    assert "## absent (stopped by its time limit, no benchmark JSON)" in summary
