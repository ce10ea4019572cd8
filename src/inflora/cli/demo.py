"""``inflora demo``: the main job on the bundled model and data, sized for a laptop CPU."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from . import command


@command("demo")
def demo(out: Path = typer.Option(Path("runs/demo"), help="output folder"),
         device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps"),
         precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (fp16: GPU only)")) -> None:
    """Diagnose MiniLM on Rotten Tomatoes (and, where available, fine-tune and compare)."""
    from ..data import load_task
    from ..diagnosis import diagnose
    from ..models import load_model
    from ..reports import write_diagnosis_report
    from .diagnose import print_summary

    from ..devices import resolve_device

    choice = resolve_device(device, precision)
    console = Console()
    val = load_task("rotten_tomatoes", "validation")
    console.print(f"data: rotten_tomatoes validation, {len(val)} examples {val.label_counts()} from {val.source}")
    model, tok = load_model("minilm")
    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"model: all-MiniLM-L6-v2 ({model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, {n_params / 1e6:.1f}M parameters)")
    d = diagnose(model, val, tok, batches=8, batch_size=32, max_length=64, device=choice.device, precision=precision)
    d.model = "minilm"
    diag_dir = out / "diagnose"
    diag_dir.mkdir(parents=True, exist_ok=True)
    d.to_json(diag_dir / "diagnosis.json")
    write_diagnosis_report(d, diag_dir)
    print_summary(d, diag_dir, console)
    try:
        from .finetune import demo_compare
    except ImportError:
        return
    demo_compare(d, out, console, choice.device, precision)
