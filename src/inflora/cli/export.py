"""``inflora export``: a diagnosis' band as a PEFT, Axolotl, TRL or JSON LoRA config."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..validate import LORA_DEFAULTS
from . import command
from .options import LoraAlpha, LoraDropout, LoraR, LoraTargets


@command("export")
def export_cmd(
    diagnosis: Path = typer.Argument(..., help="diagnosis.json written by inflora diagnose"),
    format: str = typer.Option(
        "peft", "--format", help="peft (LoraConfig folder) | axolotl (YAML) | trl (Python) | json"
    ),
    model: Optional[str] = typer.Option(
        None,
        help="dry-run the config against this model's modules (built on the "
        "meta device from its config; a tiny-<family> name, a folder or a hub name)",
    ),
    out: Optional[Path] = typer.Option(
        None, help="output path (default: next to the diagnosis, named after the format)"
    ),
    lora_targets: LoraTargets = None,
    lora_r: LoraR = LORA_DEFAULTS.r,
    lora_alpha: LoraAlpha = LORA_DEFAULTS.alpha,
    lora_dropout: LoraDropout = LORA_DEFAULTS.dropout,
) -> None:
    """Write the inflection band's LoRA config for PEFT, TRL or Axolotl; with --model, check that every
    target and band layer matches modules of that model first."""
    from ..diagnosis import Diagnosis
    from ..export import FORMATS, export_config

    d = Diagnosis.from_json(diagnosis)
    target = out if out is not None else diagnosis.parent / FORMATS.get(format, "export")
    done = export_config(
        d, format, target, model=model, targets=lora_targets, r=lora_r, alpha=lora_alpha, dropout=lora_dropout
    )
    console = Console()
    cfg = done.config
    console.print(
        f"LoRA r={cfg.r} alpha={cfg.lora_alpha} on layers {cfg.layers_to_transform} of {d.model}, "
        f"targets {sorted(cfg.target_modules)}"
    )
    if done.matched is None:
        console.print("not checked against a model (pass --model to dry-run the config)")
    else:
        per = ", ".join(f"{t}: {n}" for t, n in done.matched.items())
        console.print(f"dry run on {model}: {sum(done.matched.values())} modules matched ({per})")
    console.print(f"wrote {done.path}")
