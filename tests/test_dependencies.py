"""pyproject.toml tells the truth: every third-party package that ``src/`` imports is declared, and
every declared package is imported (or listed below with the reason it is needed without an import)."""

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

import inflora

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

SRC = Path(inflora.__file__).parent
PYPROJECT = SRC.parents[1] / "pyproject.toml"
USED_WITHOUT_IMPORT = {"tensorboard": "transformers' TensorBoard callback writes InflectionCallback's scalars"}


def imported_modules(root: Path = SRC) -> set[str]:
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"inflora", "__future__"}


def distribution(module: str, owners: dict) -> str:
    return re.sub(r"[-_.]+", "-", owners.get(module, [module])[0]).lower()


def declared(extra: str | None = None) -> set[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    deps = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", d).group()).lower() for d in deps}


def test_every_import_is_declared_and_every_declaration_used():
    owners = md.packages_distributions()
    used = {distribution(m, owners) for m in imported_modules()}
    assert used - declared() == set(), "imported but not in pyproject dependencies"
    assert declared() - used - set(USED_WITHOUT_IMPORT) == set(), "declared but never imported"


def test_examples_imports_are_declared_in_the_examples_and_test_extras():
    """The tests run the examples, so what they import must install with ``.[test]``; a user who
    runs them alone installs ``.[examples]``."""
    owners = md.packages_distributions()
    examples = SRC.parents[1] / "examples"
    local = {path.stem for path in examples.glob("*.py")}  # examples import each other's helpers
    used = {distribution(m, owners) for m in imported_modules(examples) - local}
    assert used - declared() - declared("examples") == set(), "examples import packages no extra declares"
    assert declared("examples") <= declared("test"), "the test extra must install what the examples need"
