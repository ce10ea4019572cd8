"""``inflora finetune``: train one strategy and write metrics.json + report; ``demo_compare`` for the demo."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import command


def parse_layers(text: str | None) -> list[int] | None:
    from ..errors import ConfigError

    if not text:
        return None
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--layers expects comma-separated integers like 0,1,4, got {text!r}") from None


def remedy_flags(remedies: list[str], extra: list[str]) -> dict[str, dict]:
    """Turn the leftover ``--sd-lambda 0.1``-style flags into per-remedy options."""
    from ..errors import ConfigError
    from ..remedies import REMEDIES

    owners = {opt: name for name in remedies for opt in REMEDIES.get(name).options}
    options: dict[str, dict] = {name: {} for name in remedies}
    i = 0
    while i < len(extra):
        flag = extra[i]
        key = flag.lstrip("-").replace("-", "_")
        if not flag.startswith("--") or key.split("=")[0] not in owners:
            known = ", ".join("--" + k.replace("_", "-") for k in owners) or "none (add --remedy NAME first)"
            raise ConfigError(f"unknown option {flag!r}; remedy options: {known}")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(extra):
            value = extra[i + 1]
            i += 2
        else:
            raise ConfigError(f"{flag} needs a value")
        options[owners[key]][key] = value
    return options


@command("finetune", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def finetune_cmd(
    ctx: typer.Context,
    model: str = typer.Option("minilm", help="model name or path"),
    task: str = typer.Option("rotten_tomatoes"),
    strategy: str = typer.Option("lora-inflection", help="full, head, shallow, lora-all, lora-inflection, lora-random"),
    epochs: int = typer.Option(1),
    seed: int = typer.Option(42),
    lr: Optional[float] = typer.Option(None, help="learning rate (default: per strategy)"),
    optimizer: str = typer.Option("adamw", help="adamw | sgd (plain SGD, no momentum: what --remedy dal assumes)"),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(64),
    diagnosis: Optional[str] = typer.Option(None, help="diagnosis.json giving the band"),
    layers: Optional[str] = typer.Option(None, help="explicit band, e.g. 0,1,4"),
    k: int = typer.Option(2, help="shallow: number of top blocks to unfreeze"),
    lora_r: int = typer.Option(8),
    lora_alpha: int = typer.Option(16),
    lora_dropout: float = typer.Option(0.1),
    lora_targets: Optional[str] = typer.Option(None, help="LoRA targets: qkv (default) | attention (+ output projection) "
                                               "| mlp | all | comma list of module names"),
    init: Optional[str] = typer.Option(None, help="start from a saved fine-tuned model folder"),
    limit_train: Optional[int] = typer.Option(None, help="stratified subset of the training split"),
    limit_eval: Optional[int] = typer.Option(None, help="stratified subset of validation/test"),
    log_every: int = typer.Option(10, help="log the gradient profile every N steps"),
    remedy: list[str] = typer.Option([], help="training remedy (repeatable): spectral-decoupling, redo, nm-sparsity, "
                                     "dal, grokfast, spam; its options follow as flags, e.g. --sd-lambda 0.1 (see docs)"),
    save_model: bool = typer.Option(False, help="save the final model (usable with --init)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps (auto: cuda, else mps, else cpu)"),
    precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler, GPU only)"),
    grad_accum: int = typer.Option(1, help="micro-batches of --batch-size per optimizer step (per process)"),
    data_dir: Optional[str] = typer.Option(None),
    out: Path = typer.Option(Path("runs/finetune")),
) -> None:
    """Fine-tune with one strategy; resumable (re-run the same command after an interruption).

    Remedy options are passed as extra flags after --remedy NAME, e.g. --remedy spectral-decoupling --sd-lambda 0.1.
    Several processes: torchrun --nproc-per-node N -m inflora finetune ... (or accelerate launch); the global
    batch is --batch-size x processes x --grad-accum."""
    from ..devices import resolve_device
    from ..reports import write_finetune_report
    from ..strategies import STRATEGIES
    from ..training import FinetuneConfig, finetune
    from ..training.finetune import check_config

    STRATEGIES.get(strategy)
    resolve_device(device, precision)
    options = remedy_flags(list(remedy), list(ctx.args))
    for name, opts in options.items():  # fail on a bad value now, not after loading the model
        from ..remedies import REMEDIES

        REMEDIES.get(name).from_options(**opts)
    cfg = FinetuneConfig(model=model, task=task, strategy=strategy, epochs=epochs, seed=seed, lr=lr, optimizer=optimizer,
                         batch_size=batch_size,
                         max_length=max_length, diagnosis=diagnosis, layers=parse_layers(layers), k=k, lora_r=lora_r,
                         lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                         lora_targets=[t.strip() for t in lora_targets.split(",") if t.strip()] if lora_targets else None,
                         init=init, limit_train=limit_train,
                         limit_eval=limit_eval, log_every=log_every, remedies=list(remedy), remedy_options=options,
                         save_model=save_model, data_dir=data_dir, device=device, precision=precision,
                         grad_accum=grad_accum)
    check_config(cfg)
    m = finetune(cfg, out)
    if not is_main_process():
        return
    write_finetune_report(m, out)
    print_comparison([m], Console())
    if m.get("completion_before") and "validation" in m.get("completion", {}):
        b, a = m["completion_before"], m["completion"]["validation"]
        Console().print(f"validation completion loss {b['completion_loss']:.4f} -> {a['completion_loss']:.4f} "
                        f"(perplexity {b['perplexity']:.4g} -> {a['perplexity']:.4g})")
    Console().print(f"wrote {out / 'metrics.json'} and {out / 'report.html'} "
                    f"({m['device']}, {m['precision']}, {m['world_size']} process(es))")


def is_main_process() -> bool:
    """Under torchrun / accelerate launch only rank 0 writes reports and prints."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def print_comparison(runs: list[dict], console: Console) -> None:
    t = Table(title="fine-tuning results")
    splits = sorted({s for m in runs for s in m["accuracy"]})
    for col in ["strategy", "layers", "trainable", *splits, "steps/s"]:
        t.add_column(col, justify="right")
    for m in runs:
        t.add_row(m["strategy"], ",".join(map(str, m["layers"])), f"{m['trainable_params']:,}",
                  *[f"{m['accuracy'].get(s, float('nan')):.4f}" for s in splits], f"{m['steps_per_second']:.2f}")
    console.print(t)


def demo_compare(d, out: Path, console: Console, device: str = "auto", precision: str = "fp32") -> None:
    """Brief lora-inflection vs lora-all runs on Rotten Tomatoes, using the demo's diagnosis."""
    from ..reports import write_finetune_report
    from ..training import FinetuneConfig, finetune

    runs = []
    for strategy in ("lora-inflection", "lora-all"):
        cfg = FinetuneConfig(strategy=strategy, epochs=1, limit_train=2000, limit_eval=500, layers=d.inflection_layers,
                             cka_examples=256, device=device, precision=precision)
        console.print(f"fine-tuning {strategy} (2000 training examples, 1 epoch) …")
        m = finetune(cfg, out / strategy)
        write_finetune_report(m, out / strategy)
        runs.append(m)
    print_comparison(runs, console)
    console.print(f"reports: {out / 'diagnose' / 'report.html'}, " + ", ".join(str(out / s / 'report.html') for s in ("lora-inflection", "lora-all")))
