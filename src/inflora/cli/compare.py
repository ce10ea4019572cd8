"""``inflora compare``: one diagnosis, one LoRA arm per rule × seed at a matched budget, a recommendation."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ..validate import LORA_DEFAULTS
from . import command
from .experiment import _split
from .output import console as make_console
from .output import layer_ranges, table


@command("compare")
def compare_cmd(
    model: str = typer.Option("minilm", help="model name or local path"),
    task: str = typer.Option("rotten_tomatoes", help="built-in task (rotten_tomatoes, sst2, rt-instruct: a causal LM) "
                             "or a .csv/.jsonl/.parquet file"),
    rules: str = typer.Option("ski,top-grad,spectrum-snr,kappa,cka-io,random,all", help="rules to compare (see `inflora info`)"),
    seeds: str = typer.Option("42,43,44"),
    budget: Optional[str] = typer.Option(None, help="layers=K (default: SKI's band size), params=N, or layers=K,params=N"),
    epochs: int = typer.Option(1),
    limit_train: Optional[int] = typer.Option(None, help="stratified training subset"),
    limit_eval: Optional[int] = typer.Option(None, help="stratified validation/test subsets"),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(64),
    lr: Optional[float] = typer.Option(None, help="learning rate (default: LoRA's 5e-4)"),
    lora_r: int = typer.Option(LORA_DEFAULTS.r, help="LoRA rank (with params=N: chosen per rule instead)"),
    lora_alpha: int = typer.Option(LORA_DEFAULTS.alpha),
    lora_targets: Optional[str] = typer.Option(None, help="LoRA targets: qkv (default) | attention | mlp | all | names"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps"),
    precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (fp16: GPU only)"),
    batches: int = typer.Option(8, help="probe batches of the one diagnosis"),
    diagnose_batch_size: int = typer.Option(32),
    data_dir: Optional[str] = typer.Option(None),
    prompt_column: str = typer.Option("prompt", help="instruction file: prompt column (a causal LM is loaded)"),
    completion_column: str = typer.Option("completion", help="instruction file: completion column"),
    messages_column: str = typer.Option("messages", help="instruction file: chat messages column"),
    oracle: bool = typer.Option(False, help="also the per-block oracle: LoRA on each block alone and on all but it"),
    blocks: Optional[str] = typer.Option(None, help="the oracle's blocks, e.g. 0,4,8 (default all; needed above 48)"),
    tower: str = typer.Option("language", help="multimodal models: the block list to diagnose and train, language "
                              "or vision (text-only data serves the language tower)"),
    out: Path = typer.Option(Path("runs/compare")),
) -> None:
    """Which blocks to adapt, measured: every rule's choice trained at the same budget, with intervals."""
    from ..experiment.cache import UnitCache
    from ..experiment.compare import ComparePlan, count_units, run_compare
    from ..experiment.compare_report import render_compare
    from ..experiment.compare_results import aggregate_compare
    from ..io import output_dir
    from ..strategies.budget import Budget

    from ..devices import resolve_device
    from ..experiment.compare import split_targets
    from ..validate import parse_blocks

    resolve_device(device, precision)
    spend = Budget.parse(budget)
    spend = Budget(spend.layers, spend.params, tuple(split_targets(lora_targets) or ()) or None)
    given = {"prompt_column": prompt_column, "completion_column": completion_column, "messages_column": messages_column}
    columns = {k: v for k, v in given.items() if v != k.removesuffix("_column")} or None
    plan = ComparePlan(model=model, task=task, rules=_split(rules), seeds=_split(seeds, int), budget=spend,
                       epochs=epochs, limit_train=limit_train, limit_eval=limit_eval, batch_size=batch_size,
                       max_length=max_length, lr=lr, lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets,
                       device=device, precision=precision, diagnose_batches=batches,
                       diagnose_batch_size=diagnose_batch_size, data_dir=data_dir, columns=columns, oracle=oracle,
                       blocks=parse_blocks(blocks, "--blocks"), tower=tower).validate()
    output_dir(out)
    command_line = "inflora " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def report_oracle(diagnosis: dict, arms: dict) -> None:  # written as soon as the oracle's arms are done
        _oracle(arms, diagnosis, {"command": command_line, "plan": plan.to_dict()}, out)

    raw, log = UnitCache(out).logged(command_line, lambda: run_compare(plan, out, on_oracle=report_oracle))
    total, wall = count_units(plan), log["wall_seconds"]
    res = aggregate_compare(raw["arms"], plan.rules, same_examples=plan.limit_eval is None)
    meta = {"command": command_line, "plan": plan.to_dict(), "wall_seconds": wall, "invocations": log["invocations"],
            "cached_units": min(log["units_before"], total), "computed_units": total - min(log["units_before"], total)}
    render_compare(res, raw["diagnosis"], meta, out)
    _print(res)
    make_console().print(f"wall time {wall / 60:.1f} min; wrote {out / 'compare.md'}, {out / 'compare.html'}, {out / 'compare.json'}")


def _oracle(arms: dict, diagnosis: dict, meta: dict, out: Path) -> None:
    """Write the oracle's report and print its verdict (80 columns)."""
    from ..experiment.oracle_report import SCALE, oracle_verdict, render_oracle
    from ..experiment.oracle_results import aggregate_oracle

    res = aggregate_oracle(arms, diagnosis["rules"])
    render_oracle(res, meta, out)
    scale, digits = SCALE.get(res["metric"], (100, 2))
    t = table(f"per-block oracle ({'nats' if scale == 1 else 'points'})",
              ["block", "gain over head", "± sd", "LOO loss", "± sd"])
    for r in res["table"]:
        t.add_row(str(r["block"]), *(f"{scale * r[k][m]:{'+' if m == 'mean' else ''}.{digits}f}"
                                     if r[k]["n"] > (m == "sd") else "n/a"
                                     for k in ("gain", "loo_loss") for m in ("mean", "sd")))
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
        t.add_row(r["rule"], layer_ranges(list(blocks[0])) if len(blocks) == 1 else "per seed", str(r["r"]),
                  f"{r['trainable_params']:,}", f"{shown(metric, r[metric]['mean']):.{digits}f}",
                  f"{abs(shown(metric, r[metric]['sd'])):.{digits}f}" if r[metric]["n"] > 1 else "n/a")
    console = make_console()
    console.print(t)
    console.print("recommendation: " + res["recommendation"]["text"].replace("**", ""))
