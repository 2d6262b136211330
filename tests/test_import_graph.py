"""The house's shape: imports point down the layers of the module map, no module imports
itself through others (at the top or inside a function), and none is over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import gradood

PACKAGE = Path(gradood.__file__).parent
#: low to high; a module may import its own layer's and lower layers' modules only
LAYERS = [
    ["metrics", "paper"],
    ["locking", "grad_mode"],
    ["validation", "files", "fingerprint", "shared", "distributed", "representations"],
    ["capture"],
    ["gradients"],
    ["heads"],
    ["models"],
    ["detectors"],
    ["wiring"],
    ["registry"],
    ["decoding"],
    ["downloads"],
    ["protocols"],
    ["cache"],
    ["features"],
    ["evaluate"],
    ["reported"],
    ["harness"],
    ["testing"],
]
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The gradood modules ``path`` imports anywhere (a name imported from a package counts as
    its submodule where there is one)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.update(f"{target}.{alias.name}" for alias in node.names)
            found.add(target)
    return {_known(target) for target in found if target.startswith("gradood")} - {None}


_MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _known(target: str) -> str | None:
    while target and target not in _MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in _MODULES.items():
        # importing a submodule runs its parents' __init__: no edge of interest
        graph[name] = {t for t in _imports(path) if t != name and not name.startswith(t + ".")}
    return graph


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else None
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def test_every_module_has_a_layer():
    unplaced = [m for m in _MODULES if m != "gradood" and _layer(m) is None]
    assert not unplaced, f"add these to LAYERS: {unplaced}"


def test_imports_point_down():
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if module != "gradood" and target != "gradood" and _layer(target) > _layer(module)
    ]
    assert not upward, "imports from a lower layer up to a higher one:\n" + "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (depth-first search), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = 2, path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_circles():
    found = _cycle(_graph())
    assert found is None, "a circle of imports: " + " -> ".join(found)


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_over_600_lines():
    long = {
        name: n
        for name, path in _MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
