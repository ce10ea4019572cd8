"""Mixture-of-experts blocks, found from each block's own structure (no family table).

In transformers 5 the routed experts of Qwen3-MoE, Qwen2-MoE, Mixtral, DeepSeek-V3 and gpt-oss are one
module holding fused 3-D ``nn.Parameter``s whose first axis is the expert (``gate_up_proj`` [E, 2I, H],
``down_proj`` [E, H, I]; gpt-oss stores them transposed and adds [E, ·] biases). The router is the
sibling whose ``weight`` is [E, hidden]; shared experts are the other siblings that are MLPs (two or
more Linear layers); a one-output Linear beside them (Qwen2-MoE's ``shared_expert_gate``) is neither.
Every path here is relative to one block, like the architecture table's, so the same layout serves
the probe, the LoRA config (PEFT ``target_parameters``) and the exports. The discovery itself is
``discovery_moe.discover_moe``, run once per model inside ``arch_for`` (``ArchSpec.moe``);
``moe_layout`` and ``spec_block_moes`` only re-read that spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ..errors import DataError
from .architectures import arch_for
from .discovery_moe import BlockMoe, block_moes, discover_moe, find_block_moe  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class MoeLayout:
    """Where a model's MoE blocks keep their parts (paths relative to one block)."""

    experts: str  # module holding the fused expert parameters
    router: str  # module whose ``weight`` is [num_experts, hidden]
    expert_parameters: tuple[str, ...]  # the fused 3-D weights (what LoRA adapts), e.g. mlp.experts.down_proj
    shared: tuple[str, ...]  # Linear modules of shared experts (adapted by the ``mlp`` preset)
    num_experts: int
    top_k: int
    blocks: tuple[int, ...]  # the block indices that are MoE (others are dense)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data) -> "MoeLayout":
        """Read back ``to_dict`` from an untrusted file: every field present and of its type."""
        try:
            strings = {k: data[k] for k in ("experts", "router")}
            lists = {k: tuple(data[k]) for k in ("expert_parameters", "shared", "blocks")}
            ints = {k: data[k] for k in ("num_experts", "top_k")}
        except (KeyError, TypeError) as exc:
            raise DataError(f"the diagnosis' moe layout is malformed (missing or wrong {exc})") from None
        ok = (
            all(isinstance(v, str) and v for v in strings.values())
            and all(isinstance(p, str) and p for k in ("expert_parameters", "shared") for p in lists[k])
            and all(isinstance(i, int) and i >= 0 for i in lists["blocks"])
            and all(isinstance(v, int) and v >= 1 for v in ints.values())
            and lists["expert_parameters"]
        )
        if not ok:
            raise DataError(f"the diagnosis' moe layout is malformed: {data!r}")
        return cls(**strings, **lists, **ints)


def moe_layout(model: nn.Module) -> MoeLayout | None:
    """The model's MoE layout (None for a dense model), read from its ``ArchSpec.moe``."""
    spec = arch_for(model).moe
    if spec is None:
        return None
    return MoeLayout(
        experts=spec.experts,
        router=spec.router,
        expert_parameters=tuple(f"{spec.experts}.{n}" for n in spec.expert_parameters),
        shared=spec.shared,
        num_experts=spec.num_experts,
        top_k=spec.top_k,
        blocks=spec.blocks,
    )


def spec_block_moes(model: nn.Module, blocks: nn.ModuleList) -> list[BlockMoe | None]:
    """Each block's MoE modules (None for a dense block), at the paths of the model's ``ArchSpec.moe``;
    through PEFT's parameter wrappers to the module that owns the fused expert weights."""
    layout = moe_layout(model)
    if layout is None:
        return [None] * len(blocks)
    paths = {k: getattr(layout, k) for k in ("experts", "router", "expert_parameters", "shared")}
    return [
        BlockMoe(
            _unwrapped(b.get_submodule(layout.experts)),
            b.get_submodule(layout.router),
            paths,
            layout.num_experts,
            layout.top_k,
        )
        if i in layout.blocks
        else None
        for i, b in enumerate(blocks)
    ]


def _unwrapped(module: nn.Module) -> nn.Module:
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module
