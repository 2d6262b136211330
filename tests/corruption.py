"""Corrupting a stored file the way a failing disk does, for the tests of checksums."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

__all__ = ["flip_exponent_bit"]


def flip_exponent_bit(path: Path, value: torch.Tensor) -> None:
    """Flip an exponent bit of the float ``value`` where its bytes are stored in ``path``: the
    file keeps its size and format, and the number changes by a large factor."""
    assert sys.byteorder == "little"  # the sign and exponent's top bits are in the last byte
    raw = bytearray(path.read_bytes())
    where = raw.find(value.numpy().tobytes())
    assert where > 0, f"{value.item()} is not stored in {path}"
    raw[where + value.element_size() - 1] ^= 0x10
    path.write_bytes(bytes(raw))
