"""Whether runs of the main job (``pytest benchmarks``) agree, from their saved report folders
alone (nothing is re-run): the reader behind ``gradood compare``.

Which run a path names (:func:`resolve_runs`):

- a run's folder (it holds ``summary.txt``, which the harness writes last and only where every
  other file of the folder was written): that run;
- a report-dir (``--gradood-report-dir``: one time-stamped folder per run): its latest complete
  run, i.e. the last by name (``YYYYmmdd-HHMMSS``, then ``.1``, ``.2``, ... for runs started
  in the same second) of its folders that hold ``summary.txt``;
- a folder of report-dirs (e.g. tox's ``.tox/reports``): the latest complete run of each.

The verdicts (:func:`compare`):

- every table of :func:`gradood.evaluate` in the runs' folders (the bundled table; a paper
  protocol's measured table), row by row (detector, settings, OOD set): ``same`` when, for
  every metric, the largest difference between the runs is within :func:`tolerance` (from the
  row's test-set sizes, its ``n_id`` and ``n_ood``), ``differs`` otherwise, or where a run
  lacks the row or the test sets differ;
- the speed verdicts are shown side by side for information. Timings on a CPU move with the
  machine's load, so they never fail the comparison; on a GPU, where the harness enforces its
  targets, a target met in one run and missed in another fails it if every run timed on the
  same GPU model (``timed on`` in ``environment.csv``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..evaluate import AVERAGE, KEY_COLUMNS, METRICS, SIZE_COLUMNS
from ..metrics import swap_tolerance
from . import report_records as records
from .environment import TIMED_ON
from .timing import MET, MISSED
from .writing import RUN_MARK, folder_order

__all__ = [
    "SWAPS",
    "Comparison",
    "NotAReport",
    "RowVerdict",
    "Run",
    "SpeedRow",
    "compare",
    "read_run",
    "resolve_runs",
    "tolerance",
]

#: ID/OOD pairs of nearly tied scores that may trade places between runs: runs that differ
#: only in float rounding (torch version, CPU, thread count; float64 everywhere, a few
#: detectors in float32) reorder scores tied to within that rounding, of which the bundled
#: set of 719 x 719 pairs has about none in float64; five allow for the float32 detectors
#: (the bundled benchmark allows as many between thread counts: ``NEAR_TIE_TOLERANCE``)
SWAPS = 5
#: the rounding of a difference of two numbers read back from CSV (17 significant digits)
_ROUNDING = 1e-12
#: the columns that a table of :func:`gradood.evaluate` needs here (its metrics: those present)
_TABLE = (*KEY_COLUMNS, *SIZE_COLUMNS)


class NotAReport(ValueError):
    """A path given to ``gradood compare`` that is no run, report-dir or folder of them."""

    def __init__(self, path: Path, problem: str):
        self.path = path
        super().__init__(
            f"{path}: {problem}; expected a run's report folder (holding {RUN_MARK}), a "
            f"report-dir of such folders (--gradood-report-dir), or a folder of report-dirs"
        )


@dataclass
class Run:
    """What one run's report folder recorded."""

    folder: Path
    environment: dict[str, str]
    #: each table of :func:`gradood.evaluate` by its file's name without ``.csv``, indexed by
    #: its key (method, settings, ood_data, as text), its metrics and sizes as numbers
    tables: dict[str, pd.DataFrame]
    #: :data:`gradood.harness.report_records.SPEED_COLUMNS` (no rows if not recorded)
    speed: pd.DataFrame


# -- which runs ------------------------------------------------------------------------------


def _is_run(folder: Path) -> bool:
    return (folder / RUN_MARK).is_file()


def _latest_run(folder: Path) -> Path | None:
    runs = [sub for sub in folder.iterdir() if sub.is_dir() and _is_run(sub)]
    return max(runs, key=folder_order) if runs else None


def resolve_runs(path: str | Path) -> list[Path]:
    """The run folders ``path`` names (see the module's docstring).

    :raises NotAReport: naming ``path`` and what was expected there
    """
    path = Path(path)
    if not path.exists():
        raise NotAReport(path, "no such file or folder")
    if not path.is_dir():
        raise NotAReport(path, "not a folder")
    if _is_run(path):
        return [path]
    latest = _latest_run(path)
    if latest is not None:
        return [latest]
    folders = sorted(sub for sub in path.iterdir() if sub.is_dir())
    runs = [run for run in map(_latest_run, folders) if run is not None]
    if not runs:
        raise NotAReport(path, f"no {RUN_MARK} in it, its folders or theirs")
    return runs


