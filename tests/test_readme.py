"""Every command the README shows is a real command: each parses with the app's own parser, and the
60-second tour runs end to end on the real MiniLM and Rotten Tomatoes (shrunk by appending size
options, which override the README's values: the last value of an option wins)."""

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from inflora.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SMALL = {  # appended to each command of the tour so it runs in seconds
    "diagnose": ["--batches", "2", "--batch-size", "8", "--max-length", "32", "--resamples", "5"],
    "compare": [
        "--seeds",
        "42",
        "--limit-train",
        "64",
        "--limit-eval",
        "64",
        "--batches",
        "2",
        "--max-length",
        "32",
        "--diagnose-batch-size",
        "8",
    ],
    "export": [],
    "finetune": ["--limit-train", "64", "--limit-eval", "64", "--max-length", "32"],
}


def readme_commands() -> list[list[str]]:
    """Each ``inflora …`` command in the README's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("inflora "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_readme_is_short_and_shows_the_tour():
    assert len(README.splitlines()) <= 250
    assert [c[0] for c in readme_commands()][:4] == ["diagnose", "compare", "export", "finetune"]


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a[:1]))
def test_every_readme_command_parses(args):
    root = typer.main.get_command(app)
    cmd = root.commands[args[0]]
    cmd.make_context(args[0], list(args[1:]))  # raises on an unknown option or a value of the wrong type


@pytest.mark.real
def test_the_tour_runs(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in readme_commands()[:4]:
        res = runner.invoke(app, [*args, *SMALL[args[0]]], env={"INFLORA_DATA_DIR": str(data_dir)})
        assert res.exit_code == 0, (args, res.output)
    assert (tmp_path / "runs/diag/diagnosis.json").is_file() and (tmp_path / "lora.yaml").is_file()
    assert (tmp_path / "runs/compare/compare.md").is_file() and (tmp_path / "runs/ft/metrics.json").is_file()
