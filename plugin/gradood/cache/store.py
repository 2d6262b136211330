"""The files of one cache key: chunk files, the final file, their checksums (see
:mod:`gradood.cache`)."""

from __future__ import annotations

import re
from contextlib import suppress
from pathlib import Path

import torch

from ..files import atomic_torch_save
from ..fingerprint import Fingerprint
from ..representations import Features
from .key import FORMAT_VERSION, CacheKey

__all__ = ["CacheError", "CorruptCacheError", "Store"]

_CHUNK_NAME = re.compile(r"chunk-\d{10}-\d{10}\.pt")
#: the temporary files of :func:`gradood.files.atomic_write`: ``.<final name>.<random>.tmp``
_TEMPORARY_CHUNK = re.compile(r"\.chunk-\d{10}-\d{10}\.pt\.[^./]+\.tmp")
_AGAIN = "delete it, or pass recompute=True, to extract again"


class CacheError(ValueError):
    """A cache file does not hold what its name says (it was changed by something else), or the
    cache cannot be used; ``problem`` says what, the message adds what to do (``remedy``)."""

    def __init__(self, problem: str, remedy: str = _AGAIN) -> None:
        super().__init__(f"{problem}; {remedy}")
        self.problem = problem
        self.remedy = remedy

    def __reduce__(self):  # pickled with both parts (e.g. between processes)
        return type(self), (self.problem, self.remedy)


class CorruptCacheError(CacheError):
    """A cache file that fails its check: the key's files can be removed and computed again."""


def _checksum(features: Features) -> str:
    """BLAKE2b of the tensors' dtypes, shapes and bytes."""
    return Fingerprint().add(features._tensors()).hexdigest()


class Store:
    """The files of one key in the cache directory, and the only ones this module touches."""

    def __init__(self, directory: Path, key: CacheKey):
        self.key = key
        self.final = directory / f"features-{key.digest}.pt"
        self.chunk_dir = directory / f"features-{key.digest}.chunks"
        self.lock = directory / f"features-{key.digest}.lock"
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def chunk(self, start: int, stop: int) -> Path:
        return self.chunk_dir / f"chunk-{start:010d}-{stop:010d}.pt"

    def save(self, path: Path, features: Features, start: int, stop: int) -> None:
        payload = {
            "format": FORMAT_VERSION,
            "digest": self.key.digest,
            "summary": self.key.summary,
            "start": start,
            "stop": stop,
            "checksum": _checksum(features),
            **features._tensors(),
        }
        atomic_torch_save(path, payload)

    def load(self, path: Path, start: int, stop: int) -> Features:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            features = Features(
                payload["logits"], payload["features"], payload["labels"], payload["extras"]
            )
            expected = (FORMAT_VERSION, self.key.digest, start, stop, stop - start)
            found = (
                payload["format"],
                payload["digest"],
                payload["start"],
                payload["stop"],
                len(features),
            )
            recorded = payload["checksum"] if found == expected else None
        except Exception as error:
            raise CorruptCacheError(
                f"the cache file {path} cannot be read ({type(error).__name__}: {error})"
            ) from error
        if found != expected:
            raise CorruptCacheError(
                f"the cache file {path} holds (format, key, start, stop, rows) = {found}, not "
                f"{expected}"
            )
        if recorded != _checksum(features):
            raise CorruptCacheError(
                f"the cache file {path} fails its checksum: its tensors changed on disk (a "
                "flipped bit?)"
            )
        return features

    def load_final(self, size: int) -> Features:
        return self.load(self.final, 0, size)

    def assemble(self, ranges: list[tuple[int, int]]) -> Features:
        """Join the chunk files into the final file, then remove them."""
        missing = [str(self.chunk(*r)) for r in ranges if not self.chunk(*r).exists()]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(ranges)} chunk files are missing after extraction, e.g. "
                f"{missing[0]}: in a multi-process run, cache_dir must be a directory that every "
                "process sees (a shared file system)"
            )
        features = Features.cat([self.load(self.chunk(*r), *r) for r in ranges])
        self.save(self.final, features, 0, ranges[-1][1])
        self.remove_chunks()
        return features

    def clear(self) -> None:
        """Remove the final file and the chunks of this key."""
        self.final.unlink(missing_ok=True)
        self.remove_chunks()

    def remove_chunks(self) -> None:
        if not self.chunk_dir.is_dir():
            return
        for path in self.chunk_dir.iterdir():
            if _CHUNK_NAME.fullmatch(path.name):
                with suppress(FileNotFoundError):
                    path.unlink()
        with suppress(OSError):  # not empty: something else lives there; leave it
            self.chunk_dir.rmdir()

    def remove_orphans(self, before: float) -> list[Path]:
        """Remove this key's temporary files last changed before ``before`` (a time stamp):
        left by a writer that was killed. Call it holding the key's lock (no live writer then)."""
        final = re.compile(rf"\.{re.escape(self.final.name)}\.[^./]+\.tmp")
        candidates = [p for p in self.directory.iterdir() if final.fullmatch(p.name)]
        if self.chunk_dir.is_dir():
            chunks = self.chunk_dir.iterdir()
            candidates += [p for p in chunks if _TEMPORARY_CHUNK.fullmatch(p.name)]
        removed = []
        for path in candidates:
            with suppress(FileNotFoundError):
                if path.stat().st_mtime < before:
                    path.unlink()
                    removed.append(path)
        return removed
