"""The report's machine-readable records beside its tables (whose rows carry their test sets'
sizes, ``n_id`` and ``n_ood``), one CSV each: where the run ran (``environment.csv``) and the
speed verdicts (``speed.csv``). :meth:`gradood.harness.report.Report.write` writes them with
these functions; ``gradood compare`` (:mod:`gradood.harness.compare`) reads them by the same
names."""

from __future__ import annotations

import pandas as pd

from .timing import PairedRatio, SpeedCheck

__all__ = [
    "ENVIRONMENT",
    "SPEED",
    "SPEED_COLUMNS",
    "environment_frame",
    "speed_frame",
]

ENVIRONMENT = "environment.csv"
SPEED = "speed.csv"
#: one row per speed verdict: the comparison, where, the median ratio and the interquartile
#: range of its rounds (equal to the median for a measurement without spread), the target
#: (``>=``/``<=`` and its bound; empty: reported only) and the verdict
SPEED_COLUMNS = ("what", "setting", "median", "iqr_low", "iqr_high", "target", "bound", "verdict")


def environment_frame(environment: dict[str, str]) -> pd.DataFrame:
    """``what, value``: one row per fact of :func:`gradood.harness.environment.environment`."""
    return pd.DataFrame(list(environment.items()), columns=["what", "value"])


def speed_frame(checks: list[SpeedCheck]) -> pd.DataFrame:
    """One row (:data:`SPEED_COLUMNS`) per speed verdict."""
    rows = []
    for check in checks:
        low, high = check.ratio.iqr if isinstance(check.ratio, PairedRatio) else (check.median,) * 2
        target = check.target
        rows.append(
            (
                check.what,
                check.setting,
                check.median,
                low,
                high,
                "" if target.bound is None else (">=" if target.at_least else "<="),
                target.bound,
                check.verdict,
            )
        )
    return pd.DataFrame(rows, columns=list(SPEED_COLUMNS))
