"""``inflora compare``: one diagnosis, then one LoRA arm per rule and seed at a matched budget.

Every rule's blocks come from the same diagnosis (same probe batches, same head init), every arm
from the same data, seeds and LoRA targets; with ``params=N`` each arm's rank is matched to N
trainable LoRA parameters. Units are cached like ``experiment`` (``OUT/units/<kind>-<hash>``), so an
interrupted comparison resumes and a finished one re-renders at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import ConfigError
from ..models.discovery import check_tower
from ..models.loading import text_tower
from ..validate import LORA_DEFAULTS, check_seeds, check_values
from ..select import RULES
from ..strategies.budget import Budget
from ..strategies.rule_arms import strategy_for_rule
from .cache import UnitCache

ARM_KEEP = (
    "strategy",
    "layers",
    "trainable_params",
    "total_params",
    "lr",
    "accuracy",
    "best_epoch",
    "history",
    "train_seconds",
    "steps",
    "steps_per_second",
    "completion",
    "per_example",
)


@dataclass
class ComparePlan:
    model: str = "minilm"
    task: str = "rotten_tomatoes"
    rules: list[str] = field(
        default_factory=lambda: ["ski", "top-grad", "spectrum-snr", "kappa", "cka-io", "random", "all"]
    )
    seeds: list[int] = field(default_factory=lambda: [42, 43, 44])
    budget: Budget = field(default_factory=Budget)
    epochs: int = 1
    limit_train: int | None = None
    limit_eval: int | None = None
    batch_size: int = 32
    max_length: int = 64
    lr: float | None = None
    lora_r: int = LORA_DEFAULTS.r
    lora_alpha: int = LORA_DEFAULTS.alpha
    lora_targets: str | None = None  # as finetune --lora-targets (qkv | attention | mlp | all | names)
    device: str = "auto"
    precision: str = "fp32"
    diagnose_batches: int = 8
    diagnose_batch_size: int = 32
    diagnose_split: str = "validation"
    diagnose_seed: int = 0
    data_dir: str | None = None
    columns: dict | None = None  # a user file's columns (prompt_column=..., as finetune); None: defaults
    oracle: bool = False  # also the per-block oracle (experiment/oracle.py)
    blocks: list[int] | None = None  # the oracle's blocks (default: all; required above 48)
    tower: str = "language"  # multimodal models: the block list diagnosed and trained

    def validate(self) -> "ComparePlan":
        if not self.rules:
            raise ConfigError("give at least one rule (--rules)")
        for rule in self.rules:
            RULES.get(rule)
        if len(set(self.rules)) != len(self.rules):
            raise ConfigError(f"a rule is listed twice in {self.rules}")
        if not self.seeds:
            raise ConfigError("give at least one seed")
        check_seeds(self.seeds)
        check_values(
            epochs=self.epochs,
            limit_train=self.limit_train,
            limit_eval=self.limit_eval,
            batch_size=self.batch_size,
            max_length=self.max_length,
            lr=self.lr,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            batches=self.diagnose_batches,
            diagnose_batch_size=self.diagnose_batch_size,
        )
        check_tower(self.tower)
        if self.tower != "language":  # a tower the model lacks, or one text cannot feed: as finetune refuses it
            text_tower(self.model, self._task(), self.tower)
        if self.lora_targets:  # a target the model lacks: refused before the diagnosis, as finetune does
            self._check_targets()
        if self.blocks and not self.oracle:
            raise ConfigError("--blocks chooses the oracle's blocks; add --oracle")
        if self.oracle:
            self.oracle_blocks()
        return self

    def _task(self) -> str:
        from ..data import task_type

        columns = self.columns or {}
        return task_type(self.task, columns.get("prompt_column", "prompt"), columns.get("messages_column", "messages"))

    def _check_targets(self) -> None:
        from ..strategies.lora import check_lora_targets

        check_lora_targets(self.model, split_targets(self.lora_targets), self._task())

    def oracle_blocks(self) -> tuple[list[int], int]:
        """The oracle's blocks and the model's depth (refused above 48 blocks without --blocks)."""
        from .oracle import model_depth, oracle_blocks

        depth = model_depth(self.model)
        return oracle_blocks(depth, self.blocks, len(self.seeds)), depth

    def to_dict(self) -> dict:
        return {**asdict(self), "budget": self.budget.to_dict()}

    def diagnose_config(self) -> dict:
        keys = (
            "model",
            "task",
            "rules",
            "diagnose_batches",
            "diagnose_batch_size",
            "diagnose_split",
            "diagnose_seed",
            "max_length",
            "precision",
        )
        return {**{k: getattr(self, k) for k in keys}, "budget": self.budget.to_dict(), **self._columns()}

    def _columns(self) -> dict:
        """Cache keys name a user file's columns, and a tower, only when given (keys of earlier runs stay
        as they were)."""
        return {
            **({"columns": self.columns} if self.columns else {}),
            **({"tower": self.tower} if self.tower != "language" else {}),
        }

    def arm_config(self, rule: str, seed: int, layers: list[int], r: int) -> dict:
        keys = (
            "model",
            "task",
            "epochs",
            "limit_train",
            "limit_eval",
            "batch_size",
            "max_length",
            "lr",
            "lora_alpha",
            "lora_targets",
            "precision",
        )
        return {
            **{k: getattr(self, k) for k in keys},
            "rule": rule,
            "seed": seed,
            "layers": layers,
            "lora_r": r,
            **self._columns(),
        }


def run_diagnosis(cache: UnitCache, plan: ComparePlan) -> dict:
    """The one diagnosis every arm's blocks come from (the head seeded with ``diagnose_seed``)."""
    from ..data import load_any
    from ..diagnosis import diagnose, load_model_for
    from ..training.parts import seed_everything

    cfg = plan.diagnose_config()
    if (done := cache.done("diagnose", cfg)) is not None:
        return done
    data = load_any(plan.task, plan.diagnose_split, plan.data_dir, **(plan.columns or {}))
    seed_everything(plan.diagnose_seed)
    model, tok = load_model_for(
        plan.model, data, tower=plan.tower
    )  # a causal LM for instruction data, else a classifier
    d = diagnose(
        model,
        data,
        tok,
        batches=plan.diagnose_batches,
        batch_size=plan.diagnose_batch_size,
        max_length=plan.max_length,
        seed=plan.diagnose_seed,
        progress=False,
        rules=plan.rules,
        budget=plan.budget,
        split=plan.diagnose_split,
        device=plan.device,
        precision=plan.precision,
    )
    if not d.rules:
        raise ConfigError("the diagnosis compared no rules: " + "; ".join(d.flags))
    d.model = plan.model
    d.to_json(cache.folder("diagnose", cfg) / "diagnosis.json")
    return cache.finish("diagnose", cfg, d.to_dict())


