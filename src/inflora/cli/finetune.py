"""``inflora finetune``: train one strategy and write metrics.json + report.

Every remedy's declared option table (``Remedy.options``) becomes real flags of this command, listed
in ``--help`` under one panel per remedy with their types and defaults."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..validate import LORA_DEFAULTS, parse_blocks
from . import command
from .options import (
    MODEL,
    OUTPUT,
    TRAINING,
    BatchSize,
    CompletionColumn,
    DataDir,
    Device,
    Epochs,
    K,
    LabelColumn,
    LimitEval,
    LimitTrain,
    LisaInterval,
    LoraAlpha,
    LoraDropout,
    LoraR,
    LoraTargets,
    Lr,
    MaxLength,
    MessagesColumn,
    Model,
    Out,
    Precision,
    PromptColumn,
    Seed,
    Task,
    TextColumn,
    Tower,
    option,
)
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
            params.append(
                inspect.Parameter(
                    key,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=Optional[str],
                    default=typer.Option(
                        None,
                        "--" + key.replace("_", "-"),
                        metavar=kind,
                        show_default=False,
                        help=f"{opt.help} (default: {default})",
                        rich_help_panel=f"Remedy {name} (with --remedy {name})",
                    ),
                )
            )
    return params


def with_remedy_options(fn):
    """Give ``fn`` a flag for every remedy option; it receives their values as ``remedy_values``."""
    extra = remedy_parameters()

    @functools.wraps(fn)
    def wrapper(**kwargs):
        return fn(remedy_values={p.name: kwargs.pop(p.name, None) for p in extra}, **kwargs)

    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "remedy_values"]
    wrapper.__signature__ = inspect.Signature(own + extra)
    return wrapper


# Options only ``finetune`` takes (the shared ones are in ``options.py``).
Strategy = Annotated[str, option(TRAINING, "full, head, shallow, lora-all, lora-inflection, lora-random")]
Optimizer = Annotated[str, option(TRAINING, "adamw | sgd (plain SGD, no momentum: what --remedy dal assumes)")]
DiagnosisFile = Annotated[Optional[str], option(TRAINING, "diagnosis.json giving the band")]
Layers = Annotated[Optional[str], option(TRAINING, "explicit band, e.g. 0,1,4")]
Init = Annotated[Optional[str], option(MODEL, "start from a saved fine-tuned model folder")]
LogEvery = Annotated[int, option(OUTPUT, "log the gradient profile every N steps")]
Remedy = Annotated[
    list[str],
    option(
        TRAINING,
        "training remedy (repeatable): spectral-decoupling, redo, "
        "nm-sparsity, dal, grokfast, spam; its options are listed below",
    ),
]
SaveModel = Annotated[bool, option(OUTPUT, "save the final model (usable with --init)")]
GradAccum = Annotated[int, option(TRAINING, "micro-batches of --batch-size per optimizer step (per process)")]


@command("finetune")
@with_remedy_options
def finetune_cmd(
    model: Model = "minilm",
    task: Task = "rotten_tomatoes",
    text_column: TextColumn = "text",
    label_column: LabelColumn = "label",
    prompt_column: PromptColumn = "prompt",
    completion_column: CompletionColumn = "completion",
    messages_column: MessagesColumn = "messages",
    strategy: Strategy = "lora-inflection",
    epochs: Epochs = 1,
    seed: Seed = 42,
    lr: Lr = None,
    optimizer: Optimizer = "adamw",
    batch_size: BatchSize = 32,
    max_length: MaxLength = 64,
    diagnosis: DiagnosisFile = None,
    layers: Layers = None,
    k: K = 2,
    lisa_interval: LisaInterval = 20,
    lora_r: LoraR = LORA_DEFAULTS.r,
    lora_alpha: LoraAlpha = LORA_DEFAULTS.alpha,
    lora_dropout: LoraDropout = LORA_DEFAULTS.dropout,
    lora_targets: LoraTargets = None,
    init: Init = None,
    limit_train: LimitTrain = None,
    limit_eval: LimitEval = None,
    log_every: LogEvery = 10,
    remedy: Remedy = [],  # noqa: B006 (typer copies the default)
    save_model: SaveModel = False,
    device: Device = "auto",
    precision: Precision = "fp32",
    grad_accum: GradAccum = 1,
    tower: Tower = "language",
    data_dir: DataDir = None,
    out: Out = Path("runs/finetune"),
    remedy_values: dict | None = None,
) -> None:
    """Fine-tune with one strategy; resumable (re-run the same command after an interruption).

    Several processes: torchrun --nproc-per-node N -m inflora finetune ... (or accelerate launch); the global
    batch is --batch-size x processes x --grad-accum."""
    given = dict(locals())  # the options by name: FinetuneConfig's field names
    from ..devices import is_main_process
    from ..io import output_dir
    from ..training import finetune
    from ..training.finetune import check_config

    remedies = _remedy_options(strategy, device, precision, remedy, remedy_values)
    output_dir(out)
    cfg = _config(given, remedies)
    check_config(cfg)
    m = finetune(cfg, out)
    if is_main_process():
        _report(m, out)


def _remedy_options(strategy: str, device: str, precision: str, remedy: list[str], values: dict | None) -> dict:
    """The strategy and device checked, and the remedies' options read from their flags' text,
    before the output folder is made."""
    from ..devices import resolve_device
    from ..remedies import options_by_remedy
    from ..strategies import STRATEGIES

    STRATEGIES.get(strategy)
    resolve_device(device, precision)
    return options_by_remedy(list(remedy), values or {})


def _config(given: dict, remedies: dict):
    """The ``FinetuneConfig`` of the command: an option is the config field of its name; the
    options given as text (the band, the LoRA targets) are parsed, the remedies come typed."""
    from dataclasses import fields

    from ..training import FinetuneConfig

    same = {f.name: given[f.name] for f in fields(FinetuneConfig) if f.name in given}
    targets = given["lora_targets"]
    return FinetuneConfig(
        **{
            **same,
            "layers": parse_blocks(given["layers"]),
            "remedies": list(remedies),
            "remedy_options": remedies,
            "lora_targets": [t.strip() for t in targets.split(",") if t.strip()] if targets else None,
        }
    )


def _report(m: dict, out: Path) -> None:
    """report.html, then the run's accuracy table, the completion loss before and after (causal LM)
    and the files written."""
    from ..reports import write_finetune_report

    write_finetune_report(m, out)
    console = make_console()
    print_comparison([m], console)
    if m.get("completion_before") and "validation" in m.get("completion", {}):
        b, a = m["completion_before"], m["completion"]["validation"]
        console.print(
            f"validation completion loss {b['completion_loss']:.4f} -> {a['completion_loss']:.4f} "
            f"(perplexity {b['perplexity']:.4g} -> {a['perplexity']:.4g})"
        )
    console.print(
        f"wrote {out / 'metrics.json'} and {out / 'report.html'} "
        f"({m['device']}, {m['precision']}, {m['world_size']} process(es))",
        soft_wrap=True,
    )


SPLIT_HEADERS = {"validation": "val %", "test": "test %", "test_decontaminated": "clean %"}


def print_comparison(runs: list[dict], console: Console) -> None:
    splits = sorted({s for m in runs for s in m["accuracy"]}, key=lambda s: (s not in SPLIT_HEADERS, s))
    t = table(
        "fine-tuning results (accuracy %)",
        ["strategy", "layers", "trainable", *[SPLIT_HEADERS.get(s, f"{s} %") for s in splits], "steps/s"],
    )
    if "test_decontaminated" in splits:
        t.caption = "clean: the test split without texts found in the source task's training data"
    for m in runs:
        t.add_row(
            m["strategy"],
            layer_ranges(m["layers"]),
            f"{m['trainable_params']:,}",
            *[f"{100 * m['accuracy'].get(s, float('nan')):.2f}" for s in splits],
            f"{m['steps_per_second']:.2f}",
        )
    console.print(t)
