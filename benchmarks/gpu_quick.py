"""The files of ``benchmarks/gpu-quick.sh``: its parts' pytest-benchmark JSON merged into one
file, and a Markdown summary (each part's gradood summary, then images/s per case).

    python benchmarks/gpu_quick.py WORK STEM PART [PART ...]

reads ``WORK/<part>.json``, ``WORK/<part>.log`` (pytest's output) and ``WORK/<part>.status``
(its exit status; 130 or 124 after the time limit) and writes ``STEM.json`` and ``STEM.md``.
A part that wrote no JSON (interrupted before any benchmark, nothing selected; an empty file
counts as none), or JSON that
does not parse as a pytest-benchmark document (a crash mid-write: empty or truncated), is noted
as missing, by name and cause; the other parts are merged. Where
a part left its reproduction report as ``WORK/<part>.md`` (the paper flow's ``paper.md``), its
plan, stage times and checkpoints follow the part's summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

#: the heading of gradood's closing summary in pytest's output (the last section)
SUMMARY_HEADING = " gradood summary "
#: exit statuses of a part stopped by its time limit (SIGINT: pytest's 2, timeout's 124)
STOPPED = {2, 124, 130, 137}


class Part(NamedTuple):
    """What a part left: its benchmark document (``None`` if missing), pytest's output, its exit
    status (-1 if unknown) and, when the document is missing, why."""

    document: dict | None
    log: str
    status: int
    missing: str = "no benchmark JSON"


def merge(parts: list[dict]) -> dict:
    """One pytest-benchmark document: the first part's machine and commit info, every part's
    benchmarks."""
    merged = dict(parts[0])
    merged["benchmarks"] = [bench for part in parts for bench in part.get("benchmarks", [])]
    return merged


def summary_section(log: str) -> list[str]:
    """The lines of gradood's closing summary in pytest's output, or a line saying there is none."""
    lines = log.splitlines()
    start = next((k for k, line in enumerate(lines) if SUMMARY_HEADING in line), None)
    if start is None:
        return ["(no gradood summary: nothing was measured)"]
    # the report folder was temporary
    return [line for line in lines[start + 1 :] if not line.startswith("report: ")]


#: the sections of a reproduction report that the summary repeats
REPORT_SECTIONS = ("## Plan", "## Stage times", "## Checkpoints")


def report_sections(document: str) -> list[str]:
    """The :data:`REPORT_SECTIONS` of a ``paper.md``, one heading level down."""
    lines, keep = [], False
    for line in document.splitlines():
        if line.startswith("## "):
            keep = line.startswith(REPORT_SECTIONS)
        if keep:
            lines.append("#" + line if line.startswith("## ") else line)
    return lines


def throughput_rows(document: dict) -> list[str]:
    """A Markdown table row per benchmark with images/s (and peak memory where measured)."""
    rows = []
    for bench in document.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "images_per_second" not in info:
            continue
        memory = info.get("peak_memory_MiB")
        rows.append(
            f"| {bench.get('group', '')} | {bench['name']} | {info['images_per_second']:,.1f} | "
            f"{'-' if memory is None else f'{memory:,.0f}'} |"
        )
    return rows


def markdown(stem: str, parts: dict[str, Part], reports: dict[str, str] | None = None) -> str:
    """The summary: each part's status and gradood summary (and ``reports[part]``'s
    :func:`report_sections`), then the images/s table."""
    lines = [f"# {Path(stem).name}", ""]
    documents = [part.document for part in parts.values() if part.document is not None]
    if documents:
        machine = documents[0].get("machine_info", {})
        commit = documents[0].get("commit_info", {})
        lines += [
            f"GPUs: {', '.join(machine.get('gpus', [])) or 'none (CPU)'}; torch "
            f"{machine.get('torch')}, CUDA {machine.get('cuda')}; commit "
            f"{str(commit.get('id', '?'))[:10]}; {documents[0].get('datetime', '')}",
            "",
        ]
    rows = []
    for part, (document, log, status, missing) in parts.items():
        state = "stopped by its time limit" if status in STOPPED else f"exit status {status}"
        if document is None:
            state += f", {missing}"
        lines += [f"## {part} ({state})", "", "```", *summary_section(log), "```", ""]
        if (reports or {}).get(part):
            lines += [*report_sections(reports[part]), ""]
        rows += throughput_rows(document or {})
    if rows:
        lines += [
            "## Images per second (fastest round)",
            "",
            "| group | workload | images/s | peak memory MiB |",
            "|---|---|---:|---:|",
            *rows,
            "",
        ]
    return "\n".join(lines)


def _read_document(path: Path) -> tuple[dict | None, str]:
    """The pytest-benchmark document at ``path``, or ``None`` and why it is missing."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    if not text.strip():  # pytest-benchmark < 5 creates the file when it parses its options
        return None, "no benchmark JSON"
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"benchmark JSON unreadable ({path.name}: {error})"
    if not isinstance(document, dict) or not isinstance(document.get("benchmarks"), list):
        return None, f"benchmark JSON unreadable ({path.name}: no list of benchmarks)"
    return document, ""


def _read_part(work: Path, part: str) -> Part:
    document, missing = _read_document(work / f"{part}.json")
    log_path, status_path = work / f"{part}.log", work / f"{part}.status"
    log = log_path.read_text(errors="replace") if log_path.is_file() else ""
    status_text = status_path.read_text().strip() if status_path.is_file() else ""
    status = int(status_text) if status_text.lstrip("-").isdigit() else -1
    return Part(document, log, status, missing)


def main(argv: list[str]) -> int:
    work, stem, names = Path(argv[0]), argv[1], argv[2:]
    parts = {name: _read_part(work, name) for name in names}
    reports = {
        name: (work / f"{name}.md").read_text() for name in names if (work / f"{name}.md").is_file()
    }
    documents = [part.document for part in parts.values() if part.document is not None]
    if documents:
        Path(f"{stem}.json").write_text(json.dumps(merge(documents), indent=2))
    Path(f"{stem}.md").write_text(markdown(stem, parts, reports))
    return 0 if documents else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
