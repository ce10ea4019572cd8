"""``inflora info``: supported architectures, tasks, rules and strategies; ``--model`` prints the
structure discovered in one model (built on the meta device: no weights are loaded)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape

from . import command
from .output import console as make_console
from .output import table


def family_details(spec) -> str:
    """One table row's text: where a family keeps its blocks, attention and feed-forward layers."""
    ffn = f"{' + '.join(spec.ffn_inputs)} -> {spec.ffn_down}" if spec.ffn_down else "none (MoE experts only)"
    lines = [
        f"config.model_type: {', '.join(spec.model_types)}{' (causal)' if spec.causal else ''}",
        f"blocks: {spec.blocks}; attention: {spec.attention}",
        f"LoRA targets (q/k/v): {', '.join(spec.lora_targets)}{' (fused)' if spec.fused_qkv else ''}",
        *(
            [f"fused q/k/v {spec.qkv_layout.describe()}"]
            if spec.qkv_layout
            else ["fused q/k/v: layout not derived (head counts do not fit the fused width)"]
            if spec.fused_qkv
            else []
        ),
        f"attention output: {spec.output}",
        f"FFN: {ffn}{' (fused gate/up)' if spec.fused_gate_up else ''}",
        f"embeddings: {', '.join(spec.embeddings) or '-'}",
        f"entropy: {spec.entropy_path}" + (f" ({spec.entropy_note})" if spec.entropy_note else ""),
    ]
    if spec.moe:
        m = spec.moe
        lines.append(
            f"MoE: {m.num_experts} experts at {m.experts} ({', '.join(m.expert_parameters) or 'modules'}), "
            f"router {m.router}, shared {m.shared_experts or '-'}, blocks {list(m.blocks)}"
        )
    if len(spec.towers) > 1:
        lines.append(f"towers: {', '.join(spec.towers)} (this: {spec.tower})")
    return "\n".join(lines)


def _model_structure(model: str, tower: str) -> None:
    from ..models import meta_model, set_tower
    from ..models.tiny import auto_class
    from ..models import model_config

    config = model_config(model)
    task = "causal-lm"
    try:
        auto_class(config, task)
    except Exception:
        task = "classification"
    spec = set_tower(meta_model(model, task), tower)
    source = "discovered from the model" if spec.discovered else "row of the override table (verified)"
    t = table(f"{model}: {spec.family} ({source})", ["family", "layout"])
    t.columns[1].no_wrap, t.columns[1].justify = False, "left"
    t.add_row(spec.family, escape(family_details(spec)))  # the layouts' [q|k|v] are text, not markup
    make_console().print(t)


@command("info")
def info(
    model: Optional[str] = typer.Option(
        None,
        help="print the structure discovered in this model (name, folder "
        "or tiny-<family>; built on the meta device, no weights)",
    ),
    tower: str = typer.Option("language", help="with --model: language or vision (multimodal models)"),
) -> None:
    """List supported model families, built-in tasks and selection rules (or one model's structure)."""
    from ..data import TASKS
    from ..models import ARCHITECTURES
    from ..models.discovery import check_tower
    from ..select import RULES

    check_tower(tower)
    if model:
        _model_structure(model, tower)
        return
    t = table("override table (inflora/models/architectures.py); other families are discovered", ["family", "layout"])
    t.columns[1].no_wrap, t.columns[1].justify = False, "left"
    for spec in ARCHITECTURES:
        t.add_row(spec.family, family_details(spec), end_section=True)
    console = make_console()
    console.print(t)
    console.print(f"tasks: {', '.join(TASKS.names())}")
    console.print(f"selection rules: {', '.join(RULES.names())}")
