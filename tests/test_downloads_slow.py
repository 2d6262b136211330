"""Downloads on a slow link, against a local server that drips one byte at a time: a transfer
below its minimum rate over a whole window ends with an error naming the URL, the rate and the
window (a link that stalls too), its bytes kept; the progress bar moves with every byte.

The verdicts do not depend on the machine's speed: the server is never faster than its drip
(it sleeps between bytes), and each minimum asked is far above the drip's rate."""

from __future__ import annotations

import math

import pytest

import gradood.downloads.remote as remote_module
from gradood.downloads import RemoteFile, SlowDownloadError, SpeedLimit, speed_limit

URL = "http://files.example.org/slow/archive.bin"
CONTENT = bytes(range(40))


def test_a_drip_below_the_minimum_rate_ends_naming_url_rate_and_window(served, tmp_path):
    """1 byte/s against a minimum of 100 bytes/s over 1 s: ends after about a second, where
    the 40 bytes would take 40."""
    served.add(URL, CONTENT)
    served.drips[URL] = 1.0
    with pytest.raises(SlowDownloadError) as raised:
        RemoteFile(URL).fetch(tmp_path / "a.bin", progress=False, min_speed=100, speed_time=1)
    message = str(raised.value)
    assert message.startswith(f"{URL}: a.bin arrived at ")
    assert "bytes/s over the last" in message
    assert "below the minimum of 100 bytes/s over 1 s" in message
    assert "--gradood-download-min-speed" in message and "run again to resume" in message
    assert not (tmp_path / "a.bin").exists()
    kept = (tmp_path / ".a.bin.part").read_bytes()
    assert 0 < len(kept) < len(CONTENT) and CONTENT.startswith(kept)
    assert len(served.requests) == 1  # a slow transfer is not tried again


def test_a_link_that_stalls_ends_within_the_window(served, tmp_path):
    """After its first byte the server waits 30 s: the socket's wait is bounded by the window
    (1 s), so the minimum is checked without a byte arriving."""
    served.add(URL, CONTENT[:3])
    served.drips[URL] = 30.0
    with pytest.raises(SlowDownloadError, match=r"below the minimum of 100 bytes/s over 1 s"):
        RemoteFile(URL).fetch(tmp_path / "a.bin", progress=False, min_speed=100, speed_time=1)


def test_the_limit_of_a_block_holds_for_downloads_not_given_one(served, tmp_path):
    served.add(URL, CONTENT)
    served.drips[URL] = 1.0
    with speed_limit(min_speed=100, speed_time=1), pytest.raises(SlowDownloadError):
        RemoteFile(URL).fetch(tmp_path / "a.bin", progress=False)


def test_the_progress_bar_moves_as_bytes_arrive(served, tmp_path, monkeypatch):
    """4 bytes, 0.5 s apart, with no minimum: the bar is updated as they come (not once, after
    a read that waits for a whole block); two updates at least, whatever the machine's load."""
    updates: list[int] = []

    class Recording(remote_module.tqdm):
        def update(self, n=1):
            updates.append(n)
            return super().update(n)

    monkeypatch.setattr(remote_module, "tqdm", Recording)
    served.add(URL, CONTENT[:4])
    served.drips[URL] = 0.5
    path = RemoteFile(URL).fetch(tmp_path / "a.bin", progress=False, min_speed=0)
    assert path.read_bytes() == CONTENT[:4]
    assert sum(updates) == 4 and len(updates) >= 2, updates


@pytest.mark.parametrize(
    ("min_speed", "speed_time"), [(-1, 60), (math.nan, 60), (1024, 0), (1024, math.inf)]
)
def test_a_limit_out_of_range_is_refused(min_speed, speed_time):
    with pytest.raises(ValueError, match="must be a finite number"):
        SpeedLimit(min_speed, speed_time)
