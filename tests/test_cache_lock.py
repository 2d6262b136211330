"""Exclusive locks between processes (and threads: each holder opens the file anew)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

from filelock import FileLock

from gradood.locking import _holds_the_named_file, exclusive_lock


def test_a_second_holder_waits_for_the_first_and_is_told(tmp_path):
    path, order, told = tmp_path / "x.lock", [], threading.Event()

    def second():
        with exclusive_lock(path, on_wait=told.set):
            order.append("second")

    with exclusive_lock(path):
        thread = threading.Thread(target=second)
        thread.start()
        assert told.wait(timeout=30)  # the second found the lock held
        order.append("first")
    thread.join(timeout=30)
    assert order == ["first", "second"]
    assert not path.exists()  # removed by its last holder


def _count_under_the_lock(lock_path: str, counter: str, times: int) -> None:
    for _ in range(times):
        with exclusive_lock(lock_path):
            value = int(Path(counter).read_text())
            time.sleep(0.0005)  # widen the read-modify-write window
            Path(counter).write_text(str(value + 1))


def test_processes_never_hold_it_at_once_although_each_release_removes_the_file(tmp_path):
    """A read-modify-write under the lock loses no update: removing the file on release lets
    a waiter lock a removed inode, and the same-inode check sends it round again."""
    counter, lock = tmp_path / "counter", tmp_path / "c.lock"
    counter.write_text("0")
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_count_under_the_lock, args=(str(lock), str(counter), 40))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * 4
    assert counter.read_text() == "160"
    assert not lock.exists()


def test_a_lock_on_a_file_replaced_under_its_name_is_not_the_named_files(tmp_path):
    path = tmp_path / "x.lock"
    lock = FileLock(path)
    lock.acquire()
    try:
        assert _holds_the_named_file(lock, path)
        path.unlink()
        assert not _holds_the_named_file(lock, path)  # removed: no file under the name
        path.write_text("")
        assert not _holds_the_named_file(lock, path)  # another inode under the name
    finally:
        lock.release()


def test_a_waiter_that_got_a_removed_file_tries_again(tmp_path, monkeypatch):
    """As if the holder removed the file while we waited on it: the first lock we get is on
    an inode no longer under the name; the lock must be taken again on the named file."""
    path, calls = tmp_path / "x.lock", []
    acquire = FileLock.acquire

    def acquire_then_replace(self, *args, **kwargs):
        result = acquire(self, *args, **kwargs)
        calls.append(self)
        if len(calls) == 1:
            path.unlink()
            path.write_text("")
        return result

    monkeypatch.setattr(FileLock, "acquire", acquire_then_replace)
    with exclusive_lock(path):
        assert len(calls) == 2
        assert _holds_the_named_file(calls[-1], path)
    assert not path.exists()
