"""The --gpu option and the gpu marker, in a pytest run of their own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@pytest.fixture
def project(pytester):
    pytester.makeconftest('pytest_plugins = ["gradood.pytest_plugin"]')
    pytester.makepyfile(
        test_sample="""
        import pytest

        @pytest.mark.gpu
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
    result.stdout.fnmatch_lines(["*needs a CUDA device: run with --gpu*"])


@no_cuda
def test_gpu_option_without_cuda_is_a_usage_error(project):
    result = project.runpytest("--gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gpu was given, but torch finds no CUDA device*"])


@no_cuda
@pytest.mark.parametrize("path", ["tests", "benchmarks"])
def test_repository_paths_accept_the_gpu_option(path):
    run = subprocess.run(
        [sys.executable, "-m", "pytest", path, "--gpu", "--collect-only", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert "--gpu was given, but torch finds no CUDA device" in run.stderr
