"""``inflora finetune``: train one strategy and write metrics.json + report.

Every remedy's declared option table (``Remedy.options``) becomes real flags of this command, listed
in ``--help`` under one panel per remedy with their types and defaults."""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..validate import LORA_DEFAULTS, parse_blocks
from . import command
from .output import console as make_console
from .output import layer_ranges, table


def remedy_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per declared remedy option; typer turns each into a ``--flag``. Values
    arrive as text and are read by ``Remedy.from_options`` (one-line errors for bad values)."""
    from ..remedies import REMEDIES

    params = []
    for name in REMEDIES.names():
        for key, opt in REMEDIES.get(name).options.items():
            kind = f"<{getattr(opt.type, '__name__', 'str')}>"
            default = "none" if opt.default is None else opt.default
            params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
                None, "--" + key.replace("_", "-"), metavar=kind, show_default=False,
                help=f"{opt.help} (default: {default})", rich_help_panel=f"Remedy {name} (with --remedy {name})")))
    return params


def with_remedy_options(fn):
    """Give ``fn`` a flag for every remedy option; it receives their values as ``remedy_values``."""
    extra = remedy_parameters()

    @functools.wraps(fn)
    def wrapper(**kwargs):
        return fn(remedy_values={p.name: kwargs.pop(p.name, None) for p in extra}, **kwargs)

    own = [p for p in inspect.signature(fn).parameters.values() if p.name != "remedy_values"]
    wrapper.__signature__ = inspect.Signature(own + extra)
    return wrapper


@command("finetune")
@with_remedy_options
def finetune_cmd(
    model: str = typer.Option("minilm", help="model name or path"),
    task: str = typer.Option("rotten_tomatoes", help="built-in task (rt-instruct: for a causal LM) or a "
                             ".csv/.tsv/.jsonl/.parquet file (split 80/10/10, or one file per split: data/{split}.csv)"),
    text_column: str = typer.Option("text", help="text column of a user data file"),
    label_column: str = typer.Option("label", help="label column of a user data file"),
    prompt_column: str = typer.Option("prompt", help="instruction file: prompt column (a causal LM is trained)"),
    completion_column: str = typer.Option("completion", help="instruction file: completion column (the loss covers it only)"),
    messages_column: str = typer.Option("messages", help="instruction file: chat column (a list of role/content messages)"),
    strategy: str = typer.Option("lora-inflection", help="full, head, shallow, lora-all, lora-inflection, lora-random"),
    epochs: int = typer.Option(1),
    seed: int = typer.Option(42),
    lr: Optional[float] = typer.Option(None, help="learning rate (default: per strategy)"),
    optimizer: str = typer.Option("adamw", help="adamw | sgd (plain SGD, no momentum: what --remedy dal assumes)"),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(64),
    diagnosis: Optional[str] = typer.Option(None, help="diagnosis.json giving the band"),
    layers: Optional[str] = typer.Option(None, help="explicit band, e.g. 0,1,4"),
    k: int = typer.Option(2, help="shallow: number of top blocks to unfreeze; lisa: number of active blocks"),
    lisa_interval: int = typer.Option(20, help="lisa: resample the active blocks every N optimizer steps"),
    lora_r: int = typer.Option(LORA_DEFAULTS.r),
    lora_alpha: int = typer.Option(LORA_DEFAULTS.alpha),
    lora_dropout: float = typer.Option(LORA_DEFAULTS.dropout),
    lora_targets: Optional[str] = typer.Option(None, help="LoRA targets: qkv (default) | attention (+ output projection) "
                                               "| mlp | all | experts (MoE: fused expert weights; needs --lora-dropout 0) "
                                               "| comma list of module names"),
    init: Optional[str] = typer.Option(None, help="start from a saved fine-tuned model folder"),
    limit_train: Optional[int] = typer.Option(None, help="stratified subset of the training split"),
    limit_eval: Optional[int] = typer.Option(None, help="stratified subset of validation/test"),
    log_every: int = typer.Option(10, help="log the gradient profile every N steps"),
    remedy: list[str] = typer.Option([], help="training remedy (repeatable): spectral-decoupling, redo, nm-sparsity, "
                                     "dal, grokfast, spam; its options are listed below"),
    save_model: bool = typer.Option(False, help="save the final model (usable with --init)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps (auto: cuda, else mps, else cpu)"),
    precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler, GPU only)"),
    grad_accum: int = typer.Option(1, help="micro-batches of --batch-size per optimizer step (per process)"),
    data_dir: Optional[str] = typer.Option(None),
    tower: str = typer.Option("language", help="multimodal models: the block list to train, language or vision "
                              "(text-only data serves the language tower)"),
    out: Path = typer.Option(Path("runs/finetune")),
    remedy_values: dict | None = None,
) -> None:
    """Fine-tune with one strategy; resumable (re-run the same command after an interruption).

    Several processes: torchrun --nproc-per-node N -m inflora finetune ... (or accelerate launch); the global
    batch is --batch-size x processes x --grad-accum."""
    from ..devices import is_main_process, resolve_device
    from ..io import output_dir
    from ..remedies import options_by_remedy
    from ..reports import write_finetune_report
    from ..strategies import STRATEGIES
    from ..training import FinetuneConfig, finetune
    from ..training.finetune import check_config

    STRATEGIES.get(strategy)
    resolve_device(device, precision)
    options = options_by_remedy(list(remedy), remedy_values or {})
    output_dir(out)
    cfg = FinetuneConfig(model=model, task=task, text_column=text_column, label_column=label_column,
                         prompt_column=prompt_column, completion_column=completion_column,
                         messages_column=messages_column, strategy=strategy,
                         epochs=epochs, seed=seed, lr=lr, optimizer=optimizer, batch_size=batch_size,
                         max_length=max_length, diagnosis=diagnosis, layers=parse_blocks(layers), k=k, lora_r=lora_r,
                         lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                         lora_targets=[t.strip() for t in lora_targets.split(",") if t.strip()] if lora_targets else None,
                         init=init, limit_train=limit_train,
                         limit_eval=limit_eval, log_every=log_every, remedies=list(options), remedy_options=options,
                         save_model=save_model, data_dir=data_dir, device=device, precision=precision,
                         grad_accum=grad_accum, lisa_interval=lisa_interval, tower=tower)
    check_config(cfg)
    m = finetune(cfg, out)
    if not is_main_process():
        return
    write_finetune_report(m, out)
    console = make_console()
    print_comparison([m], console)
    if m.get("completion_before") and "validation" in m.get("completion", {}):
        b, a = m["completion_before"], m["completion"]["validation"]
        console.print(f"validation completion loss {b['completion_loss']:.4f} -> {a['completion_loss']:.4f} "
                      f"(perplexity {b['perplexity']:.4g} -> {a['perplexity']:.4g})")
    console.print(f"wrote {out / 'metrics.json'} and {out / 'report.html'} "
                  f"({m['device']}, {m['precision']}, {m['world_size']} process(es))", soft_wrap=True)


SPLIT_HEADERS = {"validation": "val %", "test": "test %", "test_decontaminated": "clean %"}


def print_comparison(runs: list[dict], console: Console) -> None:
    splits = sorted({s for m in runs for s in m["accuracy"]}, key=lambda s: (s not in SPLIT_HEADERS, s))
    t = table("fine-tuning results (accuracy %)",
              ["strategy", "layers", "trainable", *[SPLIT_HEADERS.get(s, f"{s} %") for s in splits], "steps/s"])
    if "test_decontaminated" in splits:
        t.caption = "clean: the test split without texts found in the source task's training data"
    for m in runs:
        t.add_row(m["strategy"], layer_ranges(m["layers"]), f"{m['trainable_params']:,}",
                  *[f"{100 * m['accuracy'].get(s, float('nan')):.2f}" for s in splits], f"{m['steps_per_second']:.2f}")
    console.print(t)
