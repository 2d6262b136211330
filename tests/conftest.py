"""Settings shared by the unit tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests use tiny tensors, which gain nothing from intra-op threads; on a busy machine
    those threads make every operation wait for each other (milliseconds instead of
    microseconds). One thread also makes float reductions independent of the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
