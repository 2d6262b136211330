"""Draw the figures of a bundled run for the docs (``docs/_generated/``, not committed).

The bundled digits benchmark (:mod:`gradood.harness.bundled`) restricted to the detectors of
the paper's tables, GradNorm at every norm of Table 7 and temperature of Table 8: the same
rows as ``pytest benchmarks`` computes for them (float64, so the same on every machine up to
near-ties), in about 15 s on one CPU core. The report writes the figures (GradNorm against
p and T, the other detectors' Averages as reference lines) and their table.

Run by ``docs/conf.py`` when a figure is missing; ``python docs/make_figures.py`` redraws.
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "_generated"
#: the files the pages include
FIGURES = ("bundled-digits-benchmark_p.png", "bundled-digits-benchmark_temperature.png")


def main(out: Path = OUT) -> list[Path]:
    """Run the benchmark and write the report's files into ``out``."""
    from gradood.harness.bundled import PAPER_DETECTORS, TITLE, run_bundled
    from gradood.harness.report import Report

    run = run_bundled(threads=1, names=list(PAPER_DETECTORS))
    report = Report(tables={TITLE: run.table}, defaults={TITLE: PAPER_DETECTORS})
    written = report.write(out)
    missing = [name for name in FIGURES if not (out / name).is_file()]
    if missing:
        raise RuntimeError(f"the report drew no {', '.join(missing)} in {out}")
    return written


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))
    for path in main():
        print(path)
