"""The command-line reference as Markdown, generated from the typer app itself.

The documentation site renders this at build time (``docs/hooks/cli_reference.py``), so the
reference cannot drift from the commands: a new command or option appears the next time the
site is built, and ``tests/test_docs.py`` checks every one of them is listed.
"""

from __future__ import annotations

import re

import typer


def _root():
    """The click command tree behind the typer app (typer vendors its own click)."""
    from . import app

    return typer.main.get_command(app)


def _type_name(param) -> str:
    """``int``, ``float``, ``path``, ``text`` ... from the annotation typer read."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    name = getattr(annotation, "__name__", None) or str(annotation)
    name = re.sub(r"typing\.|Optional\[|\]|NoneType|\| *", "", name).strip(" ,")
    return {"str": "text", "Path": "path", "bool": "flag"}.get(name, name or "text")


def _help(param) -> str:
    return " ".join((getattr(param, "help", None) or "").split()).replace("|", "\\|")


def _option_row(param) -> str:
    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    flag = getattr(param, "is_flag", False)
    default = None if flag or callable(param.default) else param.default
    shown = "" if default is None or default is False or default in ("", ()) else f"`{default}`"  # 0 is shown
    return f"| {names} | {'flag' if flag else _type_name(param)} | {shown} | {_help(param)} |"


def _argument_line(param) -> str:
    need = "required" if param.required else "optional"
    return f"- `{param.name.upper()}` ({_type_name(param)}, {need}): {_help(param)}"


def command_markdown(name: str, cmd) -> str:
    """One command's section: its help, arguments and an option table."""
    lines = [f"## `inflora {name}`", "", " ".join((cmd.help or "").split()), ""]
    arguments = [p for p in cmd.params if p.param_type_name == "argument"]
    options = [p for p in cmd.params if p.param_type_name == "option" and not getattr(p, "hidden", False)]
    if arguments:
        lines += ["Arguments:", "", *map(_argument_line, arguments), ""]
    panels = _panels(options)
    for panel, group in panels.items():
        title = [f"**{panel or 'Options'}**", ""] if len(panels) > 1 else []
        lines += [
            *title,
            "| option | type | default | what it does |",
            "|---|---|---|---|",
            *map(_option_row, group),
            "",
        ]
    return "\n".join(lines)


def _panels(options: list) -> dict[str, list]:
    """The options grouped as ``--help`` shows them (``cli/options.py`` panels, first seen first);
    options without a panel come first, as "Options"."""
    groups: dict[str, list] = {"": []}
    for param in options:
        groups.setdefault(getattr(param, "rich_help_panel", None) or "", []).append(param)
    return {panel: group for panel, group in groups.items() if group}


def cli_reference_markdown() -> str:
    """Every command of ``inflora`` with its arguments and options, in command order."""
    commands = _root().commands
    body = [command_markdown(name, commands[name]) for name in sorted(commands)]
    intro = (
        "Generated from the command-line app when this site is built. Every command also "
        "answers `--help`; bad input ends with one line `error: …` and exit code 2."
    )
    return "\n".join([intro, "", *body])
