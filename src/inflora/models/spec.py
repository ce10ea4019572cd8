"""What inflora needs to know about a model's layout: the ``ArchSpec`` (discovered or a table row).

Paths are dotted attribute paths; ``blocks`` and ``embeddings`` are relative to
``model.base_model`` and the others relative to one block. The feed-forward layout is ``ffn_up``
(and ``ffn_gate`` in gated families: h = act(gate x) * up x) into the hidden units, and
``ffn_down`` out of them; the units h are always ``ffn_down``'s input, so every family's FFN
activations can be read the same way (ReDo, the dormant diagnostic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from torch import nn


@dataclass(frozen=True)
class MoESpec:
    """Where a mixture-of-experts FFN keeps its parts, relative to one block (plain paths, so the
        expert metrics and expert LoRA can address them). ``blocks`` are the block indices that are MoE
        (DeepSeek-V3 keeps its first blocks dense). Found by ``models.moe.discover_moe``, the one MoE
    discovery; ``models.moe.moe_layout`` re-reads it for the probe, LoRA and exports."""

    module: str  # e.g. mlp
    router: str | None  # e.g. mlp.gate (weight [E, H])
    experts: str  # e.g. mlp.experts
    expert_parameters: tuple[str, ...] = ()  # fused 3-D parameters of ``experts`` (gate_up_proj, down_proj)
    shared_experts: str | None = None  # e.g. mlp.shared_experts (an ordinary MLP beside the routed ones)
    num_experts: int = 0
    blocks: tuple[int, ...] = ()
    top_k: int = 0  # experts each token picks (router.top_k or config.num_experts_per_tok)
    shared: tuple[str, ...] = ()  # the shared experts' Linear paths (adapted by the ``mlp`` preset)


@dataclass(frozen=True)
class QKVLayout:
    """Which output features of a fused q/k/v weight are q, k and v (``models.qkv_layout``): rows of
    a Linear weight [out, in], columns of a Conv1D weight [in, out]. The output is ``groups`` groups
    of ``len(pattern)`` head-sized slots, slot i of each group holding role ``pattern[i]``."""

    axis: str  # "rows" | "columns"
    head_dim: int
    groups: int
    pattern: tuple[str, ...]  # e.g. ("q", "k", "v") per head, or ("q",) * H + ("k",) * G + ("v",) * G
    source: str  # how the layout is known (the family's rule, or assumed)

    @property
    def width(self) -> int:
        return self.groups * len(self.pattern) * self.head_dim

    def slices(self, role: str) -> list[slice]:
        """The features of ``role`` (q, k or v), as few contiguous slices as the layout allows, in
        the order the model reads its heads."""
        out: list[slice] = []
        size = len(self.pattern) * self.head_dim
        for g in range(self.groups):
            for i, r in enumerate(self.pattern):
                if r != role:
                    continue
                start = g * size + i * self.head_dim
                if out and out[-1].stop == start:
                    out[-1] = slice(out[-1].start, start + self.head_dim)
                else:
                    out.append(slice(start, start + self.head_dim))
        return out

    def indices(self, role: str) -> list[int]:
        return [i for s in self.slices(role) for i in range(s.start, s.stop)]

    def describe(self) -> str:
        """One line for ``inflora info``: the slices when few, else the repeating group."""
        parts = {r: self.slices(r) for r in ("q", "k", "v")}
        if all(len(v) == 1 for v in parts.values()):
            body = " | ".join(f"{r} {v[0].start}:{v[0].stop}" for r, v in parts.items())
        else:
            slots = ",".join(self.pattern) if len(self.pattern) <= 6 else f"{self.pattern.count('q')} q,k,v"
            body = f"{self.groups} groups of [{slots}] x {self.head_dim}"
        return f"{self.axis} {body} ({self.source})"


@dataclass(frozen=True)
class ArchSpec:
    family: str
    model_types: tuple[str, ...]
    blocks: str  # ModuleList of transformer blocks (relative to base_model)
    attention: str | None  # module whose output[map_index] is the attention map [B, H, Tq, Tk]
    query: str | None  # None (with attention, key, value, output): no softmax attention at all
    key: str | None
    value: str | None
    output: str | None  # attention output projection
    embeddings: tuple[str, ...]  # embedding modules (relative to base_model)
    ffn_up: str | None  # feed-forward input projection (into the hidden units); None: MoE only
    ffn_down: str | None  # feed-forward output projection (its input is the hidden units)
    ffn_gate: str | None = None  # gated FFNs (SwiGLU): the gate projection beside ffn_up
    causal: bool = False
    fused_qkv: bool = False  # one weight holds q, k and v (GPT-2's Conv1D c_attn, GPT-NeoX, Phi-3)
    maps_need_output_attentions: bool = False  # the module returns its map only when asked
    attention_interface: bool = True  # streaming entropy works: the attention interface with a plain masked softmax
    entropy_note: str | None = None  # why entropy is read from eager maps (soft-capping, sinks, ALiBi...)
    qkv_targets: tuple[str, ...] | None = None  # projections that make q/k/v where not q/k/v (latent attention)
    fused_gate_up: bool = False  # ffn_up holds the gate and up halves in one weight (Phi-3, ModernBERT)
    moe: MoESpec | None = None
    tower: str = "language"
    towers: tuple[str, ...] = ("language",)
    discovered: bool = False  # derived from the model (False: a verified row of the table)
    fused_conv1d: bool = field(default=False, compare=False)  # projections are Conv1D ([in, out] weights)
    attention_class: str | None = None  # discovered: the attention class (blocks holding another have none)
    attention_free_blocks: tuple[int, ...] = ()  # blocks without softmax attention (hybrids, state-space)
    block_targets: tuple[
        str, ...
    ] = ()  # attention-free blocks without a readable FFN (Mamba-2 mixers): their in/out projections
    map_index: int = 1  # where the eager map sits in the attention's output tuple (T5: -1, after its position bias)
    qkv_layout: QKVLayout | None = field(default=None, compare=False)  # fused q/k/v: which features are q, k, v

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Default LoRA targets: q/k/v (the fused projection where the family fuses them)."""
        if self.qkv_targets:
            return self.qkv_targets
        if self.query is None:  # no attention: the block's own projections
            return self.mlp_targets or self.block_targets
        return (self.query,) if self.fused_qkv else (self.query, self.key, self.value)

    @property
    def mlp_targets(self) -> tuple[str, ...]:
        """The feed-forward projections (gate, up, down where present), relative to one block;
        for MoE blocks with shared experts, the shared experts' projections too."""
        dense = tuple(p for p in (self.ffn_gate, self.ffn_up, self.ffn_down) if p)
        shared = self.shared_ffn_paths()
        return dense + tuple(p for p in shared if p not in dense)

    @property
    def ffn_inputs(self) -> tuple[str, ...]:
        """The projections whose output rows make the hidden units (up, plus gate where gated)."""
        return tuple(p for p in (self.ffn_gate, self.ffn_up) if p)

    @property
    def entropy_path(self) -> str:
        return "streaming" if self.attention_interface else "eager"

    def shared_ffn_paths(self) -> tuple[str, ...]:
        """The dense FFN paths re-rooted under the MoE's shared experts (empty without them)."""
        if not (self.moe and self.moe.shared_experts) or not self.ffn_down:
            return ()
        return tuple(
            f"{self.moe.shared_experts}.{p.split('.')[-1]}" for p in (self.ffn_gate, self.ffn_up, self.ffn_down) if p
        )

    @property
    def base_family(self) -> str:
        return self.family.split(":")[0]

    def to_dict(self) -> dict:
        """Plain JSON values, without ``family`` (diagnosis.json records it beside): the layout a
        diagnosis used, so what is built from it later needs no lookup of the family."""
        return _plain({k: v for k, v in asdict(self).items() if k != "family"})

    @classmethod
    def from_dict(cls, family: str, data: dict) -> "ArchSpec":
        """``to_dict`` read back (checked first: ``diagnosis_schema.StructureSection``)."""
        values = {**_tuples(cls, data), "family": family}
        if values.get("moe") is not None:
            values["moe"] = MoESpec(**_tuples(MoESpec, values["moe"]))
        if values.get("qkv_layout") is not None:
            values["qkv_layout"] = QKVLayout(**_tuples(QKVLayout, values["qkv_layout"]))
        return cls(**values)


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _tuples(cls, data: dict) -> dict:
    """JSON lists back into the tuples a frozen spec holds (``cls``'s tuple fields)."""
    tuple_fields = {f.name for f in fields(cls) if "tuple" in str(f.type)}
    return {k: tuple(v) if k in tuple_fields and v is not None else v for k, v in data.items()}


@dataclass(frozen=True)
class FFN:
    """One block's feed-forward modules: ``inputs`` make the hidden units, ``down`` consumes them."""

    inputs: tuple[nn.Module, ...]
    down: nn.Module
