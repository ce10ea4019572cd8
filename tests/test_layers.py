"""Imports point one way: a package imports only from packages on lower layers (or from itself).

Every import counts, including those inside functions, since an import hidden in a function is
still a dependency (and a hidden cycle). Adding a package means giving it a layer here.
"""

import ast
from pathlib import Path

import inflora

ROOT = Path(inflora.__file__).parent
LAYERS = {  # lower number = lower layer; a package may import only from strictly lower numbers
    "errors": 0,
    "io": 1,
    "registry": 1,
    "devices": 1,
    "validate": 1,
    "models": 2,
    "data": 2,
    "select": 2,
    "metrics": 3,
    "strategies": 3,
    "probe": 4,
    "diagnosis_schema": 4,
    "diagnosis_steps": 5,
    "remedies": 5,  # diagnose()'s steps, below the function that runs them
    "diagnosis": 6,
    "training": 7,
    "reports": 7,
    "export": 7,
    "weight_scan": 7,
    "experiment": 8,
    "cli": 9,
    "__main__": 10,
    "__init__": 10,  # the package facade re-exports the public API
}


def package_of(path: Path, root: Path) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


def imported_packages(path: Path, root: Path):
    """(line, package) for every import of another inflora package in ``path``."""
    here = list(path.relative_to(root).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = here[: len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
            names = [parts[0]] if parts else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "inflora":
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("inflora.")]
        else:
            continue
        for name in names:
            yield node.lineno, name


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        mine = package_of(path, root)
        assert mine in LAYERS, f"{path}: package {mine!r} has no layer in tests/test_layers.py"
        for line, other in imported_packages(path, root):
            if other != mine and other in LAYERS and LAYERS[other] >= LAYERS[mine]:
                out.append(
                    f"{path.relative_to(root)}:{line}: {mine} (layer {LAYERS[mine]}) imports {other} (layer {LAYERS[other]})"
                )
    return out


def test_imports_point_down_only():
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself can fail: a metric importing a remedy (even inside a function) is caught."""
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "bad.py").write_text("def f():\n    from ..remedies.redo import recycle\n")
    (tmp_path / "probe.py").write_text("from .metrics import DIAGNOSTICS\nfrom inflora.diagnosis import diagnose\n")
    found = violations(tmp_path)
    assert found == [
        "metrics/bad.py:2: metrics (layer 3) imports remedies (layer 5)",
        "probe.py:2: probe (layer 4) imports diagnosis (layer 6)",
    ]


def module_imports(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the inflora modules (files, not package facades) it imports, function-level
    imports included. ``training.loop`` -> {"training.checkpoint", ...}."""
    modules = {".".join(p.relative_to(root).with_suffix("").parts) for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        here = list(path.relative_to(root).parts[:-1])
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[: len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("inflora."):
                base = node.module.split(".")[1:]
            else:
                continue
            candidates = [".".join(base)] + [".".join([*base, a.name]) for a in node.names]
            targets |= {c for c in candidates if c in modules and not c.endswith("__init__")}
        if not name.endswith("__init__"):
            graph[name] = targets - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module that sits on an import cycle, as the cycle's path (depth-first search)."""
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle_between_modules():
    assert import_cycles(module_imports()) == []


def test_the_cycle_check_catches_a_function_level_cycle(tmp_path):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "loop.py").write_text("def f():\n    from .finetune import save\n")
    (tmp_path / "training" / "finetune.py").write_text("from .loop import run\n")
    assert import_cycles(module_imports(tmp_path)) == [["training.finetune", "training.loop", "training.finetune"]]
