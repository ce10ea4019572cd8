"""The README's promise, "bad input ends with one line ``error: …`` and exit code 2", for every
option of every command: the walker finds them by introspecting the typer app (so a command or an
option added later is walked too) and gives each an out-of-range value, read from the one table of
ranges (``inflora.validate.BOUNDS``, or a remedy option's own ``Option.bound``), or text that names
nothing. An option whose range is genuinely open must be listed in ``OPEN`` with the reason.
"""

import pytest
import typer
from typer.testing import CliRunner

from inflora.cli import app
from inflora.remedies import REMEDIES, option_owners
from inflora.validate import BOUNDS

runner = CliRunner()
JUNK = "\x01names nothing\n"
OPEN = {  # option -> why no value of its type is out of range
    **{
        f"{kind}_column": "any text can name a column; a column the file lacks is refused when the file is read "
        "(tests/test_data.py), and a built-in task has no columns to choose"
        for kind in ("text", "label", "prompt", "completion", "messages")
    },
}
UNWRITABLE = "/proc/inflora-walker"  # --out: the one bad value of a folder is one that cannot be written


def tiny_base(command: str, tiny: str, diagnosis: str) -> list[str]:
    """Arguments that make an accidental success cheap (a tiny model, a few examples)."""
    return {
        "diagnose": ["--model", tiny, "--batches", "1", "--batch-size", "4", "--max-length", "16", "--resamples", "0"],
        "finetune": [
            "--model",
            tiny,
            "--limit-train",
            "16",
            "--limit-eval",
            "8",
            "--strategy",
            "head",
            "--max-length",
            "16",
        ],
        "compare": [
            "--model",
            tiny,
            "--rules",
            "random",
            "--seeds",
            "1",
            "--limit-train",
            "16",
            "--limit-eval",
            "8",
            "--max-length",
            "16",
            "--batches",
            "1",
            "--diagnose-batch-size",
            "4",
            "--budget",
            "layers=1",
        ],
        "experiment": ["--profile", "smoke", "--model", tiny],
        "export": [diagnosis],
        "plan": ["--model", tiny, "--strategies", "head"],
    }.get(command, [])


def out_args(command: str, folder) -> list[str]:
    """``--out folder`` for the commands that write one (``plan`` and ``info`` print only)."""
    params = typer.main.get_command(app).commands[command].params
    return ["--out", str(folder)] if any(p.name == "out" for p in params) else []


def walk():
    """(command, parameter, flag, [bad values], extra args) for every parameter of every command."""
    group = typer.main.get_command(app)
    owners = option_owners()
    for name, command in sorted(group.commands.items()):
        for param in command.params:
            if param.param_type_name == "option" and param.is_flag:
                continue  # a flag has no value to be out of range
            flag, extra = param.opts[0], []
            if param.name in OPEN:
                continue
            if param.name in BOUNDS:
                bad = BOUNDS[param.name].outside()
            elif param.name in owners:
                owner = REMEDIES.get(owners[param.name])
                bound = owner.options[param.name].bound
                bad, extra = (bound.outside() if bound else [JUNK]), ["--remedy", owner.name]
            elif param.name == "out":
                bad = [UNWRITABLE]
            else:
                bad = [JUNK]
            yield name, param, flag, bad, extra


CASES = [
    pytest.param(c, p.name, f, b, e, id=f"{c}{'-' + f if f.startswith('--') else '-' + p.name}")
    for c, p, f, b, e in walk()
]


@pytest.fixture(scope="module")
def base_files(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("walker-diagnosis")
    res = runner.invoke(app, ["diagnose", *tiny_base("diagnose", str(tiny_bert_dir), ""), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return str(tiny_bert_dir), str(out / "diagnosis.json")


def test_the_walker_sees_every_command_and_the_issue_options():
    seen = {(c, f) for c, _, f, _, _ in walk()}
    assert {c for c, _ in seen} >= {"diagnose", "finetune", "compare", "experiment", "export"}
    assert {
        ("finetune", "--lr"),
        ("diagnose", "--max-length"),
        ("finetune", "--lora-dropout"),
        ("export", "--lora-r"),
        ("compare", "--seeds"),
        ("finetune", "--sd-lambda"),
    } <= seen
    assert len(CASES) > 100


@pytest.mark.parametrize("command,name,flag,bad,extra", CASES)
def test_every_option_refuses_an_out_of_range_value(base_files, tmp_path, command, name, flag, bad, extra):
    tiny, diagnosis = base_files
    for value in bad:
        if flag.startswith("--"):
            args = [
                command,
                *tiny_base(command, tiny, diagnosis),
                *extra,
                *out_args(command, tmp_path / "out"),
                flag,
                str(value),
            ]
        else:  # an argument: the junk takes its place
            args = [command, str(value), *out_args(command, tmp_path / "out")]
        res = runner.invoke(app, args)
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1, f"{' '.join(map(repr, args))}\n{res.output[-2000:]}"
        assert "Traceback" not in res.output, res.output
        if isinstance(value, (int, float)):
            assert f"{flag} must be" in errors[0], errors[0]
