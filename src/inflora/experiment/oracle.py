"""The per-block oracle of ``inflora compare --oracle``: what each block is worth, measured.

For each block b, LoRA on b alone (``block-b``) and on every block but b (``without-b``), beside
``head`` (no adapter) and ``all`` (LoRA on every block: the comparison's own ``all`` arm when the
ranks agree, so it is shared with it). Same rank, targets, steps, data and seeds as the K-block arms,
cached as units of the same folder. The arms run in groups over all seeds (head and all, then the
single-block arms, then leave-one-out), so an interrupted oracle already holds its main profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

MAX_BLOCKS = 48  # beyond this, --oracle needs --blocks: 2 arms per block and seed add up fast


@dataclass(frozen=True)
class OracleArm:
    name: str  # head | all | block-<b> | without-<b>
    strategy: str
    layers: tuple[int, ...]
    group: str  # reference | single | leave-one-out


def count_oracle_arms(blocks: int, seeds: int) -> int:
    """head and all, plus two arms per block, per seed."""
    return seeds * (2 + 2 * blocks)


def model_depth(model: str) -> int:
    """The number of blocks from the model's config alone (no weights loaded)."""
    from ..models.loading import model_config

    cfg = model_config(model)
    text = getattr(cfg, "text_config", None)  # multimodal configs keep the language model's depth there
    depth = getattr(cfg, "num_hidden_layers", None) or getattr(text, "num_hidden_layers", None)
    if not depth:
        raise ConfigError(f"cannot tell how many blocks {model!r} has (its config has no num_hidden_layers)")
    return int(depth)


def oracle_blocks(depth: int, blocks: list[int] | None, seeds: int) -> list[int]:
    """The blocks the oracle measures: ``blocks`` (checked) or all of them, refused above
    ``MAX_BLOCKS`` without a subset, naming the number of arms it would run."""
    if blocks:
        bad = [b for b in blocks if not 0 <= b < depth]
        if bad:
            raise ConfigError(f"--blocks {bad} out of range: the model has blocks 0-{depth - 1}")
        return sorted(set(blocks))
    if depth > MAX_BLOCKS:
        raise ConfigError(
            f"--oracle on all {depth} blocks would run {count_oracle_arms(depth, seeds):,} arms "
            f"({seeds} seed(s) x (2 + 2 x {depth})); choose a subset with --blocks "
            "(e.g. --blocks 0,8,16)"
        )
    return list(range(depth))


def oracle_arms(depth: int, blocks: list[int]) -> list[OracleArm]:
    every = tuple(range(depth))
    return [
        OracleArm("head", "head", (), "reference"),
        OracleArm("all", "lora-all", every, "reference"),
        *[OracleArm(f"block-{b}", "lora-inflection", (b,), "single") for b in blocks],
        *[
            OracleArm(f"without-{b}", "lora-inflection", tuple(i for i in every if i != b), "leave-one-out")
            for b in blocks
        ],
    ]


GROUPS = ("reference", "single", "leave-one-out")


def run_oracle(
    run_arm, cache, plan, blocks: list[int], depth: int, advance=lambda label: None, on_group=lambda done, results: None
) -> list[dict]:
    """Every oracle arm of every seed (cached units); returns their results, each with ``group``.
    ``run_arm`` is compare's own arm runner (passed in, so the oracle does not import compare, which
    drives it). ``on_group(groups done, results so far)`` follows each group: a long run reports the
    single-block profile before its leave-one-out arms are done."""
    arms, results = oracle_arms(depth, blocks), []
    for i, group in enumerate(GROUPS):
        for seed in plan.seeds:
            for arm in (a for a in arms if a.group == group):
                chosen = {"selected": list(arm.layers), "r": plan.lora_r}
                results.append({**run_arm(cache, plan, arm.name, seed, chosen, strategy=arm.strategy), "group": group})
                advance(f"oracle {arm.name} seed {seed}")
        if group != "reference":
            on_group(list(GROUPS[: i + 1]), list(results))
    return results
