"""The lower bounds in ``pyproject.toml`` are what ``tox -e torch21-oldest`` installs: every
dependency (the test extra too) has one, and that environment pins each at exactly it, so a
floor that the code outgrew fails there (as pytest 7.4's did: ``Config.get_verbosity`` came in
pytest 8.0)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
#: the oldest environment's factors: its deps lines start with one of them
OLDEST = ("torch21", "oldest")


def _name(requirement: str) -> str:
    """The normalized project name of a requirement (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement)[0]).lower()


def _floors() -> dict[str, str]:
    """Each dependency of the package and its test extra -> its ``>=`` bound (``""`` if none)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    floors = {}
    for requirement in requirements:
        bound = re.search(r">=\s*([^,;\s]+)", requirement)
        floors[_name(requirement)] = bound[1] if bound else ""
    return floors


def _tox() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPOSITORY / "tox.ini", encoding="utf-8")
    return parser


def _oldest_pins() -> dict[str, str]:
    """``name -> version`` of the ``==`` pins that the oldest environment's factors select."""
    pins = {}
    for line in _tox()["testenv"]["deps"].splitlines():
        factor, _, requirement = line.strip().partition(":")
        if factor in OLDEST and "==" in requirement:
            name, _, version = requirement.strip().partition("==")
            pins[_name(name)] = version.strip()
    return pins


def test_every_dependency_has_a_floor():
    assert not [name for name, floor in _floors().items() if not floor]


def test_the_oldest_environment_pins_every_dependency_at_its_floor():
    floors, pins = _floors(), _oldest_pins()
    assert {name: pins.get(name) for name in floors} == floors
    assert set(pins) <= set(floors), "pinned but not a dependency"


def test_every_environment_runs_the_tests_and_the_main_job_into_its_report_folder():
    tox = _tox()
    assert "torch21-oldest" in tox["tox"]["env_list"]
    commands = [line.strip() for line in tox["testenv"]["commands"].splitlines()]
    assert "pytest tests {posargs}" in commands
    # one report folder per environment: what a comparison of the environments reads; the
    # oldest corner's apart (other scikit-learn and SciPy: not a torch upgrade's difference)
    reports = "pytest benchmarks --gradood-report-dir {toxinidir}/.tox/"
    assert f"!oldest: {reports}reports/{{env_name}}" in commands
    assert f"oldest: {reports}reports-oldest/{{env_name}}" in commands
    assert "compare" in tox["tox"]["env_list"]
    assert tox["testenv:compare"]["commands"].strip() == "gradood compare {toxinidir}/.tox/reports"


def _uploaded_paths(workflow: str) -> list[str]:
    """The lines of the ``path:`` of the workflow's upload-artifact step (one or a ``|`` block)."""
    step = workflow[workflow.index("uses: actions/upload-artifact") :]
    lines = step.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("path:"))
    value = lines[start].split(":", 1)[1].strip()
    if value != "|":
        return [value]
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = []
    for line in lines[start + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line.strip())
    return [line for line in block if line]


def test_the_workflow_keeps_every_report_folder_that_tox_writes():
    commands = _tox()["testenv"]["commands"]
    folders = set(re.findall(r"--gradood-report-dir \{toxinidir\}/(\S+)/\{env_name\}", commands))
    assert folders == {".tox/reports", ".tox/reports-oldest"}
    workflow = (REPOSITORY / ".github" / "workflows" / "tests.yml").read_text(encoding="utf-8")
    uploaded = {path.rstrip("/") for path in _uploaded_paths(workflow)}
    assert folders <= uploaded, f"reports that the workflow does not keep: {folders - uploaded}"
