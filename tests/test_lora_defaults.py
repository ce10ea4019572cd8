"""LoRA's defaults live in one place (``inflora.validate.LORA_DEFAULTS``); a default typed again
anywhere (a CLI option, a config field, a function signature) is caught here.

Three nets: the typer app's options as click sees them, the signatures and dataclass fields of the
library, and a scan of the source for a number written as the default of a LoRA-named parameter
(so a place added later is caught without being listed here)."""

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import typer.main

import inflora
from inflora.cli import app
from inflora.validate import LORA_DEFAULTS

ROOT = Path(inflora.__file__).parent
CLI_NAMES = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}
# parameter / field name -> the LORA_DEFAULTS field it must default to, where the name is LoRA's
SOURCE_NAMES = {**CLI_NAMES, "r": "r", "alpha": "alpha", "dropout": "dropout", "rank": "r"}
# where r/alpha/dropout/rank mean LoRA's (elsewhere "rank" is a process rank, "alpha" an EMA momentum)
LORA_FILES = (
    "strategies/lora.py",
    "strategies/registry.py",
    "strategies/budget.py",
    "training/memory_plan.py",
    "training/activation_formula.py",
)


def cli_options():
    """(command, option name, default) for every LoRA option of every command."""
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if param.name in CLI_NAMES:
                yield name, param.name, param.default


def test_every_lora_option_of_the_cli_defaults_to_lora_defaults():
    found = list(cli_options())
    assert {c for c, _, _ in found} >= {"finetune", "export", "compare", "plan"}
    for command, option, default in found:
        assert default == getattr(LORA_DEFAULTS, CLI_NAMES[option]), f"inflora {command} --{option}"


def _defaults(obj) -> dict:
    if dataclasses.is_dataclass(obj):
        return {f.name: f.default for f in dataclasses.fields(obj)}
    return {p.name: p.default for p in inspect.signature(obj).parameters.values()}


def library_objects():
    from inflora.experiment.compare import ComparePlan
    from inflora.strategies.budget import match_budget
    from inflora.strategies.lora import check_lora_targets, inject_lora, lora_config
    from inflora.strategies.registry import StrategyOptions
    from inflora.training.activation_formula import BlockRole
    from inflora.training.config import FinetuneConfig
    from inflora.training.memory_plan import PlanSpec

    return [
        FinetuneConfig,
        StrategyOptions,
        ComparePlan,
        PlanSpec,
        BlockRole,
        lora_config,
        inject_lora,
        check_lora_targets,
        match_budget,
    ]


@pytest.mark.parametrize("obj", library_objects(), ids=lambda o: o.__name__)
def test_library_signatures_agree_with_lora_defaults(obj):
    defaults = {k: v for k, v in _defaults(obj).items() if k in SOURCE_NAMES}
    assert defaults, f"{obj.__name__} has no LoRA default to check"
    for name, value in defaults.items():
        assert value == getattr(LORA_DEFAULTS, SOURCE_NAMES[name]), f"{obj.__name__}({name}=...)"


def test_the_default_targets_are_the_preset_lora_defaults_names():
    from inflora.strategies.lora import resolve_targets

    assert resolve_targets("bert", None) == resolve_targets("bert", LORA_DEFAULTS.targets)
    assert resolve_targets("bert", None) != resolve_targets("bert", "mlp")


def typed_defaults(path: Path, text: str | None = None) -> list[str]:
    """``file:line name=value`` for each number written as the default of a LoRA-named parameter,
    dataclass field or typer option (``lora_r: int = typer.Option(8)``)."""
    text = path.read_text() if text is None else text
    lora_file = any(str(path).endswith(f) for f in LORA_FILES)
    names = SOURCE_NAMES if lora_file else CLI_NAMES
    out = []
    for node in ast.walk(ast.parse(text)):
        pairs = []
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            pairs.append((node.target.id, node.value))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs += zip([a.arg for a in positional[len(positional) - len(args.defaults) :]], args.defaults)
            pairs += [(a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
        for name, value in pairs:
            if isinstance(value, ast.Call) and value.args:  # typer.Option(8, ...)
                value = value.args[0]
            if (
                name in names
                and isinstance(value, ast.Constant)
                and isinstance(value.value, (int, float))
                and not isinstance(value.value, bool)
            ):
                out.append(f"{path.name}:{value.lineno} {name}={value.value}")
    return out


def test_no_lora_default_is_typed_again_in_the_source():
    found = [hit for path in sorted(ROOT.rglob("*.py")) if path.name != "validate.py" for hit in typed_defaults(path)]
    assert found == []


def test_the_scan_catches_a_retyped_default():
    """The scan itself can fail: each way of typing a default again is found."""
    code = (
        "import typer\n"
        "def cmd(lora_r: int = typer.Option(8), lora_alpha: int = typer.Option(LORA_DEFAULTS.alpha)): ...\n"
        "class Config:\n    lora_dropout: float = 0.1\n"
        "def inject(model, *, r: int = 8, alpha=LORA_DEFAULTS.alpha): ...\n"
    )
    assert sorted(typed_defaults(ROOT / "cli" / "x.py", code)) == ["x.py:2 lora_r=8", "x.py:4 lora_dropout=0.1"]
    assert sorted(typed_defaults(ROOT / "strategies" / "lora.py", code)) == [
        "lora.py:2 lora_r=8",
        "lora.py:4 lora_dropout=0.1",
        "lora.py:5 r=8",
    ]


DOC_LINE = re.compile(r"LoRA defaults[^:]*:\s*r = (\d+), alpha = (\d+), dropout ([\d.]+)")


def test_the_docs_state_the_lora_defaults_the_code_has():
    """Where the README or the site states the defaults, it states LORA_DEFAULTS' values."""
    repo = ROOT.parents[1]
    pages = [repo / "README.md", *(p for p in (repo / "docs").rglob("*.md") if "results" not in p.parts)]
    stated = [(p.name, m.groups()) for p in pages if p.is_file() for m in DOC_LINE.finditer(p.read_text())]
    assert stated, "no page states the LoRA defaults"
    want = (str(LORA_DEFAULTS.r), str(LORA_DEFAULTS.alpha), str(LORA_DEFAULTS.dropout))
    assert [(name, groups) for name, groups in stated if groups != want] == []
