"""``inflora demo``: the main job on the bundled model and data, sized for a laptop CPU."""

from __future__ import annotations

from pathlib import Path

from . import command
from .options import Device, Out, Precision
from .output import console as make_console


@command("demo")
def demo(out: Out = Path("runs/demo"), device: Device = "auto", precision: Precision = "fp32") -> None:
    """Diagnose MiniLM on Rotten Tomatoes, fine-tune lora-inflection and lora-all briefly, and compare."""
    from ..devices import resolve_device
    from ..experiment.demo import reading, run_demo
    from ..io import output_dir
    from .diagnose import print_summary
    from .finetune import print_comparison

    choice = resolve_device(device, precision)
    console = make_console()
    output_dir(out)
    result = run_demo(
        out,
        device=choice.device,
        precision=precision,
        say=console.print,
        on_diagnosis=lambda d, folder: print_summary(d, folder, console),
    )
    print_comparison(result.runs, console)
    console.print(reading(result))
    console.print("reports: " + ", ".join(str(p) for p in result.reports))
