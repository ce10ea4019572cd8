"""``inflora compare``: one diagnosis, one LoRA arm per rule × seed at a matched budget, a recommendation."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

from ..validate import LORA_DEFAULTS
from . import command
from .options import (
    PROBE,
    SELECTION,
    Batches,
    BatchSize,
    CompletionColumn,
    DataDir,
    Device,
    Epochs,
    LimitEval,
    LimitTrain,
    LoraAlpha,
    LoraR,
    LoraTargets,
    Lr,
    MaxLength,
    MessagesColumn,
    Model,
    Out,
    Precision,
    PromptColumn,
    RuleBudget,
    Rules,
    Seeds,
    Task,
    Tower,
    option,
)
from .experiment import _split
from .output import console as make_console
from .output import layer_ranges, table


# Options only ``compare`` takes (the shared ones are in ``options.py``).
DiagnoseBatchSize = Annotated[int, option(PROBE, "batch size of the one diagnosis")]
Oracle = Annotated[bool, option(SELECTION, "also the per-block oracle: LoRA on each block alone and on all but it")]
OracleBlocks = Annotated[
    Optional[str], option(SELECTION, "the oracle's blocks, e.g. 0,4,8 (default all; needed above 48)")
]


@command("compare")
def compare_cmd(
    model: Model = "minilm",
    task: Task = "rotten_tomatoes",
    rules: Rules = "ski,top-grad,spectrum-snr,kappa,cka-io,random,all",
    seeds: Seeds = "42,43,44",
    budget: RuleBudget = None,
    epochs: Epochs = 1,
    limit_train: LimitTrain = None,
    limit_eval: LimitEval = None,
    batch_size: BatchSize = 32,
    max_length: MaxLength = 64,
    lr: Lr = None,
    lora_r: LoraR = LORA_DEFAULTS.r,
    lora_alpha: LoraAlpha = LORA_DEFAULTS.alpha,
    lora_targets: LoraTargets = None,
    device: Device = "auto",
    precision: Precision = "fp32",
    batches: Batches = 8,
    diagnose_batch_size: DiagnoseBatchSize = 32,
    data_dir: DataDir = None,
    prompt_column: PromptColumn = "prompt",
    completion_column: CompletionColumn = "completion",
    messages_column: MessagesColumn = "messages",
    oracle: Oracle = False,
    blocks: OracleBlocks = None,
    tower: Tower = "language",
    out: Out = Path("runs/compare"),
) -> None:
    """Which blocks to adapt, measured: every rule's choice trained at the same budget, with intervals."""
    from ..devices import resolve_device
    from ..experiment.compare import ComparePlan
    from ..io import output_dir
    from ..validate import parse_blocks

    resolve_device(device, precision)
    spend = _budget(budget, lora_targets)
    given = {"prompt_column": prompt_column, "completion_column": completion_column, "messages_column": messages_column}
    columns = {k: v for k, v in given.items() if v != k.removesuffix("_column")} or None
    plan = ComparePlan(
        model=model,
        task=task,
        rules=_split(rules),
        seeds=_split(seeds, int),
        budget=spend,
        epochs=epochs,
        limit_train=limit_train,
        limit_eval=limit_eval,
        batch_size=batch_size,
        max_length=max_length,
        lr=lr,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_targets=lora_targets,
        device=device,
        precision=precision,
        diagnose_batches=batches,
        diagnose_batch_size=diagnose_batch_size,
        data_dir=data_dir,
        columns=columns,
        oracle=oracle,
        blocks=parse_blocks(blocks, "--blocks"),
        tower=tower,
    ).validate()
    output_dir(out)
    _run(plan, out)


def _budget(budget: str | None, lora_targets: str | None):
    """``--budget`` with the LoRA targets it is counted on (a parameter budget depends on them)."""
    from ..experiment.compare import split_targets
    from ..strategies.budget import Budget

    spend = Budget.parse(budget)
    return Budget(spend.layers, spend.params, tuple(split_targets(lora_targets) or ()) or None)


def _run(plan, out: Path) -> None:
    """Run (or resume) the plan's units, then write the report and print the table; the oracle's
    report is written as soon as its arms are done."""
    from ..experiment.cache import UnitCache, unit_counts
    from ..experiment.compare import count_units, run_compare
    from ..experiment.compare_report import render_compare
    from ..experiment.compare_results import aggregate_compare

    command_line = "inflora " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def report_oracle(diagnosis: dict, arms: dict) -> None:  # written as soon as the oracle's arms are done
        _oracle(arms, diagnosis, {"command": command_line, "plan": plan.to_dict()}, out)

    raw, log = UnitCache(out).logged(command_line, lambda: run_compare(plan, out, on_oracle=report_oracle))
    total, wall = count_units(plan), log["wall_seconds"]
    res = aggregate_compare(raw["arms"], plan.rules, same_examples=plan.limit_eval is None)
    meta = {
        "command": command_line,
        "plan": plan.to_dict(),
        "wall_seconds": wall,
        "invocations": log["invocations"],
        **unit_counts(log, total),
    }
    render_compare(res, raw["diagnosis"], meta, out)
    _print(res)
    make_console().print(
        f"wall time {wall / 60:.1f} min; wrote {out / 'compare.md'}, {out / 'compare.html'}, {out / 'compare.json'}"
    )


def _oracle(arms: dict, diagnosis: dict, meta: dict, out: Path) -> None:
    """Write the oracle's report and print its verdict (80 columns)."""
    from ..experiment.oracle_report import SCALE, oracle_verdict, render_oracle
    from ..experiment.oracle_results import aggregate_oracle

    res = aggregate_oracle(arms, diagnosis["rules"])
    render_oracle(res, meta, out)
    scale, digits = SCALE.get(res["metric"], (100, 2))
    t = table(
        f"per-block oracle ({'nats' if scale == 1 else 'points'})",
        ["block", "gain over head", "± sd", "LOO loss", "± sd"],
    )
    for r in res["table"]:
        t.add_row(
            str(r["block"]),
            *(
                f"{scale * r[k][m]:{'+' if m == 'mean' else ''}.{digits}f}" if r[k]["n"] > (m == "sd") else "n/a"
                for k in ("gain", "loo_loss")
                for m in ("mean", "sd")
            ),
        )
    console = make_console()
    console.print(t)
    console.print("oracle: " + oracle_verdict(res) + f" Wrote {out / 'oracle.md'}.")


def _print(res: dict) -> None:
    """The arms best first, in 80 columns; blocks as ranges (``per seed`` when a rule's choice varies)."""
    metric = res["metric"]
    from ..experiment.scores import shown, unit

    t = table("matched-budget comparison", ["rule", "blocks", "r", "trainable", f"{metric} {unit(metric)}", "± sd"])
    digits = 2 if unit(metric) == "%" else 4
    for r in sorted(res["table"], key=lambda r: -r[metric]["mean"]):
        blocks = sorted({tuple(v) for v in r["layers"].values()})
        t.add_row(
            r["rule"],
            layer_ranges(list(blocks[0])) if len(blocks) == 1 else "per seed",
            str(r["r"]),
            f"{r['trainable_params']:,}",
            f"{shown(metric, r[metric]['mean']):.{digits}f}",
            f"{abs(shown(metric, r[metric]['sd'])):.{digits}f}" if r[metric]["n"] > 1 else "n/a",
        )
    console = make_console()
    console.print(t)
    console.print("recommendation: " + res["recommendation"]["text"].replace("**", ""))
