"""A pass served from the cache: the final file if it exists, else the missing chunks run,
stored and assembled, under the key's lock (see :mod:`gradood.cache`)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path

from ..distributed import Ranks
from ..locking import exclusive_lock
from ..representations import Features
from .key import CacheKey
from .store import CacheError, CorruptCacheError, Store

__all__ = ["OnChunk", "RunChunks", "cached_pass"]

#: the errors of a lock file that cannot be made in a read-only folder
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
#: called after each chunk ``(start, stop)`` with its rows
OnChunk = Callable[[int, int, Features], None]
#: forward the samples of the given ``(start, stop)`` ranges in order, calling ``on_chunk``
RunChunks = Callable[[list[tuple[int, int]], OnChunk], None]


def cached_pass(
    directory: str | os.PathLike,
    key: CacheKey,
    ranges: list[tuple[int, int]],
    ranks: Ranks,
    run: RunChunks,
    *,
    recompute: bool = False,
    on_wait: Callable[[Path], object] | None = None,
    on_corrupt: Callable[[CorruptCacheError], object] | None = None,
) -> Features:
    """The rows of ``ranges`` from the cache in ``directory``, computed by ``run`` where
    missing; rank 0 holds the key's lock for every rank (``on_wait(lock)`` if it must wait)
    and first removes the temporary files that killed writers left. ``recompute``: remove the
    key's files first. A read-only ``directory`` that holds the finished result serves it
    without the lock. ``on_corrupt``: in a single process, where a file of the key fails its
    check, ``on_corrupt(error)`` is called, the key's files are removed and the rows computed
    again (``None``: the error is raised).

    :raises CacheError: if ``directory`` is read-only and lacks the result
    :raises CorruptCacheError: if a file of the key fails its check (see ``on_corrupt``)
    """
    store = Store(Path(directory).expanduser(), key)
    if ranks.main and not recompute and store.final.exists() and not _writable(store.directory):
        return _fill(store, ranges, ranks, run)  # nothing is written: no lock needed
    wait = None if on_wait is None else (lambda: on_wait(store.lock))
    with _locked(store, wait) if ranks.main else nullcontext():
        if ranks.main:
            store.remove_orphans(before=time.time())
            if recompute:
                store.clear()
        if on_corrupt is None or ranks.world_size > 1:
            return _fill(store, ranges, ranks, run)
        try:
            return _fill(store, ranges, ranks, run)
        except CorruptCacheError as error:
            on_corrupt(error)
            store.clear()
            return _fill(store, ranges, ranks, run)


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def _locked(store: Store, on_wait: Callable[[], object] | None) -> ExitStack:
    """The key's lock, held until the returned stack closes; a read-only folder (which cannot
    hold a lock file) is an error saying that it lacks the result."""
    stack = ExitStack()
    try:
        stack.enter_context(exclusive_lock(store.lock, on_wait=on_wait))
    except OSError as error:
        if error.errno not in _READ_ONLY:
            raise
        raise CacheError(
            f"the cache folder {store.directory} is read-only ({error.strerror}) and holds no "
            f"finished result for this key ({store.final.name})",
            "extract into a writable cache_dir, or without one",
        ) from error
    return stack


def _fill(store: Store, ranges: list[tuple[int, int]], ranks: Ranks, run: RunChunks) -> Features:
    size = ranges[-1][1]
    if ranks.from_main(store.final.exists()):
        return store.load_final(size)
    mine = [
        r
        for index, r in enumerate(ranges)
        if index % ranks.world_size == ranks.rank and not store.chunk(*r).exists()
    ]
    run(mine, lambda start, stop, part: store.save(store.chunk(start, stop), part, start, stop))
    ranks.barrier()
    if not ranks.main:
        problem = ranks.from_main(None)
        if problem is not None:
            raise ValueError(f"rank 0 could not assemble the chunks: {problem}")
        return store.load_final(size)
    try:
        features = store.assemble(ranges)
    except ValueError as error:
        ranks.from_main(str(error))
        raise
    ranks.from_main(None)
    return features
