"""``plan``: the peak memory of a training step, per strategy, before anything is trained.

The model is built on the meta device (its config only, no weights) and each strategy is applied to
it with the same code that applies it for training (PEFT on the meta model), so the trainable count
is PEFT's own. Peak memory is split into weights, gradients, optimizer state, activations (the
closed formula of ``activation_formula``) and workspace, and put together as the step runs:

    peak = weights + optimizer state + max(activations + backward workspace,
                                          gradients + optimizer-step workspace)

Backward frees each block's saved tensors as it makes that block's gradients, so the two never
peak together (the sum is linear in the block reached, so its maximum is at an end). ``diagnose``
is planned as it runs once its gradients are measured in post-accumulate hooks (issue 19): no
optimizer, and at most one block's parameter gradients alive beside the activations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from ..errors import ArchitectureError, ConfigError
from ..models import arch_for, base_model, get_blocks, meta_model, parameter_groups
from ..strategies import StrategyOptions, apply_strategy, count_parameters
from ..strategies.budget import Budget, rank_for_params
from ..validate import LORA_DEFAULTS, check_value, check_values
from .activation_formula import (
    BlockRole,
    Shapes,
    block_floats,
    head_floats,
    outside_floats,
    transient_floats,
)

PLAN_STRATEGIES = ("full", "head", "shallow", "lora-all", "lora-inflection", "lisa", "diagnose")
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FP32 = 4


@dataclass
class PlanSpec:
    """What a plan is for: a model, a batch of ``batch_size`` sequences of ``length`` tokens, a
    precision, and the strategies' options (band, budget, k, rank, LISA interval)."""

    model: str
    batch_size: int = 8
    length: int = 128
    precision: str = "fp32"
    attention: str = "sdpa"
    strategies: tuple[str, ...] = PLAN_STRATEGIES
    layers: list[int] | None = None
    budget: Budget | None = None
    k: int = 2
    r: int = LORA_DEFAULTS.r
    lisa_interval: int = 20
    steps: int | None = None  # optimizer steps taken (LISA's state grows with them); None: a long run

    def check(self) -> None:
        check_values(
            batch_size=self.batch_size, length=self.length, k=self.k, lisa_interval=self.lisa_interval, steps=self.steps
        )
        check_value("lora_r", self.r)
        if self.precision not in ELEMENT_BYTES:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(ELEMENT_BYTES)}")
        if self.attention not in ("sdpa", "eager"):
            raise ConfigError(f"unknown attention {self.attention!r}; choose one of sdpa, eager")
        unknown = [s for s in self.strategies if s not in PLAN_STRATEGIES]
        if unknown:
            raise ConfigError(f"unknown strategy {unknown[0]!r}; choose one of {', '.join(PLAN_STRATEGIES)}")


@dataclass
class StrategyPlan:
    """One strategy's predicted peak, in bytes; ``peak_above_model`` is what ``--measure`` checks."""

    strategy: str
    trainable: int
    total: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    workspace: int
    peak: int
    blocks: list[int] = field(default_factory=list)
    rank: int | None = None

    @property
    def peak_above_model(self) -> int:
        return self.peak - self.weights

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_above_model": self.peak_above_model}


def build_on_meta(name: str) -> nn.Module:
    """The classifier of ``name`` on the meta device; a model that cannot be built there is an error."""
    try:
        model = meta_model(name)
    except (ConfigError, ArchitectureError):
        raise
    except (ValueError, TypeError, RuntimeError, AttributeError, KeyError) as exc:  # transformers raises many kinds
        raise ArchitectureError(f"cannot build {name!r} on the meta device: {str(exc).splitlines()[0]}") from None
    arch_for(model)
    return model


def band_for(spec: PlanSpec, model: nn.Module) -> tuple[list[int] | None, int]:
    """lora-inflection's band and rank: ``layers`` as given, or before a diagnosis has chosen them
    the K blocks nearest the input (K from ``budget.layers``, else ``k``): the most memory any band
    of K can take, every block above it being on the gradient path; ``params=N`` sets the rank as
    ``finetune --budget`` does."""
    n = len(get_blocks(model))
    layers = spec.layers
    if layers is None:  # no band yet: the worst band of K blocks (K from the budget, else --k)
        size = spec.budget.layers if spec.budget is not None and spec.budget.layers else spec.k
        layers = list(range(min(size, n)))
    if layers is not None and any(not 0 <= i < n for i in layers):
        raise ConfigError(f"band {sorted(layers)} is outside this {n}-block model (0-{n - 1})")
    rank = spec.r
    if layers and spec.budget is not None and spec.budget.params:
        rank = rank_for_params(model, layers, spec.budget.params)
    return layers, rank


def applied_model(spec: PlanSpec, strategy: str, model: nn.Module):
    """The meta model as ``strategy`` trains it at ``spec.steps`` (LISA: that step's blocks); returns
    (model, the blocks it adapts, the rank, the LISA schedule or None)."""
    if strategy == "diagnose":
        for p in model.parameters():
            p.requires_grad = True
        return model, list(range(len(get_blocks(model)))), None, None
    layers, rank = band_for(spec, model) if strategy == "lora-inflection" else (None, spec.r)
    applied = apply_strategy(
        strategy,
        model,
        StrategyOptions(layers=layers, k=spec.k, r=rank, seed=42, extra={"lisa_interval": spec.lisa_interval}),
    )
    if applied.schedule is not None:
        applied.schedule.before_step(max((spec.steps or 1) - 1, 0))
    return applied.model, applied.layers, rank if strategy.startswith("lora") else None, applied.schedule


