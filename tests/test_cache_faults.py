"""The cache under faults: a full disk names the file and the cause, killed writers' temporary
files are removed by a later run (never a live writer's), and a read-only cache folder serves
a finished result without a lock."""

from __future__ import annotations

import errno
import io
import os
import time

import pytest
import torch
from corruption import flip_exponent_bit
from filelock import FileLock
from torch.utils.data import TensorDataset

import gradood.files
from gradood.cache import CacheError, CorruptCacheError
from gradood.features import extract_features
from gradood.files import WriteError, atomic_write


class Counting(torch.nn.Module):
    """A linear classifier that counts its forward passes."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Linear(6, 4)
        self.fc = torch.nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(torch.relu(self.body(x)))


def _data(size: int = 24) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(size, 6, generator=generator), torch.arange(size) % 3)


def _extract(model, cache_dir, **kwargs):
    return extract_features(
        model.eval(),
        _data(),
        cache_dir=cache_dir,
        batch_size=8,
        chunk_size=8,
        progress=False,
        **kwargs,
    )


class _FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes."""

    room = 200

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def _fill_the_disk(monkeypatch):
    monkeypatch.setattr(gradood.files.os, "fdopen", lambda handle, mode: _FullDisk(handle, "wb"))


def test_a_full_cache_disk_names_the_file_and_says_the_disk_is_full_first(tmp_path, monkeypatch):
    _fill_the_disk(monkeypatch)  # torch.save's own writer then fails as on a full disk
    with pytest.raises(WriteError) as raised:
        _extract(Counting(), tmp_path)
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC
    assert message.startswith(f"[Errno {errno.ENOSPC}] no space left on the device: {tmp_path}")
    assert ".chunks/chunk-0000000000-0000000008.pt could not be written" in message
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []  # no temporary file, no lock


def test_a_wrapped_os_error_is_found_in_the_chain(tmp_path):
    def torch_like(file):
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError as error:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:671] unexpected pos"
            ) from error

    with pytest.raises(WriteError, match=f"{tmp_path / 'x.pt'} could not be written: Disk quota"):
        atomic_write(tmp_path / "x.pt", torch_like)
    with pytest.raises(ValueError, match="not an OS error"):  # others pass through
        atomic_write(
            tmp_path / "y.pt", lambda file: (_ for _ in ()).throw(ValueError("not an OS error"))
        )
    assert list(tmp_path.iterdir()) == []


def _plant(path, age: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def test_a_later_run_removes_killed_writers_temporary_files_only(tmp_path):
    first = _extract(Counting(), tmp_path)
    (final,) = tmp_path.glob("features-*.pt")
    chunks = tmp_path / final.name.replace(".pt", ".chunks")
    orphans = [
        tmp_path / f".{final.name}.k1ll3d.tmp",
        chunks / ".chunk-0000000008-0000000016.pt.zz_9q.tmp",
    ]
    kept = [
        tmp_path / ".features-0123abcd.pt.k1ll3d.tmp",  # another key's: not under our lock
        tmp_path / ".notes.tmp",  # not ours at all
        chunks / "mine.txt",
    ]
    for path in orphans + kept:
        _plant(path, age=3600)
    live = tmp_path / f".{final.name}.l1v3.tmp"
    _plant(live, age=-3600)  # changed after the lock was taken: a writer's, never removed
    model = Counting()  # the same weights and count: the same key
    again = _extract(model, tmp_path)
    assert model.calls == 0 and torch.equal(again.logits, first.logits)
    assert not any(path.exists() for path in orphans)
    assert all(path.exists() for path in [*kept, live])


def _read_only(monkeypatch, folder) -> list:
    """As on a read-only mount: ``folder`` is not writable and no lock file can be made
    there (root passes permission checks, so the mount is imitated)."""
    tried = []
    access = os.access

    def no_writing(path, mode, *args, **kwargs):
        if os.fspath(path) == os.fspath(folder) and mode & os.W_OK:
            return False
        return access(path, mode, *args, **kwargs)

    def no_lock_file(self, *args, **kwargs):
        tried.append(self.lock_file)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.lock_file))

    monkeypatch.setattr(os, "access", no_writing)
    monkeypatch.setattr(FileLock, "acquire", no_lock_file)
    return tried


