"""Where a run ran: the device, the versions and the commit, for the reproduction report."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

__all__ = ["environment"]


def environment(device: str, root: Path) -> dict[str, str]:
    """``{what: value}``: the device (``"cuda"`` or ``"cpu"``, by name), Python's, torch's,
    torchvision's, pytorch-ood's and gradood's versions, and the git commit of ``root``."""
    import pytorch_ood
    import torch
    import torchvision

    import gradood

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
