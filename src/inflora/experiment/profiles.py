"""Experiment profiles: the same SST-2 → target protocol (RT, TREC) at several sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    source_limit: int | None  # stratified SST-2 subsample (None: all of it)
    under_epochs: int  # UNDER = the source run after this many epochs
    over_epochs: int  # OVER = the same run at its end
    source_lr: float
    target_limit: int | None  # stratified RT train subsample
    target_epochs: int
    eval_limit: int | None  # RT validation/test subsample (None: full 1066 each)
    max_length: int
    batch_size: int
    diagnose_batches: int
    diagnose_batch_size: int
    cka_examples: int
    log_every: int

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    # For tests: every stage on the real MiniLM, a handful of steps each.
    "smoke": Profile("smoke", "minilm", 96, 1, 2, 5e-5, 64, 1, 64, 32, 16, 2, 16, 48, 2),
    # 2 regimes x 6 strategies x 3 seeds: measured 42 min on 2 CPU cores (docs/results/README.md).
    "cpu": Profile("cpu", "minilm", 2000, 1, 8, 5e-5, 1000, 2, None, 64, 32, 8, 32, 512, 5),
    # A larger CPU budget for the rule arms (lora-<rule>) and forgetting: 5,000 SST-2 examples (UNDER 1 /
    # OVER 5 epochs, 2.5x cpu's source data), 4,000 RT train examples for 1 epoch (4x cpu's), full RT
    # validation/test and SST-2 validation. Sized from measured step times (full 0.52 s, LoRA on 2 blocks
    # 0.31 s per 32-example step, ~15 s fixed cost per target unit) so that 9 strategies x 2 regimes x
    # 3 seeds at K=2 and the 6 band strategies again at K=3 finish in about 2 hours on 2 cores
    # (docs/results/README.md has the measured time). Units are cached, so it may be run in pieces.
    "cpu-large": Profile("cpu-large", "minilm", 5000, 1, 5, 5e-5, 4000, 1, None, 64, 32, 8, 32, 256, 10),
    # SST-2 → TREC on a shared 2-core machine: cpu's 2,000 SST-2 examples but OVER at epoch 4 (not 8), and
    # cpu's 1,000 target examples for 2 epochs; full TREC validation/test and SST-2 validation. Estimated from
    # the cpu-large step times (full 0.52 s, LoRA 0.31-0.35 s per step, ~15 s fixed cost per unit) at ~50 min
    # for 9 strategies x 2 regimes x 3 seeds on idle cores. Units are cached: it may be run in pieces.
    "cpu-small": Profile("cpu-small", "minilm", 2000, 1, 4, 5e-5, 1000, 2, None, 64, 32, 8, 32, 256, 5),
    # The paper's protocol (needs a GPU or a very long CPU run).
    "paper": Profile("paper", "bert-base-uncased", None, 1, 8, 2e-5, None, 3, None, 128, 32, 8, 32, 512, 50),
}


def get_profile(name: str, **overrides) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    base = PROFILES[name].to_dict()
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Profile(**base)
