"""The speed harness's questions about the machine only ask: whether peak memory is measured
in a forked child leaves the C library's heap as it is."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from gradood.harness import speed

FORKS_HERE = os.path.exists("/proc/self/clear_refs") and (
    "fork" in multiprocessing.get_all_start_methods()
)


class _CLibrary:
    """A C library whose ``malloc_trim`` (where it has one) records its calls."""

    def __init__(self, trims: bool):
        self.calls: list[int] = []
        if trims:
            self.malloc_trim = self.calls.append


@pytest.mark.parametrize("trims", [True, False])
def test_asking_whether_memory_is_measured_in_a_fork_trims_no_heap(monkeypatch, trims):
    library = _CLibrary(trims)
    monkeypatch.setattr(speed.ctypes, "CDLL", lambda name: library)
    assert speed.forks_for_memory("cpu") is (FORKS_HERE and trims)
    assert library.calls == []
    assert speed.release_free_heap() is trims
    assert library.calls == ([0] if trims else [])


def test_no_fork_for_the_memory_of_a_gpu():
    assert speed.forks_for_memory("cuda") is False
