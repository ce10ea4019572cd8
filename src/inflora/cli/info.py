"""``inflora info``: supported architectures, tasks, rules and strategies."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from . import command


@command("info")
def info() -> None:
    """List supported model families, built-in tasks and selection rules."""
    from ..data import TASKS
    from ..models import ARCHITECTURES
    from ..select import RULES

    table = Table("family", "config.model_type", "blocks", "attention", "LoRA targets", title="architecture table")
    for spec in ARCHITECTURES:
        table.add_row(spec.family, ", ".join(spec.model_types), spec.blocks, spec.attention, ", ".join(spec.lora_targets))
    console = Console()
    console.print(table)
    console.print(f"tasks: {', '.join(TASKS.names())}")
    console.print(f"selection rules: {', '.join(RULES.names())}")
