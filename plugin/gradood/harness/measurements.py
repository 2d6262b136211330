"""The measurements behind the paper checks: each (protocol, measurement group) once per run,
with the data and model the ``pytest_gradood_*`` hooks give."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from ..cache import CorruptCacheError
from ..protocols import DatasetNotFoundError, protocol_class
from ..registry import detector_spec
from .checks import Comparison, PaperCheck, compare, measure_table, measured_rows, measurement_plan
from .failures import shared_failures
from .inputs import load_model, open_benchmark
from .report import Report
from .session import say

__all__ = ["PaperMeasurements"]


class PaperMeasurements:
    """Measures each (protocol, group) of the paper checks once per run, on first use.

    The protocol's data and model come from the ``pytest_gradood_open_protocol`` and
    ``pytest_gradood_load_model`` hooks, once per protocol; what is missing skips every check
    that needs it, with the same reason, recorded in ``report`` (and ``hint``, where the report
    says more, in the skip's line). Features are cached in ``cache_dir``.
    """

    def __init__(
        self, config: pytest.Config, device: str, cache_dir: Path, report: Report, hint: str
    ):
        self.config = config
        self.device = device
        self.cache_dir = cache_dir
        self.report = report
        self.hint = hint
        self._memo: dict[tuple, object] = {}

    def compare(self, check: PaperCheck, checks: list[PaperCheck]) -> Comparison:
        measured = self._once(
            ("measured", check.protocol, check.group),
            lambda: self._measure(check.protocol, check.group, checks),
        )
        return compare(check, measured)

    def _once(self, key: tuple, compute):
        """``compute()`` on the first call for ``key``; a skip is remembered and repeated, an
        error raised in full once, then in one line (:mod:`.failures`)."""
        if key not in self._memo:
            try:
                self._memo[key] = shared_failures(self.config).call(key, compute)
            except pytest.skip.Exception as skipped:
                self._memo[key] = _Skip(str(skipped.msg))
            except DatasetNotFoundError as error:
                protocol, group = key[1], key[2]
                reason = f"{group} needs the ID training set"
                self.report.add_missing(protocol, "training set", reason, f"- {error}")
                self._memo[key] = _Skip(f"{protocol}: {reason} ({self.hint})")
        value = self._memo[key]
        if isinstance(value, _Skip):
            pytest.skip(value.reason)
        return value

    def _inputs(self, protocol: str) -> tuple:
        return (
            open_benchmark(self.config, protocol),
            load_model(self.config, protocol).eval(),
        )

    def _measure(self, protocol: str, group: str, checks: list[PaperCheck]) -> dict:
        benchmark, model = self._once(("inputs", protocol), lambda: self._inputs(protocol))
        plan = measurement_plan(checks, protocol, group)
        preset = protocol_class(protocol).detector_preset
        with self.report.stages.timed(f"{protocol} {group}"):
            table = measure_table(
                benchmark,
                model,
                plan,
                group=group,
                preset=preset,
                device=self.device,
                cache_dir=self.cache_dir,
                on_corrupt=self._recomputing,
            )
        self.report.add_measured(protocol, table, _preset_settings(table, preset))
        return measured_rows(table, plan)

    def _recomputing(self, error: CorruptCacheError) -> None:
        """A cache entry that fails its check is the cache's loss only: computed again."""
        say(self.config, f"gradood: {error.problem}: extracting it again")


def _preset_settings(table: pd.DataFrame, preset: str) -> dict[str, dict[str, float]]:
    """method -> the settings of the protocol's ``preset`` that ``table`` has columns for (e.g.
    GradNorm's p = 1 and T = 1): the paper's own setting of each detector."""
    shown = {}
    for method, rows in table.groupby("method", sort=False):
        presets = detector_spec(str(method)).presets.get(preset, {})
        shown[str(method)] = {
            name: value
            for name, value in presets.items()
            if name in rows.columns and rows[name].notna().any()
        }
    return shown


@dataclass(frozen=True)
class _Skip:
    reason: str
