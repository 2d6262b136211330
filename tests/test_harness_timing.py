"""Side-by-side timing: paired rounds, the ratio's median and spread, and the verdicts."""

from __future__ import annotations

import pytest

from gradood.harness.timing import (
    INCONCLUSIVE,
    MET,
    MISSED,
    REPORTED,
    PairedRatio,
    PairedRounds,
    SpeedCheck,
    Target,
    paired_ratio,
)


@pytest.mark.parametrize(
    ("ratios", "target", "verdict"),
    [
        ((1.0, 1.1, 1.2, 1.3, 1.4), Target(0.95), MET),
        ((0.5, 0.8, 0.9, 0.91, 0.93), Target(0.95), MISSED),
        ((0.8, 0.9, 1.0, 1.1, 1.2), Target(0.95), INCONCLUSIVE),  # IQR [0.9, 1.1]
        ((0.2, 1.0, 1.0, 1.0, 5.0), Target(0.95), MET),  # one wild round cannot decide
        ((1.0, 1.5, 2.0, 2.5, 3.0), Target(3.0, at_least=False), MET),
        ((3.5, 3.6, 3.7, 3.8, 1.0), Target(3.0, at_least=False), MISSED),
        ((1.0, 1.1, 1.2, 1.3, 1.4), Target(), REPORTED),
    ],
)
def test_verdict_from_the_interquartile_range(ratios, target, verdict):
    ratio = PairedRatio(ratios)
    assert ratio.verdict(target) == verdict
    assert ratio.median == sorted(ratios)[2]


def test_at_least_five_rounds():
    with pytest.raises(ValueError, match="at least 5 paired rounds, got 4"):
        PairedRatio((1.0, 1.0, 1.0, 1.0))


def test_scaling_every_round():
    ratio = PairedRatio((1.0, 2.0, 3.0, 4.0, 5.0)).scaled(4.0)
    assert ratio.ratios == (4.0, 8.0, 12.0, 16.0, 20.0)
    assert ratio.iqr == (8.0, 16.0)


def test_rounds_alternate_the_order():
    calls = []
    rounds = PairedRounds(lambda: calls.append("a"), lambda: calls.append("b"), "cpu")
    for _ in range(4):
        rounds()
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(rounds.ratios) == 4


def test_paired_ratio_runs_at_least_the_minimum():
    calls = {"a": 0, "b": 0}

    def work(name):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    ratio = paired_ratio(work("a"), work("b"), budget_s=0.0)
    assert len(ratio.ratios) == 5
    assert calls == {"a": 6, "b": 6}  # one warm-up call each


def test_a_check_line_fits_the_summary():
    check = SpeedCheck(
        "bit-s-r101x1 480px b64",
        "Lee-AlRegib speedup vs pytorch-ood",
        PairedRatio((123.4, 150.5, 160.2, 170.9, 999.0)),
        Target(20.0),
    )
    line = check.line()
    assert len(line) <= 98 and line.endswith(MET)
    assert "160x [150-171]" in line and ">= 20" in line
    memory = SpeedCheck("resnet18 32px b64", "memory", 2.5, Target(2.0, at_least=False))
    assert memory.verdict == MISSED and memory.line().split()[-2:] == ["2", MISSED]


def test_figures_never_print_as_the_bound_they_miss():
    """A median of 1.4999 against >= 1.5 must not read "1.5x ... >= 1.5 inconclusive"."""
    check = SpeedCheck(
        "resnet20 32px b64",
        "Lee-AlRegib speedup vs pytorch-ood",
        PairedRatio((1.47, 1.47, 1.4999, 1.55, 1.55)),
        Target(1.5),
    )
    assert check.verdict == INCONCLUSIVE
    assert "1.4999x [1.47-1.55]" in check.line()
    near_one = SpeedCheck("x", "y", PairedRatio((0.95, 0.95, 0.988, 0.9996, 0.9996)), Target(0.8))
    assert "0.988x [0.950-1.00]" in near_one.line()  # 3 significant digits, zeros kept
