"""``inflora plan``: predicted peak memory per strategy before training; ``--measure`` checks it."""

from __future__ import annotations

import json

import typer

from ..validate import LORA_DEFAULTS
from . import command
from .options import K, BatchSize, LisaInterval, LoraR, Precision
from .output import console as make_console
from .output import table

MIB = 2**20
COLUMNS = ["strategy", "train", "weights", "grads", "optim", "activ", "work", "peak"]


def _mib(n: int) -> str:
    return f"{n / MIB:,.0f}"


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


def _table(rows: list[dict], measured: bool, title: str):
    t = table(title, COLUMNS + (["meas", "err"] if measured else []), tight=True)
    for r in rows:
        cells = [r["strategy"], _count(r["trainable"])] + [
            _mib(r[k]) for k in ("weights", "gradients", "optimizer", "activations", "workspace", "peak")
        ]
        if measured:
            err = r["error"]
            cells += [_mib(r["weights"] + r["measured_above_model"]), "" if err is None else f"{err:+.0%}"]
        t.add_row(*cells)
    return t


def _progress(row: dict) -> None:
    typer.echo(
        f"measured {row['strategy']}: +{row['measured_above_model'] / MIB:,.0f} MiB "
        f"(planned +{row['peak_above_model'] / MIB:,.0f})",
        err=True,
    )


@command("plan")
def plan_cmd(
    model: str = typer.Option("minilm", help="model name, folder (a config.json is enough) or tiny-<family>"),
    batch_size: BatchSize = 8,
    length: int = typer.Option(128, help="tokens per sequence"),
    precision: Precision = "fp32",
    attention: str = typer.Option("sdpa", help="sdpa | eager"),
    strategies: str = typer.Option("full,head,shallow,lora-all,lora-inflection,lisa,diagnose"),
    layers: str | None = typer.Option(
        None,
        help="lora-inflection's band, e.g. 2,3 (default: the K blocks "
        "nearest the input, the most memory a band of K takes)",
    ),
    budget: str | None = typer.Option(None, help="lora-inflection without a band: layers=K and/or params=N"),
    k: K = 2,
    lora_r: LoraR = LORA_DEFAULTS.r,
    lisa_interval: LisaInterval = 20,
    steps: int | None = typer.Option(None, help="optimizer steps taken (LISA's state grows); default: a long run"),
    measure: bool = typer.Option(False, help="run a few steps of each strategy (fresh process each) and compare"),
    measure_steps: int = typer.Option(3, help="steps per measured strategy"),
    device: str = typer.Option("cpu", help="where --measure runs: cpu | cuda"),
    threads: int = typer.Option(0, help="torch threads in the measuring processes (0: torch's default)"),
    plain_malloc: bool = typer.Option(False, help="measure with glibc's default mmap threshold (allocator slack)"),
    json_out: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Predict each strategy's peak memory (weights, gradients, optimizer, activations, workspace)."""
    from ..strategies.budget import Budget
    from ..training.memory_measure import check_measure_options
    from ..training.memory_plan import PlanSpec, plan
    from ..validate import parse_blocks

    check_measure_options(device, measure_steps, threads)
    spec = PlanSpec(
        model,
        batch_size,
        length,
        precision,
        attention,
        tuple(s.strip() for s in strategies.split(",") if s.strip()),
        parse_blocks(layers),
        Budget.parse(budget) if budget else None,
        k,
        lora_r,
        lisa_interval,
        steps if steps is not None or not measure else measure_steps,
    )
    plans = plan(spec)
    if measure:
        from ..training.memory_measure import measured_rows

        rows = measured_rows(spec, plans, measure_steps, device, threads, plain_malloc, on_row=_progress)
    else:
        rows = [p.to_dict() for p in plans]
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "spec": {
                        "model": model,
                        "batch_size": batch_size,
                        "length": length,
                        "precision": precision,
                        "attention": attention,
                        "steps": spec.steps,
                    },
                    "strategies": rows,
                },
                indent=1,
            )
        )
        return
    title = (
        f"{model}: batch {batch_size} x {length} tokens, {precision}, {attention} (MiB; peak = weights +"
        f" optim + max(activ + work, grads + work)" + ("; meas = weights + measured rise)" if measure else ")")
    )
    make_console().print(_table(rows, measure, title))
