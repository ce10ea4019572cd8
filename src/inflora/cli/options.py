"""Options that several commands take, declared once: one name, help text and ``--help`` panel
per option wherever it appears (its range is ``validate.BOUNDS[name]``, also one per name).

A command writes ``batch_size: BatchSize = 32``: the type alias carries the help and the panel,
the default stays in the signature (typer's ``Annotated`` style). A command whose option of the
same name means something else (``plan --device``: where ``--measure`` runs) declares its own;
``tests/test_cli_options.py`` holds the list of such exceptions and checks the rest agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

# ``--help`` panels, in the order a user decides: what to adapt, on what, how, how LoRA, where to.
MODEL = "Model and device"
DATA = "Data"
PROBE = "Probe"
SELECTION = "Band and rules"
TRAINING = "Training"
LORA = "LoRA"
OUTPUT = "Output"


def option(panel: str | None, help: str, *names: str) -> typer.models.OptionInfo:
    """A typer option for an ``Annotated`` alias: its names (default: from the parameter), help and
    ``--help`` panel (None: the general "Options" panel)."""
    return typer.Option(*names, help=help, rich_help_panel=panel)


# ---------------------------------------------------------------- model and device
Model = Annotated[str, option(MODEL, "model name or path ('minilm' = bundled all-MiniLM-L6-v2)")]
Device = Annotated[str, option(MODEL, "auto | cpu | cuda | cuda:N | mps (auto: cuda, else mps, else cpu)")]
Precision = Annotated[
    str, option(MODEL, "fp32 | bf16 | fp16 (autocast; fp16: GPU only, with a gradient scaler when training)")
]
Tower = Annotated[
    str,
    option(
        MODEL,
        "multimodal models: which block list to diagnose and train, language or vision "
        "(text-only data serves the language tower)",
    ),
]

# ---------------------------------------------------------------- data
Task = Annotated[
    str,
    option(
        DATA,
        "built-in task (rotten_tomatoes, sst2, trec; rt-instruct: a causal LM) or a "
        ".csv/.tsv/.jsonl/.parquet file: text/label, or prompt/completion or messages for a "
        "causal LM; split 80/10/10, or one file per split (data/{split}.csv)",
    ),
]
DataDir = Annotated[Optional[str], option(DATA, "data folder (default: $INFLORA_DATA_DIR, else the HF hub)")]
TextColumn = Annotated[str, option(DATA, "text column of a user data file")]
LabelColumn = Annotated[str, option(DATA, "label column of a user data file")]
PromptColumn = Annotated[str, option(DATA, "instruction file: prompt column (a causal LM is loaded)")]
CompletionColumn = Annotated[str, option(DATA, "instruction file: completion column (the loss covers it only)")]
MessagesColumn = Annotated[str, option(DATA, "instruction file: chat column (a list of role/content messages)")]
BatchSize = Annotated[int, option(DATA, "examples per batch")]
MaxLength = Annotated[int, option(DATA, "tokens per example (longer texts are cut)")]
LimitTrain = Annotated[Optional[int], option(DATA, "stratified subset of the training split")]
LimitEval = Annotated[Optional[int], option(DATA, "stratified subsets of validation/test")]

# ---------------------------------------------------------------- probe and rules
Batches = Annotated[int, option(PROBE, "number of probe batches (of --batch-size examples) of the diagnosis")]
Rules = Annotated[
    Optional[str],
    option(
        SELECTION,
        "rules to score side by side, comma-separated, e.g. "
        "ski,top-grad,spectrum-snr,kappa,cka-io (see `inflora info`)",
    ),
]
RuleBudget = Annotated[
    Optional[str],
    option(
        SELECTION,
        "what every rule gets: layers=K (K blocks each; default: the "
        "band's size), params=N (each rule's LoRA rank for N trainable "
        "parameters), or layers=K,params=N",
    ),
]

# ---------------------------------------------------------------- training
Seed = Annotated[int, option(None, "random seed (batches, initialisation, resampling)")]
Seeds = Annotated[str, option(TRAINING, "seeds, comma-separated: one run of each arm per seed")]
Epochs = Annotated[int, option(TRAINING, "passes over the training split")]
Lr = Annotated[Optional[float], option(TRAINING, "learning rate (default: per strategy; LoRA: 5e-4)")]
K = Annotated[int, option(TRAINING, "shallow: number of top blocks to unfreeze; lisa: number of active blocks")]
LisaInterval = Annotated[int, option(TRAINING, "lisa: resample the active blocks every N optimizer steps")]

# ---------------------------------------------------------------- LoRA
LoraR = Annotated[int, option(LORA, "LoRA rank (in compare with --budget params=N: chosen per rule instead)")]
LoraAlpha = Annotated[int, option(LORA, "LoRA alpha (the update is scaled by alpha / r)")]
LoraDropout = Annotated[float, option(LORA, "dropout on the LoRA branch's input")]
LoraTargets = Annotated[
    Optional[str],
    option(
        LORA,
        "LoRA targets: qkv (default) | attention (+ output projection) "
        "| mlp | all | experts (MoE: fused expert weights; needs "
        "--lora-dropout 0) | comma list of module names",
    ),
]

# ---------------------------------------------------------------- output
Out = Annotated[Path, option(OUTPUT, "output folder")]
