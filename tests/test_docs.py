"""The documentation site stays in step with the code: the CLI reference lists every command and
option of the app (it is generated from it at build time), the site is wired to that generator,
and the README stays a short front page."""

from pathlib import Path

import typer
import yaml

from inflora.cli import app
from inflora.cli.reference import cli_reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_lists_every_command_and_option():
    text = cli_reference_markdown()
    commands = typer.main.get_command(app).commands
    assert len(commands) >= 7
    for name, cmd in commands.items():
        assert f"## `inflora {name}`" in text, name
        section = text.split(f"## `inflora {name}`", 1)[1].split("\n## ", 1)[0]
        for param in cmd.params:
            if param.param_type_name == "option" and not getattr(param, "hidden", False):
                for opt in [*param.opts, *param.secondary_opts]:
                    assert f"`{opt}`" in section, f"{name} {opt}"
            elif param.param_type_name == "argument":
                assert f"`{param.name.upper()}`" in section, f"{name} {param.name}"


def test_site_builds_the_reference_from_the_app():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert "docs/hooks/cli_reference.py" in config["hooks"]
    assert "<!-- cli-reference -->" in (ROOT / "docs/reference/cli.md").read_text()
    pages = []

    def walk(items):
        for item in items:
            for value in item.values() if isinstance(item, dict) else [item]:
                walk(value) if isinstance(value, list) else pages.append(value)

    walk(config["nav"])
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page
