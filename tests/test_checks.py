"""The harness's checks: one per printed row, readable ids, tolerances, shared measurements."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from gradood import reported
from gradood.detectors.gradnorm import PAPER_NORMS, PAPER_TEMPERATURES
from gradood.harness.checks import (
    DETERMINISTIC,
    FITTED,
    RETRAINED,
    TRAINED,
    Comparison,
    Measurement,
    compare,
    measured_rows,
    measurement_plan,
    paper_checks,
)
from gradood.testing import SmallCNN


def test_one_check_per_printed_row():
    checks = paper_checks()
    assert len(checks) == sum(len(reported.table(name)) for name in reported.tables())
    assert len({check.id for check in checks}) == len(checks)


def test_readable_ids():
    ids = {check.id for check in paper_checks()}
    assert {
        "table7[iNaturalist-L0.3]",
        "table7[Average-Linf]",
        "table8[SUN-T0.0625]",
        "table8[Textures-T1024]",
        "table1[Places-Mahalanobis]",
        "table6[CIFAR-100-LSUN-crop-ODIN]",
        "table9[Average-Lee-AlRegib]",
    } <= ids


def test_tolerances_follow_the_reason():
    by_id = {check.id: check for check in paper_checks()}
    assert by_id["table7[SUN-L2]"].tolerance is DETERMINISTIC
    assert by_id["table1[SUN-ODIN]"].tolerance is DETERMINISTIC
    assert by_id["table1[SUN-Mahalanobis]"].tolerance is FITTED
    assert by_id["table9[SUN-Lee-AlRegib]"].tolerance is TRAINED
    assert by_id["table6[CIFAR-10-SVHN-GradNorm]"].tolerance is RETRAINED
    for tolerance in (DETERMINISTIC, FITTED, TRAINED, RETRAINED):
        assert tolerance.reason and tolerance.fpr95 > 0 and tolerance.auroc > 0


def test_tables_7_and_8_share_one_forward_group():
    checks = paper_checks()
    plan = measurement_plan(checks, "imagenet", "forward")
    gradnorm = [m for m in plan if m.detector == "gradnorm"]
    # every (p, T=1) of Table 7 and (p=1, T) of Table 8, the shared L1 / T=1 once
    assert len(gradnorm) == len(PAPER_NORMS) + len(PAPER_TEMPERATURES) - 1
    assert {m.detector for m in plan} == {"msp", "odin", "energy", "gradnorm"}
    # the fitted detectors are groups of their own, named after them (their registry fit kind)
    assert measurement_plan(checks, "imagenet", "mahalanobis-paper") == [
        Measurement("mahalanobis-paper")
    ]
    assert measurement_plan(checks, "imagenet", "lee-alregib") == [Measurement("lee-alregib")]
    assert {m.detector for m in measurement_plan(checks, "cifar10", "forward")} == {
        "msp",
        "odin",
        "energy",
        "gradnorm",
    }


def test_measurements_build_the_papers_detectors():
    model = SmallCNN().eval()
    plan = measurement_plan(paper_checks(), "imagenet", "forward")
    odin = Measurement("odin").build(model, "imagenet")
    assert Measurement("odin") in plan and (odin.temperature, odin.eps) == (1000.0, 0.0)
    l03 = Measurement("gradnorm", (("p", 0.3), ("temperature", 1.0)))
    assert l03 in plan
    gradnorm = l03.build(model, "imagenet")
    assert (gradnorm.p, gradnorm.temperature) == (0.3, 1.0)
    linf = Measurement("gradnorm", (("p", math.inf), ("temperature", 1.0)))
    assert linf in plan and linf.build(model, "imagenet").p == math.inf
    assert Measurement("odin").build(model, "cifar10").eps == 0.004


def _evaluate_like_table(plan, ood_names):
    """A table shaped like gradood.evaluate's (method, setting columns), distinct numbers."""
    rows = []
    for index, measurement in enumerate(plan):
        for offset, ood in enumerate([*ood_names, "Average"]):
            rows.append(
                {"method": measurement.detector, "p": math.nan, "temperature": math.nan}
                | dict(measurement.settings)
                | {"ood_data": ood, "FPR95": (index + offset) / 100, "AUROC": 1 - offset / 100}
            )
    return pd.DataFrame(rows)


def test_compare_finds_each_rows_measurement():
    checks = [
        c for c in paper_checks(["table6"]) if c.id_data == "CIFAR-10" and c.group == "forward"
    ]
    plan = measurement_plan(checks, "cifar10", "forward")
    table = _evaluate_like_table(plan, ["SVHN", "LSUN (crop)", "Places365", "Textures"])
    measured = measured_rows(table, plan)
    for check in checks:
        comparison = compare(check, measured)
        index = plan.index(check.measurement)
        offset = ["SVHN", "LSUN-crop", "Places365", "Textures", "Average"].index(check.ood_data)
        assert comparison.fpr95 == pytest.approx(index + offset)
        assert comparison.auroc == pytest.approx(100 - offset)


def test_comparison_within_tolerance():
    check = next(c for c in paper_checks(["table7"]) if c.id == "table7[SUN-L1]")
    inside = Comparison(check, check.fpr95 + 0.09, check.auroc - 0.09)
    outside = Comparison(check, check.fpr95 + 0.11, check.auroc)
    assert inside.within_tolerance and not outside.within_tolerance
    assert outside.fpr95_difference == pytest.approx(0.11)
    row = inside.as_row()
    assert list(row) == list(Comparison.columns())
    assert row["check"] == "table7[SUN-L1]" and row["within tolerance"]
