"""``inflora diagnose``: probe a model on target data, choose the band, write JSON + report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import command


def parse_params(items: list[str]) -> dict:
    """``--param alpha=0.3 --param top=3`` -> {'alpha': 0.3, 'top': 3}."""
    from ..errors import ConfigError

    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        for cast in (int, float):
            try:
                out[key] = cast(raw)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(raw.lower(), raw)
    return out


def print_summary(d, out: Path, console: Console | None = None) -> None:
    console = console or Console(width=None if Console().is_terminal else 120)
    t = Table(title=f"{d.model}: inflection band {d.inflection_layers}")
    for col in ("layer", "entropy", "H/log n", "‖∂L/∂h‖", "‖∇θL‖", "SKI", "stability", ""):
        t.add_column(col, justify="right")
    for r, s in zip(d.layers, d.stability):
        t.add_row(str(r["layer"]), f"{r['attention_entropy']:.3f}", f"{r['attention_entropy_norm']:.3f}",
                  f"{r['activation_grad_norm']:.3e}", f"{r['param_grad_norm']:.3e}", f"{r['ski']:.3f}", f"{s:.2f}",
                  "◀ band" if r["layer"] in d.inflection_layers else "")
    console.print(t)
    if "attention_entropy_se" in d.layers[0]:
        se = max(r["attention_entropy_se"] for r in d.layers)
        console.print(f"entropy is an estimate from {d.config['entropy_queries']} sampled queries per sequence "
                      f"(largest standard error {se:.3g} nats)")
    for flag in d.flags:
        console.print(f"[yellow]warning:[/] {flag}")
    console.print(f"wrote {out / 'diagnosis.json'}, {out / 'report.html'}, {out / 'report.md'}, {out / 'profile.png'}")


@command("diagnose")
def diagnose_cmd(
    model: str = typer.Option("minilm", help="model name or path ('minilm' = bundled all-MiniLM-L6-v2)"),
    task: str = typer.Option("rotten_tomatoes", help="built-in task (rotten_tomatoes, sst2) or a .csv/.tsv/.jsonl file"),
    split: str = typer.Option("validation", help="split of the task to probe on"),
    batches: int = typer.Option(8, help="number of probe batches"),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(64),
    rule: str = typer.Option("ski", help="selection rule: ski, ski-decay, topk, threshold"),
    param: list[str] = typer.Option([], help="rule parameter key=value (repeatable), e.g. alpha=0.3"),
    resamples: int = typer.Option(200, help="bootstrap resamples for the stability estimate"),
    seed: int = typer.Option(0),
    text_column: str = typer.Option("text", help="text column of a user data file"),
    label_column: str = typer.Option("label", help="label column of a user data file"),
    data_dir: Optional[str] = typer.Option(None, help="data folder (default: $INFLORA_DATA_DIR, else the HF hub)"),
    out: Path = typer.Option(Path("runs/diagnose"), help="output folder"),
    attention: Optional[str] = typer.Option(
        None, help="how attention entropy is measured: streaming (beside SDPA, memory linear in context length; "
        "default where the family allows it) or eager (attention maps; the fallback for MPNet)"),
    entropy_queries: Optional[int] = typer.Option(
        None, help="estimate attention entropy from N sampled query positions per sequence (streaming only; "
        "reports a standard error); default: every query, exact"),
) -> None:
    """Measure per-layer attention entropy and gradient flow, and choose the inflection band."""
    from ..data import load_file, load_task
    from ..diagnosis import diagnose
    from ..models import load_model
    from ..reports import write_diagnosis_report

    from ..errors import ConfigError
    from ..select import RULES

    from ..models.attention import check_attention_mode

    if batches < 1:
        raise ConfigError(f"--batches must be at least 1, got {batches}")
    if entropy_queries is not None and entropy_queries < 1:
        raise ConfigError(f"--entropy-queries must be at least 1, got {entropy_queries}")
    if attention is not None:
        check_attention_mode(attention)
    RULES.get(rule)
    console = Console(stderr=True)
    data = load_file(task, text_column, label_column) if Path(task).suffix in (".csv", ".tsv", ".jsonl") else load_task(task, split, data_dir)
    console.print(f"loading {model} …")
    net, tok = load_model(model, num_labels=max(data.num_labels, 2))
    d = diagnose(net, data, tok, batches=batches, batch_size=batch_size, max_length=max_length, rule=rule,
                 rule_params=parse_params(param), resamples=resamples, seed=seed, split=split,
                 attention=attention, entropy_queries=entropy_queries)
    d.model = model
    d.config["task"] = task
    out.mkdir(parents=True, exist_ok=True)
    d.to_json(out / "diagnosis.json")
    write_diagnosis_report(d, out)
    print_summary(d, out)
