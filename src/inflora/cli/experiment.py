"""``inflora experiment sst2-to-rt``: the paper's transfer experiment, resumable, with an honest report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from . import command
from .options import DataDir, Device, Out, Precision, Seeds
from .output import console as make_console
from .output import table


def _split(text: str, cast=str) -> list:
    from ..errors import ConfigError

    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"expected a comma-separated list, got {text!r}") from None


@command("experiment")
def experiment_cmd(
    name: str = typer.Argument("sst2-to-rt", help="sst2-to-rt | sst2-to-trec"),
    profile: str = typer.Option("cpu", help="smoke | cpu | cpu-small | cpu-large | paper"),
    seeds: Seeds = "42,43,44",
    regimes: str = typer.Option("under,over"),
    strategies: str = typer.Option("full,shallow,lora-all,lora-inflection,lora-random,head"),
    model: Optional[str] = typer.Option(None, help="override the profile's model (name or local path)"),
    budget: Optional[str] = typer.Option(
        None,
        help="layers=K: every band strategy (lora-inflection, lora-random, "
        "lora-<rule>) trains K blocks; default: SKI's band and its size",
    ),
    data_dir: DataDir = None,
    device: Device = "auto",
    precision: Precision = "fp32",
    out: Out = Path("runs/experiment"),
) -> None:
    """Source training (UNDER/OVER) on SST-2, diagnosis on the target's validation split, target runs on
    RT or TREC (a new 6-class head; forgetting scored with the source head); cached and resumable."""
    from ..errors import ConfigError
    from ..experiment import Plan, aggregate, get_profile, run_logged
    from ..experiment.report import render
    from ..experiment.transfers import get_transfer
    from ..io import output_dir
    from ..strategies.budget import Budget

    transfer = get_transfer(name)

    spend = Budget.parse(budget)
    if spend.params:
        raise ConfigError("experiment takes --budget layers=K only (a parameter budget is for `inflora compare`)")
    plan = Plan(
        get_profile(profile, model=model),
        _split(seeds, int),
        _split(regimes),
        _split(strategies),
        data_dir,
        device=device,
        precision=precision,
        budget=spend.layers,
        transfer=name,
    ).validate()
    output_dir(out)
    raw, meta = run_logged(plan, out, "inflora " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    metrics = transfer.metrics()
    res = aggregate(raw["targets"], raw["diagnoses"], raw["sources"], raw["train_diagnoses"], metrics)
    render(res, meta, out)
    t = table(
        f"SST-2 → {transfer.label} ({plan.profile.name}), {transfer.label} test accuracy %",
        [
            "regime",
            "strategy",
            "trainable",
            *("decontaminated" if m != "test" else "test" for m in metrics),
            "forgetting",
        ],
    )
    for r in res["table"]:
        t.add_row(
            r["regime"],
            r["strategy"],
            f"{r['trainable_params']:,}",
            *(f"{100 * r[m]['mean']:.2f}" for m in metrics),
            f"{100 * r['forgetting']['mean']:+.2f}",
        )
    console = make_console()
    console.print(t)
    console.print(
        f"wall time {meta['wall_seconds'] / 60:.1f} min; wrote {out / 'results.md'}, {out / 'results.html'}, "
        f"{out / 'results.json'}"
    )
