"""The SST-2 → target experiments (RT, TREC): source runs, diagnoses, target runs, all cached units.

source(seed) trains full fine-tuning on SST-2 and keeps the UNDER (epoch ``under_epochs``) and OVER
(last epoch) models of the same run; diagnose(regime, seed) finds the band of each on the target's
validation split; target(regime, strategy, seed) fine-tunes each on the target's train split.
Interrupt at any time: the same command resumes, and a finished experiment re-renders at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import ConfigError
from ..validate import check_seeds
from ..strategies import NEEDS_BAND, STRATEGIES
from ..strategies.rule_arms import rule_of
from .cache import UnitCache, unit_counts
from .profiles import Profile
from .transfers import DEFAULT, Transfer, get_transfer

REGIMES = ("under", "over")


@dataclass
class Plan:
    profile: Profile
    seeds: list[int]
    regimes: list[str]
    strategies: list[str]
    data_dir: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    budget: int | None = None  # K blocks for every band strategy (None: SKI's band; rule arms its size)
    transfer: str = DEFAULT  # sst2-to-rt | sst2-to-trec

    @property
    def target(self) -> Transfer:
        return get_transfer(self.transfer)

    def rules(self) -> list[str]:
        """Rules the diagnoses must score: SKI plus one per ``lora-<rule>`` arm (none without arms or K)."""
        arms = [r for r in map(rule_of, self.strategies) if r]
        return ["ski", *arms] if arms or self.budget else []

    def validate(self) -> "Plan":
        from ..devices import resolve_device

        resolve_device(self.device, self.precision)
        get_transfer(self.transfer)
        for r in self.regimes:
            if r not in REGIMES:
                raise ConfigError(f"unknown regime {r!r}; use under, over")
        for s in self.strategies:
            STRATEGIES.get(s)
        if not self.seeds:
            raise ConfigError("give at least one seed")
        check_seeds(self.seeds)
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"a budget of {self.budget} blocks is impossible; choose K >= 1")
        return self

    @property
    def num_units(self) -> int:
        """Per seed: the source run, and per regime two diagnoses (RT validation, RT train) + the target runs:
        what ``run_experiment`` computes or finds cached."""
        return len(self.seeds) * (1 + len(self.regimes) * (2 + len(self.strategies)))


def source_config(p: Profile, seed: int) -> dict:
    keys = ("model", "source_limit", "under_epochs", "over_epochs", "source_lr", "max_length", "batch_size")
    return {"seed": seed, **{k: getattr(p, k) for k in keys}}


def diagnose_config(
    p: Profile,
    seed: int,
    regime: str,
    rules: list[str] = (),
    budget: int | None = None,
    split: str = "validation",
    transfer: Transfer | None = None,
) -> dict:
    extra = {"rules": list(rules), "budget": budget} if rules else {}  # earlier caches keep their keys
    if split != "validation":
        extra["split"] = split
    if transfer is not None and transfer.name != DEFAULT:
        extra["task"] = transfer.target
    return {
        "source": source_config(p, seed),
        "regime": regime,
        "batches": p.diagnose_batches,
        "batch_size": p.diagnose_batch_size,
        "max_length": p.max_length,
        **extra,
    }


def target_config(
    p: Profile, seed: int, regime: str, strategy: str, band: list[int], transfer: Transfer | None = None
) -> dict:
    keys = ("target_limit", "target_epochs", "eval_limit", "max_length", "batch_size", "cka_examples", "log_every")
    task = {"task": transfer.target, "new_head": transfer.new_head} if transfer and transfer.name != DEFAULT else {}
    return {
        "source": source_config(p, seed),
        "regime": regime,
        "strategy": strategy,
        "band": band,
        "retention_task": "sst2",
        **task,
        **{k: getattr(p, k) for k in keys},
    }


def band_for(strategy: str, diagnosis: dict, budget: int | None) -> list[int] | None:
    """The blocks a target run trains: a rule arm's selection; with K, SKI's band fitted to K (also the
    size of lora-random's draw); else the band. Strategies without a band get None (their cache key
    then does not depend on the diagnosis)."""
    if strategy not in NEEDS_BAND:
        return diagnosis["inflection_layers"] if budget is None else None
    rule = rule_of(strategy) or ("ski" if budget else None)
    return diagnosis["rules"]["rules"][rule]["selected"] if rule else diagnosis["inflection_layers"]


def with_precision(cfg: dict, precision: str) -> dict:
    """A unit's cache key names its precision when it is not fp32 (fp32 keys stay as they were);
    the device is not part of it: a cached unit is reused on any device."""
    return cfg if precision == "fp32" else {**cfg, "precision": precision}


def run_source(
    cache: UnitCache, p: Profile, seed: int, data_dir, *, device: str = "auto", precision: str = "fp32"
) -> dict:
    from ..training import FinetuneConfig, finetune

    cfg = with_precision(source_config(p, seed), precision)
    if (done := cache.done("source", cfg)) is not None:
        return done
    folder = cache.folder("source", cfg)
    ft = FinetuneConfig(
        model=p.model,
        task="sst2",
        strategy="full",
        epochs=p.over_epochs,
        seed=seed,
        lr=p.source_lr,
        batch_size=p.batch_size,
        max_length=p.max_length,
        limit_train=p.source_limit,
        cka_examples=0,
        log_every=p.log_every,
        decontaminate_against=None,
        save_epochs=sorted({p.under_epochs, p.over_epochs}),
        data_dir=data_dir,
        device=device,
        precision=precision,
    )
    m = finetune(ft, folder / "run", progress=False)
    return cache.finish(
        "source",
        cfg,
        {
            "under": str(folder / "run" / f"model-epoch{p.under_epochs}"),
            "over": str(folder / "run" / f"model-epoch{p.over_epochs}"),
            "under_epoch": p.under_epochs,
            "over_epoch": p.over_epochs,
            "history": m["history"],
            "train_seconds": m["train_seconds"],
        },
    )


def run_diagnose(
    cache: UnitCache,
    p: Profile,
    seed: int,
    regime: str,
    source: dict,
    data_dir,
    *,
    device: str = "auto",
    precision: str = "fp32",
    rules: list[str] = (),
    budget: int | None = None,
    split: str = "validation",
    transfer: Transfer = get_transfer(DEFAULT),
) -> dict:
    """The source checkpoint probed on the target's ``split``: validation chooses the band; train (what
    target training starts from) gives the output-saturation numbers and the gradient split there.
    A target with a new head is probed through that head, freshly initialised with the seed, as
    its training will start."""
    from ..data import load_task
    from ..diagnosis import diagnose
    from ..strategies.budget import Budget

    cfg = with_precision(diagnose_config(p, seed, regime, rules, budget, split, transfer), precision)
    if (done := cache.done("diagnose", cfg)) is not None:
        return done
    data = load_task(transfer.target, split, data_dir)
    model, tok = load_source(source[regime], data.num_labels if transfer.new_head else None, seed)
    d = diagnose(
        model,
        data,
        tok,
        batches=p.diagnose_batches,
        batch_size=p.diagnose_batch_size,
        max_length=p.max_length,
        seed=seed,
        progress=False,
        split=split,
        device=device,
        precision=precision,
        rules=list(rules) or None,
        budget=Budget(layers=budget),
    )
    if rules and not d.rules:
        raise ConfigError(f"the {regime} diagnosis (seed {seed}) compared no rules: " + "; ".join(d.flags))
    d.model = f"{p.model} ({regime.upper()}, seed {seed})"
    d.to_json(cache.folder("diagnose", cfg) / "diagnosis.json")
    return cache.finish("diagnose", cfg, d.to_dict())


def load_source(path: str, new_labels: int | None, seed: int):
    """A source checkpoint with its own head, or (``new_labels``) under a fresh seeded head of that size."""
    from ..models import load_model
    from ..training.parts import load_under_new_head, seed_everything

    if new_labels is None:
        return load_model(path, num_labels=None)
    seed_everything(seed)
    return load_under_new_head(path, new_labels)


def run_target(
    cache: UnitCache,
    p: Profile,
    seed: int,
    regime: str,
    strategy: str,
    source: dict,
    band: list[int],
    data_dir,
    *,
    device: str = "auto",
    precision: str = "fp32",
    transfer: Transfer = get_transfer(DEFAULT),
    models=None,
) -> dict:
    """One target run from the ``regime`` checkpoint of ``source`` (``models``: a ``ModelCache``, so
    the strategies of one regime load that checkpoint once)."""
    from ..training import FinetuneConfig, finetune

    cfg = with_precision(target_config(p, seed, regime, strategy, band, transfer), precision)
    if (done := cache.done("target", cfg)) is not None:
        return done
    ft = FinetuneConfig(
        model=p.model,
        init=source[regime],
        new_head=transfer.new_head,
        task=transfer.target,
        strategy=strategy,
        epochs=p.target_epochs,
        seed=seed,
        batch_size=p.batch_size,
        max_length=p.max_length,
        limit_train=p.target_limit,
        limit_eval=p.eval_limit,
        layers=band,
        cka_examples=p.cka_examples,
        log_every=p.log_every,
        decontaminate_against=transfer.decontaminate,
        retention_task="sst2",
        data_dir=data_dir,
        device=device,
        precision=precision,
    )
    m = finetune(ft, cache.folder("target", cfg) / "run", progress=False, models=models)
    keep = (
        "strategy",
        "layers",
        "band",
        "trainable_params",
        "total_params",
        "lr",
        "accuracy",
        "best_epoch",
        "history",
        "train_seconds",
        "steps",
        "steps_per_second",
        "peak_rss_mb",
        "grad_profile",
        "delta_cka",
    )
    return cache.finish("target", cfg, {"regime": regime, "seed": seed, **{k: m[k] for k in keep}})


def run_experiment(plan: Plan, out: str | Path, *, progress: bool = True) -> dict:
    """Run (or resume) every unit of ``plan`` and return the raw unit results."""
    from ..training.model_cache import ModelCache

    plan.validate()
    models = ModelCache()  # the current source checkpoint, loaded once for all its target runs
    p = plan.profile
    cache = UnitCache(Path(out))
    where = {"device": plan.device, "precision": plan.precision, "transfer": plan.target}
    units = plan.num_units
    # Rough weights for the time estimate: a source run ~ its epochs, a target run ~ its epochs + eval.
    w_source, w_diag, w_target = (
        p.over_epochs * (p.source_limit or 67000) / 1000,
        0.3,
        p.target_epochs * (p.target_limit or 8530) / 1000 + 1.0,
    )
    total = len(plan.seeds) * (w_source + len(plan.regimes) * (2 * w_diag + len(plan.strategies) * w_target))
    raw = {"sources": {}, "diagnoses": {}, "train_diagnoses": {}, "targets": []}
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[units]}"),
        TimeElapsedColumn(),
        TextColumn("left ~"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("experiment", total=total, units=f"0/{units} units")
        finished = 0

        def advance(weight: float, label: str) -> None:
            nonlocal finished
            finished += 1
            bar.update(task, advance=weight, description=label, units=f"{finished}/{units} units")

        for seed in plan.seeds:
            bar.update(task, description=f"source seed {seed}")
            source = run_source(cache, p, seed, plan.data_dir, device=plan.device, precision=plan.precision)
            raw["sources"][seed] = source
            advance(w_source, f"source seed {seed} done")
            for regime in plan.regimes:
                d = run_diagnose(
                    cache, p, seed, regime, source, plan.data_dir, **where, rules=plan.rules(), budget=plan.budget
                )
                raw["diagnoses"][f"{regime}/{seed}"] = d
                advance(w_diag, f"diagnosed {regime} seed {seed}")
                train = run_diagnose(cache, p, seed, regime, source, plan.data_dir, **where, split="train")
                raw["train_diagnoses"][f"{regime}/{seed}"] = train
                advance(w_diag, f"probed {regime} seed {seed} on {plan.target.label} train")
                for strategy in plan.strategies:
                    bar.update(task, description=f"{regime} {strategy} seed {seed}")
                    band = band_for(strategy, d, plan.budget)
                    raw["targets"].append(
                        run_target(
                            cache, p, seed, regime, strategy, source, band, plan.data_dir, **where, models=models
                        )
                    )
                    advance(w_target, f"{regime} {strategy} seed {seed} done")
    return raw


def run_logged(plan: Plan, out: str | Path, command_line: str, *, progress: bool = True) -> tuple[dict, dict]:
    """``run_experiment`` plus its record: every invocation (also an interrupted one, whose time counts
    toward the total) is appended to ``invocations.json``. Returns the raw results and the run's meta."""
    raw, log = UnitCache(Path(out)).logged(command_line, lambda: run_experiment(plan, out, progress=progress))
    wall, invocations = log["wall_seconds"], log["invocations"]
    meta = {
        "command": command_line,
        "profile": plan.profile.to_dict(),
        "seeds": plan.seeds,
        "regimes": plan.regimes,
        "strategies": plan.strategies,
        "wall_seconds": wall,
        **unit_counts(log, plan.num_units),
        "invocations": invocations,
        "budget_layers": plan.budget,
        "transfer": plan.transfer,
    }
    return raw, meta