def run_arm(
    cache: UnitCache, plan: ComparePlan, rule: str, seed: int, chosen: dict, strategy: str | None = None
) -> dict:
    """One arm: LoRA on ``chosen["selected"]`` (the rule's strategy, or ``strategy`` for an oracle arm),
    its per-example test scores kept for paired bootstraps over examples."""
    from ..training import FinetuneConfig, finetune

    layers, r = chosen["selected"], chosen.get("r", plan.lora_r)
    cfg = plan.arm_config(rule, seed, layers, r)
    if (done := cache.done("arm", cfg)) is not None:
        return done
    ft = FinetuneConfig(
        model=plan.model,
        task=plan.task,
        strategy=strategy or strategy_for_rule(rule),
        epochs=plan.epochs,
        seed=seed,
        lr=plan.lr,
        batch_size=plan.batch_size,
        max_length=plan.max_length,
        limit_train=plan.limit_train,
        limit_eval=plan.limit_eval,
        layers=layers,
        lora_r=r,
        lora_alpha=plan.lora_alpha,
        lora_targets=split_targets(plan.lora_targets),
        cka_examples=0,
        decontaminate_against=None,
        data_dir=plan.data_dir,
        device=plan.device,
        precision=plan.precision,
        keep_predictions=True,
        tower=plan.tower,
        **(plan.columns or {}),
    )
    m = finetune(ft, cache.folder("arm", cfg) / "run", progress=False)
    return cache.finish(
        "arm",
        cfg,
        {
            "rule": rule,
            "seed": seed,
            "r": r,
            "lora_params": chosen.get("lora_params"),
            **{k: m[k] for k in ARM_KEEP if k in m},
        },
    )


def split_targets(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] or None if text else None


def count_units(plan: ComparePlan) -> int:
    """The diagnosis, one arm per rule and seed, and the oracle's arms. The oracle's ``all`` arm is the
    rule ``all``'s own unit when both train at the same rank (no parameter budget), so it counts once."""
    from .oracle import count_oracle_arms

    oracle = count_oracle_arms(len(plan.oracle_blocks()[0]), len(plan.seeds)) if plan.oracle else 0
    shared = len(plan.seeds) if plan.oracle and "all" in plan.rules and not plan.budget.params else 0
    return 1 + len(plan.rules) * len(plan.seeds) + oracle - shared


def run_compare(plan: ComparePlan, out: str | Path, *, progress: bool = True, on_oracle=None) -> dict:
    """Run (or resume) the diagnosis, the oracle's arms (``on_oracle(diagnosis, oracle)`` is called
    after its single-block arms and again after its leave-one-out arms, before the rule arms) and every
    rule's arm; returns ``{"diagnosis", "arms", "oracle"}`` (``oracle``: None without ``plan.oracle``)."""
    plan.validate()
    cache = UnitCache(Path(out))
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total} units"),
        TimeElapsedColumn(),
        TextColumn("left ~"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("diagnose", total=count_units(plan))
        d = run_diagnosis(cache, plan)
        bar.advance(task)
        oracle = _oracle(
            cache,
            plan,
            lambda label: bar.update(task, advance=1, description=label),
            lambda part: on_oracle and on_oracle(d, part),
        )
        arms = []
        for seed in plan.seeds:
            for rule in plan.rules:
                bar.update(task, description=f"{rule} seed {seed}")
                arms.append(run_arm(cache, plan, rule, seed, d["rules"]["rules"][rule]))
                bar.advance(task)
    return {"diagnosis": d, "arms": arms, "oracle": oracle}


def _oracle(cache: UnitCache, plan: ComparePlan, advance, report) -> dict | None:
    if not plan.oracle:
        return None
    from .oracle import run_oracle

    blocks, depth = plan.oracle_blocks()

    def part(groups: list[str], arms: list[dict]) -> dict:
        return {
            "blocks": blocks,
            "depth": depth,
            "groups": groups,
            "arms": arms,
            "same_examples": plan.limit_eval is None,
        }  # every seed scores the whole test split

    arms = run_oracle(run_arm, cache, plan, blocks, depth, advance, lambda groups, arms: report(part(groups, arms)))
    return part(["reference", "single", "leave-one-out"], arms)
