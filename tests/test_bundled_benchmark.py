"""The bundled benchmark: its data, and the same table whatever the thread count."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gradood.harness.bundled import NEAR_TIE_TOLERANCE, run_bundled
from gradood.protocols.digits import DigitsBenchmark


def _pixels(benchmark: DigitsBenchmark, tensor: torch.Tensor) -> torch.Tensor:
    return tensor * benchmark.std + benchmark.mean


def test_letters_are_in_the_digits_format():
    benchmark = DigitsBenchmark(seed=0)
    (id_set,) = benchmark.test_sets(known=True, unknown=False)
    letters = benchmark.test_sets(known=False)[benchmark.ood_names.index("Letters")]
    images, labels = letters.tensors
    assert images.shape == id_set.tensors[0].shape and bool((labels == -1).all())
    counts = 16 * _pixels(benchmark, images).double()  # 4 x 4 blocks: 0 ... 16 pixels on
    assert torch.allclose(counts, counts.round(), atol=1e-4)
    assert counts.min() >= -1e-4 and counts.max() <= 16 + 1e-4
    digits = 16 * _pixels(benchmark, id_set.tensors[0]).double()
    assert abs(float(counts.mean() - digits.mean())) < 1.0  # strokes of the digits' weight
    assert len(torch.unique(images.flatten(1), dim=0)) > 0.9 * len(images)  # varied glyphs


def test_the_data_is_a_function_of_the_seed():
    first, second = DigitsBenchmark(seed=3), DigitsBenchmark(seed=3)
    for a, b in zip(first.test_sets(), second.test_sets(), strict=True):
        for x, y in zip(a.datasets, b.datasets, strict=True):
            assert torch.equal(x.tensors[0], y.tensors[0])
    other = DigitsBenchmark(seed=4).test_sets(known=False)[0].tensors[0]
    assert not torch.equal(first.test_sets(known=False)[0].tensors[0], other)


@pytest.fixture(scope="module")
def tables() -> dict[int, pd.DataFrame]:
    return {threads: run_bundled(threads=threads).table for threads in (1, 2)}


def test_the_same_table_with_one_and_two_threads(tables):
    """Thread counts (like CPUs) round differently: the float64 run keeps the fits' choices
    and the scores' order, up to near-ties (:data:`NEAR_TIE_TOLERANCE`)."""
    one, two = tables[1], tables[2]
    keys = ["method", "settings", "ood_data"]
    assert one[keys].equals(two[keys])
    for metric, tolerance in NEAR_TIE_TOLERANCE.items():
        difference = np.abs(one[metric].to_numpy() - two[metric].to_numpy())
        assert difference.max() <= tolerance, (metric, one.loc[difference.argmax(), keys])
