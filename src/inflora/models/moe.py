"""Mixture-of-experts blocks, found from each block's own structure (no family table).

In transformers 5 the routed experts of Qwen3-MoE, Qwen2-MoE, Mixtral, DeepSeek-V3 and gpt-oss are one
module holding fused 3-D ``nn.Parameter``s whose first axis is the expert (``gate_up_proj`` [E, 2I, H],
``down_proj`` [E, H, I]; gpt-oss stores them transposed and adds [E, ·] biases). The router is the
sibling whose ``weight`` is [E, hidden]; shared experts are the other siblings that are MLPs (two or
more Linear layers); a one-output Linear beside them (Qwen2-MoE's ``shared_expert_gate``) is neither.
Every path here is relative to one block, like the architecture table's, so the same layout serves
the probe, the LoRA config (PEFT ``target_parameters``) and the exports.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ..errors import ArchitectureError, DataError


@dataclass(frozen=True)
class MoeLayout:
    """Where a model's MoE blocks keep their parts (paths relative to one block)."""

    experts: str                        # module holding the fused expert parameters
    router: str                         # module whose ``weight`` is [num_experts, hidden]
    expert_parameters: tuple[str, ...]  # the fused 3-D weights (what LoRA adapts), e.g. mlp.experts.down_proj
    shared: tuple[str, ...]             # Linear modules of shared experts (adapted by the ``mlp`` preset)
    num_experts: int
    top_k: int
    blocks: tuple[int, ...]             # the block indices that are MoE (others are dense)

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
        ok = (all(isinstance(v, str) and v for v in strings.values())
              and all(isinstance(p, str) and p for k in ("expert_parameters", "shared") for p in lists[k])
              and all(isinstance(i, int) and i >= 0 for i in lists["blocks"])
              and all(isinstance(v, int) and v >= 1 for v in ints.values()) and lists["expert_parameters"])
        if not ok:
            raise DataError(f"the diagnosis' moe layout is malformed: {data!r}")
        return cls(**strings, **lists, **ints)


@dataclass(frozen=True)
class BlockMoe:
    """One block's MoE modules, and their paths relative to the block."""

    experts: nn.Module
    router: nn.Module
    paths: dict  # experts, router, expert_parameters, shared (as in MoeLayout)
    num_experts: int
    top_k: int

    def expert_tensors(self) -> list[nn.Parameter]:
        """Every parameter of the experts module with one slice per expert on axis 0 (weights, biases)."""
        return [p for p in self.experts.parameters(recurse=False) if p.dim() >= 2 and p.shape[0] == self.num_experts]


def _fused_experts(block: nn.Module) -> tuple[str, nn.Module, int] | None:
    """The shallowest module whose own parameters include 3-D ones sharing a first axis E >= 2."""
    for name, module in block.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):  # a convolution's 3-D kernel is not a stack of experts
            continue
        sizes = {p.shape[0] for p in module.parameters(recurse=False) if p.dim() == 3}
        if len(sizes) == 1 and (e := sizes.pop()) >= 2:
            return name, module, e
    return None


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _router(parent: nn.Module, experts: nn.Module, e: int, where: str) -> tuple[str, nn.Module]:
    """The first module beside the experts (or inside a sibling, e.g. ``gate.wg``) owning a weight [E, hidden]."""
    for name, child in parent.named_children():
        if child is experts:
            continue
        for sub, module in child.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.dim() == 2 and weight.shape[0] == e:
                return _join(name, sub), module
    raise ArchitectureError(f"the MoE block {where!r} has {e} fused experts but no router (a sibling module whose "
                            f"weight is [{e}, hidden]); add an override in inflora.models.moe")


def _shared_linears(parent: nn.Module, skip: set[int]) -> list[str]:
    """Linear paths inside the siblings that are MLPs (two or more Linear layers): shared experts."""
    out = []
    for name, child in parent.named_children():
        if id(child) in skip:
            continue
        linears = [n for n, m in child.named_modules() if isinstance(m, nn.Linear)]
        if len(linears) >= 2:
            out += [_join(name, n) for n in linears]
    return out


def _top_k(router: nn.Module, config) -> int:
    k = getattr(router, "top_k", None) or getattr(config, "num_experts_per_tok", None)
    if not isinstance(k, int) or k < 1:
        raise ArchitectureError(f"{type(router).__name__} does not say how many experts each token picks "
                                "(router.top_k or config.num_experts_per_tok)")
    return k


def find_block_moe(block: nn.Module, config=None) -> BlockMoe | None:
    """The block's MoE parts, or None for a dense block."""
    found = _fused_experts(block)
    if found is None:
        return None
    path, experts, e = found
    moe_path = _parent(path)
    parent = block.get_submodule(moe_path) if moe_path else block
    router_name, router = _router(parent, experts, e, moe_path or type(block).__name__)
    router_owner = parent.get_submodule(router_name.split(".")[0])  # the sibling holding the router
    weights = [_join(path, n) for n, p in experts.named_parameters(recurse=False) if p.dim() == 3]
    paths = {"experts": path, "router": _join(moe_path, router_name), "expert_parameters": tuple(weights),
             "shared": tuple(_join(moe_path, s) for s in _shared_linears(parent, {id(experts), id(router_owner)}))}
    return BlockMoe(experts, router, paths, e, _top_k(router, config))


def block_moes(blocks: nn.ModuleList, config=None) -> list[BlockMoe | None]:
    return [find_block_moe(b, config) for b in blocks]


def moe_layout(model: nn.Module) -> MoeLayout | None:
    """The model's MoE layout (None for a dense model). All MoE blocks must share one layout."""
    from .architectures import get_blocks, hf_model

    inner = hf_model(model)
    found = [(i, m) for i, m in enumerate(block_moes(get_blocks(inner), getattr(inner, "config", None))) if m]
    if not found:
        return None
    first = found[0][1]
    odd = [i for i, m in found if (m.paths, m.num_experts, m.top_k) != (first.paths, first.num_experts, first.top_k)]
    if odd:
        raise ArchitectureError(f"MoE blocks {odd} differ in layout from block {found[0][0]}; inflora needs one layout")
    return MoeLayout(**first.paths, num_experts=first.num_experts, top_k=first.top_k,
                     blocks=tuple(i for i, _ in found))
