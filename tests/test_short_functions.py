"""The house rule "a function does one job; over ~60 lines, split it", checked on every function
in ``src/``: a long function fails here with its file, line and length, so it is split when written
rather than found later. The body is measured: the docstring does not count (saying why is never
too long), nor the signature (the formatter writes one parameter per line, and a typer command
declares its options there)."""

import ast
from pathlib import Path

import inflora

ROOT = Path(inflora.__file__).parent
LIMIT = 60  # lines of the body, from its first statement after the docstring to its last line


def _body(fn: ast.AST) -> list[ast.stmt]:
    first = fn.body[0]
    is_doc = (
        isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    )
    return fn.body[1:] if is_doc and len(fn.body) > 1 else fn.body


def function_lengths(root: Path = ROOT) -> list[tuple[int, str]]:
    """(length, 'path:line name') of every function and method under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = _body(node)
                length = body[-1].end_lineno - body[0].lineno + 1
                found.append((length, f"{path.relative_to(root)}:{node.lineno} {node.name}"))
    return found


def test_no_function_is_over_the_limit():
    long = sorted((n, where) for n, where in function_lengths() if n > LIMIT)
    assert long == [], "split these functions: " + "; ".join(f"{where} ({n} lines)" for n, where in long)


def test_the_check_sees_a_long_function(tmp_path):
    """The measure can fail: a 70-line body is reported; its docstring and signature are not counted."""
    body = "".join(f"    x{i} = {i}\n" for i in range(70))
    (tmp_path / "long.py").write_text(f'def long(\n    a,\n    b,\n):\n    """why\n\n    more why"""\n{body}')
    assert function_lengths(tmp_path) == [(70, "long.py:1 long")]
