"""``inflora info``: supported architectures, tasks, rules and strategies."""
from __future__ import annotations

from . import command
from .output import console as make_console
from .output import table


def family_details(spec) -> str:
    """One table row's text: where a family keeps its blocks, attention and feed-forward layers."""
    return "\n".join([
        f"config.model_type: {', '.join(spec.model_types)}{' (causal)' if spec.causal else ''}",
        f"blocks: {spec.blocks}; attention: {spec.attention}",
        f"LoRA targets (q/k/v): {', '.join(spec.lora_targets)}",
        f"FFN: {' + '.join(spec.ffn_inputs)} -> {spec.ffn_down}" if spec.ffn_down
        else "FFN: mixture of experts (router, fused experts, shared experts found per block: models/moe.py)",
    ])


@command("info")
def info() -> None:
    """List supported model families, built-in tasks and selection rules."""
    from ..data import TASKS
    from ..models import ARCHITECTURES
    from ..select import RULES

    t = table("architecture table (inflora/models/architectures.py)", ["family", "layout"])
    t.columns[1].no_wrap, t.columns[1].justify = False, "left"
    for spec in ARCHITECTURES:
        t.add_row(spec.family, family_details(spec), end_section=True)
    console = make_console()
    console.print(t)
    console.print(f"tasks: {', '.join(TASKS.names())}")
    console.print(f"selection rules: {', '.join(RULES.names())}")
