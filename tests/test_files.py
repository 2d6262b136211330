"""Exclusive locks between processes (and threads: each holder opens the file anew)."""

from __future__ import annotations

import threading

from gradood.files import exclusive_lock


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
