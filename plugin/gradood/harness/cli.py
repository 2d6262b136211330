"""The ``gradood`` console command (``[project.scripts]``): ``gradood compare REPORT_DIR
REPORT_DIR...`` says whether saved runs of the main job agree
(:mod:`gradood.harness.compare`).

Exit status: 0 when every verdict agrees, 1 when a number differs beyond its tolerance (the rows
are named), 2 for a path that is not a report or fewer than two runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .compare import NotAReport, compare, read_run, resolve_runs
from .compare_text import comparison_lines

__all__ = ["main"]

SAME, DIFFERS, BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradood", description="gradood's command line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compare_command = commands.add_parser(
        "compare",
        help="whether saved runs of the main job (pytest benchmarks) agree",
        description=(
            "Compare the report folders of runs of the main job: the environments, each "
            "bundled table row beside its tolerance, and the speed verdicts, side by side. "
            "A REPORT_DIR is a run's folder (holding summary.txt), a report-dir "
            "(--gradood-report-dir: its latest complete run), or a folder of report-dirs "
            "(the latest run of each). Exit status 0: the same; 1: a number differs beyond "
            "its tolerance; 2: not a report."
        ),
    )
    compare_command.add_argument("paths", nargs="+", metavar="REPORT_DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gradood`` with ``argv`` (default: the command line); returns the exit status."""
    arguments = _parser().parse_args(argv)
    try:
        runs = [read_run(run) for path in arguments.paths for run in resolve_runs(path)]
    except NotAReport as error:
        print(f"gradood compare: error: {error}", file=sys.stderr)
        return BAD_INPUT
    if len(runs) < 2:
        print(
            f"gradood compare: error: needs at least two runs, found {len(runs)} in "
            f"{', '.join(arguments.paths)}",
            file=sys.stderr,
        )
        return BAD_INPUT
    comparison = compare(runs)
    if not (comparison.rows or comparison.problems or comparison.speed):
        print(
            "gradood compare: error: nothing to compare: no run recorded test-set sizes "
            "(test-sets.csv) or speed verdicts (speed.csv); reports written before gradood "
            "recorded them cannot be compared",
            file=sys.stderr,
        )
        return BAD_INPUT
    print("\n".join(comparison_lines(comparison)))
    return DIFFERS if comparison.failures() else SAME


if __name__ == "__main__":
    sys.exit(main())
