"""One option, one meaning: an option that several commands take has the same help text and
``--help`` panel in each (they read one declaration in ``cli/options.py``), the same default unless
listed below with the reason, and the library's defaults (``diagnose()``, ``FinetuneConfig``,
``ComparePlan``) where the library takes it by the same name. ``--help`` shows the groups as panels."""

import dataclasses
import inspect
from collections import defaultdict

import pytest
import typer
from typer.testing import CliRunner

from inflora.cli import app
from inflora.cli.options import DATA, LORA, MODEL, OUTPUT, PROBE, SELECTION, TRAINING
from inflora.diagnosis import diagnose
from inflora.experiment.compare import ComparePlan
from inflora.strategies.budget import Budget
from inflora.training import FinetuneConfig

OWN_MEANING = {  # (command, option) -> why it is not the shared option of that name
    ("plan", "model"): "a folder with only a config.json is enough: plan builds the model on the meta device",
    ("plan", "device"): "where --measure runs (cpu | cuda), not where a model trains",
    ("plan", "attention"): "the attention kernel the memory is planned for (sdpa | eager)",
    ("plan", "layers"): "the band whose memory is planned; default: the K blocks nearest the input",
    ("plan", "budget"): "sizes lora-inflection's band when none is given",
    ("plan", "strategies"): "the strategies whose memory is planned (lisa and the diagnosis too)",
    ("experiment", "model"): "overrides the profile's model; default: the profile's",
    ("experiment", "budget"): "layers=K only: the experiment's band strategies train K blocks",
    ("export", "model"): "the model the exported config is dry-run against",
    ("export", "out"): "a file or folder, by default next to the diagnosis",
    ("export", "diagnosis"): "the diagnosis file argument (finetune's --diagnosis gives the band)",
    ("info", "model"): "the model whose structure is printed",
    ("info", "tower"): "which tower's structure is printed",
}
DEFAULTS_DIFFER = {  # option -> why commands that share it default differently
    "out": "each command writes its own folder under runs/",
    "seed": "diagnose probes with seed 0, finetune trains with 42 (the seeds of the published runs)",
    "batch_size": "plan predicts a small batch (8) by default; the commands that run use 32",
    "rules": "compare compares the peer rules by default; diagnose scores other rules only when asked",
}
API_DEFAULTS_DIFFER = {  # (command, option) -> why the CLI default is not the library's
    ("diagnose", "device"): "the library leaves a model it is given where it is (None); the CLI picks one",
    ("diagnose", "tower"): "the library leaves a given model's tower as it is (None); the CLI names one",
}


def command_params() -> dict[str, dict[str, object]]:
    """option name -> {command: the click parameter} over every command of the app."""
    by_name: dict[str, dict] = defaultdict(dict)
    for command, cmd in typer.main.get_command(app).commands.items():
        for param in cmd.params:
            if (command, param.name) not in OWN_MEANING:
                by_name[param.name][command] = param
    return by_name


SHARED = {name: params for name, params in command_params().items() if len(params) > 1}


def test_many_options_are_shared():
    """The check has something to check: the groups are used by the commands."""
    assert {
        "model",
        "task",
        "device",
        "precision",
        "batch_size",
        "max_length",
        "lora_r",
        "lora_alpha",
        "out",
        "data_dir",
        "seeds",
        "limit_train",
    } <= set(SHARED)
    assert set(SHARED["lora_r"]) == {"finetune", "compare", "export", "plan"}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_a_shared_option_has_one_help_panel_and_default(name):
    params = SHARED[name]
    helps = {command: (p.help, getattr(p, "rich_help_panel", None)) for command, p in params.items()}
    assert len(set(helps.values())) == 1, f"--{name}: {helps}"
    if name not in DEFAULTS_DIFFER:
        defaults = {command: p.default for command, p in params.items()}
        assert len(set(map(repr, defaults.values()))) == 1, f"--{name}: {defaults}"


def library_defaults(command: str) -> dict:
    """The defaults of the library call a command makes, by parameter name."""
    if command == "diagnose":
        return {
            n: p.default
            for n, p in inspect.signature(diagnose).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
    config = {"finetune": FinetuneConfig, "compare": ComparePlan}[command]
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(config)
    }


@pytest.mark.parametrize("command", ["diagnose", "finetune", "compare"])
def test_the_command_defaults_are_the_library_defaults(command):
    lib = library_defaults(command)
    cmd = typer.main.get_command(app).commands[command]
    shared = [p for p in cmd.params if p.name in lib and (command, p.name) not in API_DEFAULTS_DIFFER]
    assert len(shared) >= 10
    for p in shared:
        cli, want = p.default, lib[p.name]
        if isinstance(want, list) and isinstance(cli, str):  # a comma list on the command line
            cli = [type(want[0])(v) for v in cli.split(",")]
        if isinstance(want, Budget):  # parsed from its text
            cli = Budget.parse(cli)
        assert cli == want, f"{command} --{p.name}: {cli!r} on the command line, {want!r} in the library"


def test_finetune_options_are_config_fields():
    """finetune passes its options to FinetuneConfig by name: an option with no field of its name
    (other than --remedy, --out and the remedies' own flags) would be dropped without a word."""
    from inflora.remedies import option_owners

    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    cmd = typer.main.get_command(app).commands["finetune"]
    extra = {p.name for p in cmd.params} - fields - set(option_owners()) - {"remedy", "out"}
    assert extra == set()


@pytest.mark.parametrize(
    "command,panels",
    [
        ("diagnose", [MODEL, DATA, PROBE, SELECTION, OUTPUT]),
        ("finetune", [MODEL, DATA, TRAINING, LORA, OUTPUT, "Remedy redo (with --remedy redo)"]),
        ("compare", [MODEL, DATA, PROBE, SELECTION, TRAINING, LORA, OUTPUT]),
    ],
)
def test_help_shows_the_groups_as_panels(command, panels):
    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    for panel in panels:
        assert f"─ {panel} ─" in res.output, panel