def block_roles(model: nn.Module) -> tuple[list[BlockRole], bool]:
    """Each block's role from which parameters require a gradient; and whether the embeddings train."""
    groups = parameter_groups(model)
    below = any(p.requires_grad for _, p in groups["embeddings"])
    embeddings_train, roles = below, []
    for i in range(len(get_blocks(model))):
        params = groups[f"block.{i}"]
        lora = sum(1 for name, p in params if "lora_A" in name and p.requires_grad and name.endswith("weight"))
        weights = any(p.requires_grad for name, p in params if "lora_" not in name)
        rank = next((p.shape[0] for name, p in params if "lora_A" in name), 8)
        roles.append(BlockRole(weights=weights, lora=lora, rank=int(rank), input_grad=below))
        below = below or weights or lora > 0
    return roles, embeddings_train


def activation_bytes(spec: PlanSpec, model: nn.Module, shapes: Shapes, training: bool = True) -> int:
    """What autograd keeps for backward over the whole model: the per-block formula times tokens."""
    roles, embeddings_train = block_roles(model)
    floats = sum(block_floats(shapes, role, spec.length, spec.attention, training) for role in roles)
    norm = getattr(base_model(model), "norm", None)
    final_norm_train = norm is not None and any(p.requires_grad for p in norm.parameters())
    floats += outside_floats(shapes, embeddings_train, final_norm_train, any(r.on_path for r in roles), training)
    per_batch = spec.batch_size * (spec.length * floats + head_floats(shapes))
    return int(per_batch * ELEMENT_BYTES[spec.precision])


def transient_workspace(spec: PlanSpec, shapes: Shapes, model: nn.Module, training: bool = True) -> int:
    """The forward's and backward's short-lived tensors beside the kept activations (bytes)."""
    roles, _ = block_roles(model)
    floats = transient_floats(
        shapes, spec.length, spec.attention, training, roles[-1].on_path, any(r.on_path for r in roles)
    )
    return int(spec.batch_size * spec.length * floats * ELEMENT_BYTES[spec.precision])


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    seen, out = set(), []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen and ".original_module." not in f".{name}":
            seen.add(id(p))
            out.append(p)
    return out


def optimizer_state_bytes(spec: PlanSpec, model: nn.Module, schedule) -> int:
    """AdamW's two moments (fp32) for every parameter that has had a gradient. LISA builds its
    optimizer over every block and a block's moments appear on its first turn and stay: after
    ``spec.steps`` steps the blocks drawn so far (its own schedule), in a long run every block."""
    params = trainable_params(model)
    if schedule is None:
        return 2 * FP32 * sum(p.numel() for p in params)
    blocks = get_blocks(model)
    drawn = (
        set(range(len(blocks)))
        if spec.steps is None
        else {i for step in range(spec.steps) for i in schedule.blocks_at(step)}
    )
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    outside = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks and p.requires_grad)
    return 2 * FP32 * (outside + sum(p.numel() for i in drawn for p in blocks[i].parameters()))


def plan_strategy(spec: PlanSpec, strategy: str) -> StrategyPlan:
    model = build_on_meta(spec.model)
    shapes = Shapes.of(model.config, arch_for(model).family)
    model, layers, rank, schedule = applied_model(spec, strategy, model)
    trainable, total = count_parameters(model)
    weights = FP32 * sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    grads = FP32 * trainable
    diagnosing = strategy == "diagnose"
    acts = activation_bytes(spec, model, shapes, training=not diagnosing)
    back = transient_workspace(spec, shapes, model, training=not diagnosing)
    if diagnosing:  # hooks keep one block's gradients at a time; the embedding's comes last, alone
        groups = parameter_groups(model)
        sizes = {g: FP32 * sum(p.numel() for _, p in ps) for g, ps in groups.items()}
        in_flight = max(v for g, v in sizes.items() if g.startswith("block."))
        peak = weights + max(acts + back + in_flight, max(sizes.values()))
        return StrategyPlan(strategy, trainable, total, weights, in_flight, 0, acts, back, peak, layers)
    state = optimizer_state_bytes(spec, model, schedule)
    step_work = 2 * FP32 * max((p.numel() for p in trainable_params(model)), default=0)  # AdamW's sqrt temporaries
    backward_peak, step_peak = acts + back, grads + step_work
    work = back if backward_peak >= step_peak else step_work
    peak = weights + state + max(backward_peak, step_peak)
    return StrategyPlan(strategy, trainable, total, weights, grads, state, acts, work, peak, layers, rank)


def plan(spec: PlanSpec) -> list[StrategyPlan]:
    """One ``StrategyPlan`` per strategy of ``spec`` (each on a fresh meta model)."""
    spec.check()
    return [plan_strategy(spec, s) for s in spec.strategies]
