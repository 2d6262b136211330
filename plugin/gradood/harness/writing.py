"""Writing a run's report folder: a folder of its own for every run (created exclusively, so
two runs started in the same second get two), and a report that cannot be written is one line
that says what is missing, never an error of the run. A folder's summary (:data:`RUN_MARK`) is
written last and only where every other file was: it marks the report complete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..files import atomic_write_text
from .report import Report, ReportNotWritten, reason

__all__ = ["RUN_MARK", "folder_order", "new_folder", "write_run_report"]

#: the summary of a run, written after every other file of its folder and only where all of
#: them were: a folder holding it is a complete run's
RUN_MARK = "summary.txt"

#: the summary of a report whose files are in a folder (``None``: none)
Summarize = Callable[[Report, Path | None], list[str]]


def new_folder(planned: Path) -> Path:
    """Create and return ``planned``, or where it exists (another run's), the first free of
    ``planned.1``, ``planned.2``, ... (``mkdir`` is exclusive: no two callers get the same)."""
    planned.parent.mkdir(parents=True, exist_ok=True)
    suffix = 0
    while True:
        folder = planned if suffix == 0 else planned.with_name(f"{planned.name}.{suffix}")
        try:
            folder.mkdir()
        except FileExistsError:
            suffix += 1
            continue
        return folder


def folder_order(folder: Path) -> tuple[str, int]:
    """Where ``folder`` comes among the folders :func:`new_folder` made for one planned name:
    by the name, then by its suffix as a number (``.10`` after ``.9``; none: 0)."""
    stem, _, suffix = folder.name.rpartition(".")
    return (stem, int(suffix)) if stem and suffix.isdigit() else (folder.name, 0)


def write_run_report(
    report: Report, planned: Path, summarize: Summarize
) -> tuple[list[str], str | None]:
    """Write ``report`` and, if all of it was written, its summary (:data:`RUN_MARK`) into a new
    folder named after ``planned``; returns the summary's lines and, if something could not be
    written, one line that names the folder and what is missing."""
    try:
        folder = new_folder(planned)
    except OSError as error:
        problem = f"gradood: no report: the folder {planned} could not be made ({reason(error)})"
        return summarize(report, None), problem
    failed: dict[str, OSError] = {}
    try:
        report.write(folder)
    except ReportNotWritten as error:
        failed.update(error.failed)
    lines = summarize(report, folder)
    if not failed:
        try:
            atomic_write_text(folder / RUN_MARK, "\n".join(lines) + "\n")
        except OSError as error:
            failed[RUN_MARK] = error
    if not failed:
        return lines, None
    causes = "; ".join(dict.fromkeys(reason(error) for error in failed.values()))
    unmarked = "" if RUN_MARK in failed else f"; no {RUN_MARK}: not a complete run"
    return lines, (
        f"gradood: the report in {folder} is incomplete: {', '.join(failed)} not written "
        f"({causes}){unmarked}"
    )