# -- reading ---------------------------------------------------------------------------------


def _csv(path: Path, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV as text (empty cells as empty text), so that keys read back as written.

    :raises NotAReport: if it cannot be parsed or lacks one of ``columns``
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' ParserError is a ValueError
        raise NotAReport(path, f"not a CSV file of the report ({error})") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise NotAReport(path, f"no column(s) {', '.join(missing)}")
    return frame


def _record(folder: Path, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """The report's record ``name`` (no rows if the run did not write it)."""
    path = folder / name
    return _csv(path, columns) if path.is_file() else pd.DataFrame(columns=list(columns))


def _table(path: Path) -> pd.DataFrame | None:
    """The table of :func:`gradood.evaluate` in ``path`` (see :attr:`Run.tables`); ``None`` if
    ``path`` is another CSV file of the report.

    :raises NotAReport: if it repeats a key or a size is not a number
    """
    table = _csv(path)
    if not set(_TABLE) <= set(table.columns):
        return None
    if table.duplicated(list(KEY_COLUMNS)).any():
        raise NotAReport(path, f"a table with repeated rows ({', '.join(KEY_COLUMNS)})")
    if not (table["n_id"].str.isdigit() & table["n_ood"].str.isdigit()).all():
        raise NotAReport(path, "a row whose n_id or n_ood is not a count")
    for column in [*METRICS, *SIZE_COLUMNS]:
        if column in table.columns:
            table[column] = pd.to_numeric(table[column].replace("", "nan"), errors="coerce")
    return table.set_index(list(KEY_COLUMNS))


def read_run(folder: str | Path) -> Run:
    """The records of the run in ``folder``: its environment, its tables of
    :func:`gradood.evaluate` and its speed verdicts (each empty where the run has none).

    :raises NotAReport: if ``folder`` is not a run's folder or a record is unreadable
    """
    folder = Path(folder)
    if not _is_run(folder):
        raise NotAReport(folder, f"no {RUN_MARK} in it")
    environment = _record(folder, records.ENVIRONMENT, ("what", "value"))
    tables = {path.stem: _table(path) for path in sorted(folder.glob("*.csv"))}
    return Run(
        folder,
        dict(zip(environment["what"], environment["value"], strict=True)),
        {name: table for name, table in tables.items() if table is not None},
        _record(folder, records.SPEED, records.SPEED_COLUMNS),
    )


# -- verdicts --------------------------------------------------------------------------------


def tolerance(table: pd.DataFrame, key: tuple[str, ...]) -> dict[str, float]:
    """How far row ``key`` of ``table`` (:attr:`Run.tables`) may differ between runs:
    :data:`SWAPS` swapped pairs of nearly tied ID/OOD scores
    (:func:`gradood.metrics.swap_tolerance`) on its test sets.

    An ``Average`` row is the mean of the detector's rows of its ``m`` OOD sets: ``s_j`` swaps
    in set ``j`` (``s`` in all) move it by at most
    :math:`\\frac{1}{m} \\sum_j s_j\\, b(n_j) \\leq s\\, b(m \\min_j n_j)`, each bound
    :math:`b(n)` being proportional to :math:`1/n` or constant.
    """
    n_id, n_ood = (int(table.loc[key, column]) for column in ("n_id", "n_ood"))
    if key[-1] == AVERAGE:
        sets = table[[k[:-1] == key[:-1] and k[-1] != AVERAGE for k in table.index]]
        if len(sets):
            n_ood = len(sets) * int(sets["n_ood"].min())
    return swap_tolerance(n_id, n_ood, SWAPS)


@dataclass
class RowVerdict:
    """One row of a table across the runs."""

    table: str
    key: dict[str, str]
    #: metric -> each run's value (``None`` where the run lacks the row)
    values: dict[str, list[float | None]]
    tolerance: dict[str, float]
    #: why the row differs (metrics beyond tolerance, runs without it); empty: the same
    problems: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "differs" if self.problems else "same"

    def difference(self, metric: str) -> float | None:
        """The largest difference of ``metric`` between the runs (``None``: a run lacks it)."""
        values = self.values[metric]
        if any(value is None for value in values):
            return None
        missing = [math.isnan(value) for value in values]
        if any(missing):  # a metric no run could compute is the same; one only some could, not
            return 0.0 if all(missing) else math.inf
        return max(values) - min(values)

    def name(self) -> str:
        return " ".join(self.key[column] for column in KEY_COLUMNS if self.key[column])


@dataclass
class SpeedRow:
    """One speed verdict across the runs: each run's row of ``speed.csv`` (``None``: absent)."""

    what: str
    setting: str
    runs: list[dict[str, str] | None]
    #: why the verdicts' difference fails the comparison (empty: it does not)
    problem: str = ""


@dataclass
class Comparison:
    """The runs side by side and their verdicts."""

    runs: list[Run]
    rows: list[RowVerdict]
    speed: list[SpeedRow]
    #: differences that are not a row's (a table missing in a run)
    problems: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """What differs beyond tolerance: one line each, naming the table and the row."""
        return [
            *self.problems,
            *(
                f"{row.table}: {row.name()}: {'; '.join(row.problems)}"
                for row in self.rows
                if row.problems
            ),
            *(
                f"speed: {row.what} {row.setting}: {row.problem}"
                for row in self.speed
                if row.problem
            ),
        ]


def _sizes(table: pd.DataFrame, key: tuple[str, ...]) -> str | None:
    """``n_id/n_ood`` of row ``key`` (``None``: no such row)."""
    if key not in table.index:
        return None
    return f"{int(table.loc[key, 'n_id'])}/{int(table.loc[key, 'n_ood'])}"


def _row_verdict(name: str, tables: list[pd.DataFrame], key: tuple[str, ...]) -> RowVerdict:
    metrics = [m for m in METRICS if all(m in table.columns for table in tables)]
    present = [key in table.index for table in tables]
    values = {
        m: [float(t.loc[key, m]) if here else None for t, here in zip(tables, present, strict=True)]
        for m in metrics
    }
    first = tables[present.index(True)]
    row = RowVerdict(name, dict(zip(KEY_COLUMNS, key, strict=True)), values, tolerance(first, key))
    absent = [f"[{i}]" for i, here in enumerate(present, start=1) if not here]
    if absent:
        row.problems.append(f"not in run {', '.join(absent)}")
    sizes = [_sizes(table, key) for table in tables]
    if len({size for size in sizes if size is not None}) > 1:
        shown = ", ".join(f"[{i}] {size}" for i, size in enumerate(sizes, start=1) if size)
        row.problems.append(f"the test sets differ (n_id/n_ood {shown})")
    for metric in metrics:
        difference = row.difference(metric)
        if difference == math.inf:
            row.problems.append(f"{metric} is not a number in some of the runs")
        elif difference is not None and not difference <= row.tolerance[metric] + _ROUNDING:
            row.problems.append(
                f"{metric} differs by {100 * difference:.3g} % "
                f"(tolerance {100 * row.tolerance[metric]:.2g} %)"
            )
    return row


def _timed_on_one_gpu(runs: list[Run]) -> bool:
    """Whether every run timed on the same GPU model."""
    devices = {run.environment.get(TIMED_ON, "cpu") for run in runs}
    return len(devices) == 1 and devices != {"cpu"}


def _speed_rows(runs: list[Run]) -> list[SpeedRow]:
    by_run = [
        {(row["what"], row["setting"]): row for row in run.speed.to_dict("records")} for run in runs
    ]
    keys = list(dict.fromkeys(key for rows in by_run for key in rows))
    one_gpu = _timed_on_one_gpu(runs)
    result = []
    for what, setting in keys:
        rows = [rows.get((what, setting)) for rows in by_run]
        verdicts = {row["verdict"] for row in rows if row is not None}
        flipped = {MET, MISSED} <= verdicts
        problem = (
            "met in one run, missed in another, on the same GPU" if flipped and one_gpu else ""
        )
        result.append(SpeedRow(what, setting, rows, problem))
    return result


def compare(runs: list[Run]) -> Comparison:
    """The verdicts of ``runs`` side by side (see the module's docstring).

    :raises ValueError: for fewer than two runs
    """
    if len(runs) < 2:
        raise ValueError(f"need at least two runs to compare, got {len(runs)}")
    problems, rows = [], []
    for name in dict.fromkeys(name for run in runs for name in run.tables):
        lacking = [f"[{i}]" for i, run in enumerate(runs, start=1) if name not in run.tables]
        if lacking:
            problems.append(f"{name}: not in run {', '.join(lacking)}")
            continue
        tables = [run.tables[name] for run in runs]
        keys = dict.fromkeys(key for table in tables for key in table.index)
        rows += [_row_verdict(name, tables, key) for key in keys]
    return Comparison(runs, rows, _speed_rows(runs), problems)


def label(run: Run) -> str:
    """A run's folder as ``report-dir/run`` (e.g. ``torch21/20261207-061502``)."""
    return f"{run.folder.parent.name}/{run.folder.name}"
