"""The pytest plugin loads in every project where gradood is installed: loading it and
collecting a project that never uses it imports none of the heavy packages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "pytorch_ood", "timm")

PROBE = f"""
import sys


def test_the_plugin_is_loaded_and_imported_nothing_heavy(request):
    assert request.config.pluginmanager.has_plugin("gradood")
    heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
    assert heavy == [], "imported: " + ", ".join(heavy)
"""


def test_an_empty_project_imports_no_heavy_package(tmp_path):
    """Runs after collection, in a fresh interpreter (this one has imported torch)."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_probe.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert run.returncode == pytest.ExitCode.OK, run.stdout + run.stderr


def test_the_public_names_load_on_first_use():
    """``gradood.GradNorm`` and the other names still resolve (lazily), and the function
    ``gradood.evaluate`` is not hidden by the submodule of the same name."""
    code = (
        "import gradood.harness.bundled, gradood, inspect\n"
        "assert inspect.isfunction(gradood.evaluate)\n"
        "from gradood import evaluate, GradNorm, __all__\n"
        "assert inspect.isfunction(evaluate) and inspect.isclass(GradNorm)\n"
        "assert all(getattr(gradood, name) is not None for name in __all__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
