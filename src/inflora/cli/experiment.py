"""``inflora experiment sst2-to-rt``: the paper's transfer experiment, resumable, with an honest report."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import command


def _split(text: str, cast=str) -> list:
    from ..errors import ConfigError

    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"expected a comma-separated list, got {text!r}") from None


@command("experiment")
def experiment_cmd(
    name: str = typer.Argument("sst2-to-rt", help="experiment name (only sst2-to-rt so far)"),
    profile: str = typer.Option("cpu", help="smoke | cpu | paper"),
    seeds: str = typer.Option("42,43,44"),
    regimes: str = typer.Option("under,over"),
    strategies: str = typer.Option("full,shallow,lora-all,lora-inflection,lora-random,head"),
    model: Optional[str] = typer.Option(None, help="override the profile's model (name or local path)"),
    data_dir: Optional[str] = typer.Option(None),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps"),
    precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (fp16: GPU only)"),
    out: Path = typer.Option(Path("runs/experiment")),
) -> None:
    """Source training (UNDER/OVER) on SST-2, diagnosis on RT validation, target runs on RT; cached and resumable."""
    from ..errors import ConfigError
    from ..experiment import Plan, aggregate, get_profile, run_experiment
    from ..experiment.cache import UnitCache
    from ..experiment.report import render

    if name != "sst2-to-rt":
        raise ConfigError(f"unknown experiment {name!r}; available: sst2-to-rt")
    plan = Plan(get_profile(profile, model=model), _split(seeds, int), _split(regimes), _split(strategies), data_dir,
                device=device, precision=precision).validate()
    cache = UnitCache(out)
    command_line = "inflora " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    cache_before = _count_done(cache)
    t0 = time.perf_counter()
    finished = False
    try:
        raw = run_experiment(plan, out)
        finished = True
    finally:  # an interrupted invocation is logged too: its time counts toward the experiment's total
        wall = time.perf_counter() - t0
        invocations = cache.log_invocation({"command": command_line, "wall_seconds": wall, "finished": finished,
                                            "units_before": cache_before, "units_after": _count_done(cache)})
    total_units = len(plan.seeds) * (1 + len(plan.regimes) * (1 + len(plan.strategies)))
    res = aggregate(raw["targets"], raw["diagnoses"], raw["sources"])
    meta = {"command": command_line, "profile": plan.profile.to_dict(),
            "seeds": plan.seeds, "regimes": plan.regimes, "strategies": plan.strategies, "wall_seconds": wall,
            "cached_units": min(cache_before, total_units), "computed_units": total_units - min(cache_before, total_units),
            "invocations": invocations}
    render(res, meta, out)
    console = Console()
    t = Table(title=f"SST-2 → RT ({plan.profile.name}), RT test accuracy %")
    for col in ("regime", "strategy", "trainable", "test", "decontaminated"):
        t.add_column(col, justify="right")
    for r in res["table"]:
        t.add_row(r["regime"], r["strategy"], f"{r['trainable_params']:,}", f"{100 * r['test']['mean']:.2f}",
                  f"{100 * r['test_decontaminated']['mean']:.2f}")
    console.print(t)
    console.print(f"wall time {wall / 60:.1f} min; wrote {out / 'results.md'}, {out / 'results.html'}, {out / 'results.json'}")


def _count_done(cache) -> int:
    return len(list(cache.root.glob("*/result.json"))) if cache.root.exists() else 0
