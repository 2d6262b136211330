"""Every Python block of README.md and docs/ runs as written (pytest-examples).

Each block runs as its own ``__main__`` module in an empty working folder, so it must import what
it uses and make its own model and inputs. A block whose fence says ``needs="data"`` or
``needs="weights"`` needs files that no test has: it must stop with gradood's "not found" error,
a ``FileNotFoundError`` whose message names a path the block uses. Every block, run or not, is
checked by ruff's pyflakes rules (undefined and unused names).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_examples import CodeExample, EvalExample, find_examples

REPO = Path(__file__).resolve().parents[1]
#: built output, generated files and notes from other branches that are not pages yet
NOT_PAGES = ("_build", "_generated")
NEEDS = ("data", "weights")


def _documents() -> list[Path]:
    pages = sorted((REPO / "docs").rglob("*.md"))
    return [REPO / "README.md"] + [
        page for page in pages if not set(page.relative_to(REPO / "docs").parts) & set(NOT_PAGES)
    ]


EXAMPLES = list(find_examples(*_documents()))


def _id(example: CodeExample) -> str:
    return f"{example.path.relative_to(REPO)}:{example.start_line}"


def _path_literals(source: str) -> list[str]:
    """The string constants of ``source`` that look like paths (``"data"`` included)."""
    constants = [
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    return [text for text in constants if "/" in text or text == "data"]


def _pyflakes(example: CodeExample) -> None:
    """ruff's pyflakes rules alone, without the project's configuration (a block is no module
    of the package): undefined names, unused imports."""
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F", "-"],
        input=example.source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, f"{_id(example)}:\n{lint.stdout}{lint.stderr}"


def test_the_readme_and_the_docs_have_blocks():
    documents = {example.path.name for example in EXAMPLES}
    assert {"README.md", "detectors.md", "pytorch-ood.md", "harness.md"} <= documents
    assert any(example.prefix_settings().get("needs") for example in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=_id)
def test_block_runs_as_written(
    example: CodeExample, eval_example: EvalExample, tmp_path, monkeypatch
):
    needs = example.prefix_settings().get("needs")
    assert needs in (None, *NEEDS), f"{_id(example)}: needs={needs!r}, not one of {NEEDS}"
    _pyflakes(example)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])  # the block's own
    if needs is None:
        eval_example.run(example)
        return
    with pytest.raises(FileNotFoundError) as caught:
        eval_example.run(example)
    paths = _path_literals(example.source)
    assert any(path in str(caught.value) for path in paths), (str(caught.value), paths)
