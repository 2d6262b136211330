"""Archives of OOD subsets as the GradNorm authors publish them, for download tests."""

from __future__ import annotations

import tarfile
from pathlib import Path

__all__ = ["subset_archive"]


def subset_archive(folder: Path, path: Path, drop: int = 0) -> bytes:
    """``folder`` packed as its authors' archive (members ``<folder name>/...``, gzip) at
    ``path``, less its first ``drop`` images (in sorted order); the archive's bytes."""
    images = sorted(f"{folder.name}/{p.relative_to(folder)}" for p in folder.rglob("*.jpg"))
    dropped = set(images[:drop])
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name, filter=lambda m: None if m.name in dropped else m)
    return path.read_bytes()
