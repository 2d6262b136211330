"""The paper's reported numbers (Tables 1 and 6 to 9) as tests, each row checked against a run.

Every printed row is a test, e.g. ``test_table7[iNaturalist-L0.3]``; it is measured with the
protocol's data and model (``--gradood-data-root``, ``--gradood-checkpoint-dir``), or skipped
with one line (what is missing and where it goes: the report's ``missing-data.md``). Rows with
the same detector settings share one measurement, and all of Tables 7 and 8 come from one
cached forward pass per dataset. The tolerance of each row and its reason are in
:mod:`gradood.harness.checks`; every compared row goes into the run's report.

Collect them in any project by importing them into a test module, e.g.
``from gradood.harness.paper_tests import test_table1, test_table7, test_table8``; the data and
model come from the ``pytest_gradood_open_protocol`` / ``pytest_gradood_load_model`` hooks.
"""

from __future__ import annotations

import pytest

from .. import reported
from .checks import PaperCheck, paper_checks

CHECKS = paper_checks()


def _rows(table: str) -> list:
    return [
        pytest.param(check, id=check.id.removeprefix(f"{table}[")[:-1])
        for check in CHECKS
        if check.table == table
    ]


def _check(check: PaperCheck, paper_measurements, gradood_report) -> None:
    try:
        comparison = paper_measurements.compare(check, CHECKS)
    except pytest.skip.Exception as skipped:
        gradood_report.skipped.append((check, str(skipped.msg)))
        raise
    except Exception as error:  # counted in the summary, the first in full in missing-data.md
        gradood_report.add_error(check, error)
        raise
    gradood_report.comparisons.append(comparison)
    tolerance = check.tolerance
    assert comparison.within_tolerance, (
        f"{check.id}: FPR95 {comparison.fpr95:.2f} vs {check.fpr95:.2f} reported "
        f"(tolerance {tolerance.fpr95}), AUROC {comparison.auroc:.2f} vs {check.auroc:.2f} "
        f"(tolerance {tolerance.auroc}); tolerance because: {tolerance.reason}"
    )


def _table_test(table: str):
    """The test of every row of ``table``, one parameter per row."""

    @pytest.mark.parametrize("check", _rows(table))
    def test(check: PaperCheck, paper_measurements, gradood_report) -> None:
        _check(check, paper_measurements, gradood_report)

    return test


# one test function per transcribed table (test_table1, test_table6, ...): a table added to
# gradood.reported is tested with no code here
for _name in reported.tables():
    globals()[f"test_{_name}"] = _table_test(_name)
