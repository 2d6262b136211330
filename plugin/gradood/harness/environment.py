"""Where a run ran: the device, the versions and the commit, for the reproduction report."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

__all__ = ["TIMED_ON", "environment"]

#: the key of what the speed verdicts ran on (the GPU's name, or ``cpu``)
TIMED_ON = "timed on"


def environment(device: str, root: Path) -> dict[str, str]:
    """``{what: value}``: the device (``"cuda"`` or ``"cpu"``, by name), Python's, torch's,
    torchvision's, pytorch-ood's and gradood's versions, and the git commit of ``root``; then
    numpy's, scipy's and scikit-learn's versions, the CPU's model, the GPU's (``none``) and
    what the run timed on (the GPU's name, or ``cpu``)."""
    import pytorch_ood
    import torch
    import torchvision

    import gradood

    from .speed import device_name

    if device == "cuda":
        shown = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        processor = platform.processor() or platform.machine()
        shown = f"CPU {processor}, {torch.get_num_threads()} threads"
    return {
        "device": shown,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch-ood": getattr(pytorch_ood, "__version__", "unknown"),
        "gradood": f"{getattr(gradood, '__version__', '?')} ({Path(gradood.__file__).parent})",
        "commit": _commit(root),
        **_numerics(),
        "cpu": device_name("cpu"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        # what the speed verdicts ran on: ``gradood compare`` holds them to agree on a GPU only
        TIMED_ON: torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
    }


def _numerics() -> dict[str, str]:
    """The versions of the numerical libraries under the detectors and the metrics."""
    import numpy
    import scipy
    import sklearn

    return {
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _commit(root: Path) -> str:
    """The commit checked out at ``root`` (``+ changes`` if the tree differs), or why not."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout, or no git)"
    return commit + (" + uncommitted changes" if dirty else "")