def test_a_read_only_cache_serves_a_finished_result_without_a_lock(tmp_path, monkeypatch):
    first = _extract(Counting(), tmp_path)
    tried = _read_only(monkeypatch, tmp_path)
    model = Counting()
    served = _extract(model, tmp_path)
    assert model.calls == 0 and tried == []
    assert torch.equal(served.logits, first.logits) and torch.equal(served.labels, first.labels)


def test_a_read_only_cache_without_the_result_says_so(tmp_path, monkeypatch):
    _extract(Counting(seed=0), tmp_path)
    _read_only(monkeypatch, tmp_path)
    with pytest.raises(CacheError, match=f"the cache folder {tmp_path} is read-only") as raised:
        _extract(Counting(seed=1), tmp_path)  # other weights: another key
    assert "holds no finished result for this key" in str(raised.value)


class _Slow(TensorDataset):
    """:func:`_data`'s samples, each read after a pause, so that a writer can be killed mid-run."""

    def __getitem__(self, index):
        time.sleep(0.01)
        return super().__getitem__(index)


def _extract_slowly(cache_dir) -> None:
    """A writer's whole life in a forked child: extract :func:`_data` into ``cache_dir``."""
    torch.set_num_threads(1)
    extract_features(
        Counting().eval(),
        _Slow(*_data(48).tensors),
        cache_dir=cache_dir,
        batch_size=2,
        chunk_size=2,
        progress=False,
    )
    os._exit(0)


@pytest.mark.parametrize("finished_chunks", [0, 1, 5])
def test_a_writer_killed_mid_run_leaves_a_cache_the_next_run_completes(tmp_path, finished_chunks):
    """A writer killed with SIGKILL (no handler, no clean-up) after ``finished_chunks`` chunks:
    the next run of the same key resumes from the chunks on disk, returns what a run without a
    cache returns, and leaves only the final file. Wherever the kill lands (in a write, between
    two), the outcome is the same."""
    context = torch.multiprocessing.get_context("fork")
    writer = context.Process(target=_extract_slowly, args=(tmp_path,))
    writer.start()
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.chunks/chunk-*.pt"))) < finished_chunks:
        assert time.monotonic() < deadline and writer.is_alive(), "the writer made no chunks"
        time.sleep(0.002)
    writer.kill()
    writer.join(timeout=30)
    assert writer.exitcode == -9  # killed, not finished
    on_disk = len(list(tmp_path.glob("*.chunks/chunk-*.pt")))
    model = Counting()  # the same weights
    slow = _Slow(*_data(48).tensors)  # the same dataset: the same key
    resumed = extract_features(
        model.eval(), slow, cache_dir=tmp_path, batch_size=2, chunk_size=2, progress=False
    )
    direct = extract_features(Counting().eval(), _data(48), batch_size=2, progress=False)
    # float32 logits; the killed writer ran with one thread, this process with its default:
    # the same batches may differ by summation order, a few float32 ulps
    assert torch.allclose(resumed.logits, direct.logits, rtol=1e-6, atol=1e-7)
    assert torch.equal(resumed.labels, direct.labels)
    assert model.calls == 24 - on_disk  # one batch of 2 per chunk still to do
    left = sorted(p.name for p in tmp_path.rglob("*"))
    assert len(left) == 1 and left[0].startswith("features-") and left[0].endswith(".pt"), left


class _Batches(torch.nn.Module):
    """A linear classifier that counts its forward passes in its class (an attribute of the
    instance would change the cache key)."""

    passes = 0

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        type(self).passes += 1
        return self.fc(x)


def test_a_corrupt_entry_is_recomputed_where_asked_and_the_caller_told(tmp_path):
    model = _Batches()
    first = _extract(model, tmp_path)
    (final,) = tmp_path.glob("features-*.pt")
    flip_exponent_bit(final, first.logits[5, 1])
    with pytest.raises(CacheError, match="pass recompute=True"):
        _extract(model, tmp_path)  # without on_corrupt: raised, naming what to do
    told = []
    passes = _Batches.passes
    again = _extract(model, tmp_path, on_corrupt=told.append)
    (error,) = told
    assert isinstance(error, CorruptCacheError) and str(final) in error.problem
    assert _Batches.passes == passes + 3  # three batches of 8 computed again
    torch.testing.assert_close(again.logits, first.logits, rtol=0, atol=0)  # same process
    passes = _Batches.passes
    _extract(model, tmp_path, on_corrupt=told.append)  # the new entry is sound
    assert _Batches.passes == passes and len(told) == 1
