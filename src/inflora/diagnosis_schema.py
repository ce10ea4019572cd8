"""What a ``diagnosis.json`` may hold. Diagnosis files are shared between people (that is what
``inflora export`` is for), so ``Diagnosis.from_json`` treats one as untrusted: known keys only,
JSON types as ``Diagnosis.to_json`` writes them, names without line breaks or control characters,
module names that are module names, and a band inside the model."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .models import ARCHITECTURES
from .strategies.lora import MODULE_NAME, TASK_TYPES


# diagnosis.json's layout; a reader refuses a newer one instead of misreading it. 2: SKI only in the
# top-level ``ski`` (not in each layer row), stability only in the top-level ``stability`` (not in
# ``selection``), and the model's layout in ``structure``; version 1 files are read through
# ``from_version_1`` (without a structure, exports look the family up as version 1 did).
FORMAT_VERSION = 2


def from_version_1(data: dict) -> dict:
    """A version-1 file (checked) in today's layout: each fact once. Version 1 wrote SKI into every
    layer row beside the top-level ``ski`` and the stability into ``selection`` beside the top-level
    ``stability``, the same numbers twice; the top-level lists are kept."""
    layers = [{k: v for k, v in row.items() if k != "ski"} for row in data["layers"]]
    selection = {k: v for k, v in data["selection"].items() if k != "stability"}
    return {**data, "layers": layers, "selection": selection, "format_version": FORMAT_VERSION}


def _one_line(text: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 or ch in "\u2028\u2029\x85" for ch in text):
        raise ValueError("holds a line break or control character")
    if len(text) > 1000:
        raise ValueError("is longer than 1000 characters")
    return text


def _module(text: str) -> str:
    if not MODULE_NAME.fullmatch(text):
        raise ValueError(f"{text[:60]!r} is not a module name (letters, digits, _ . -)")
    return text


def _family(text: str) -> str:
    """A table family or any model type transformers knows (families are discovered), with an
    optional ``:tower`` (``qwen2_vl:vision``)."""
    from transformers import CONFIG_MAPPING

    name, _, tower = text.partition(":")
    known = {spec.family for spec in ARCHITECTURES}
    if name not in known and name not in CONFIG_MAPPING:
        raise ValueError(
            f"unknown model family {name[:60]!r}: neither a table family ({', '.join(sorted(known))}) "
            "nor a transformers model type"
        )
    if tower and tower not in ("language", "vision"):
        raise ValueError(f"unknown tower {tower[:30]!r}; choose one of language, vision")
    return text


def _task_type(text: str) -> str:
    if text not in TASK_TYPES:
        raise ValueError(f"unknown task type; choose one of {', '.join(TASK_TYPES)}")
    return text


OneLine = Annotated[str, AfterValidator(_one_line)]
Module = Annotated[str, AfterValidator(_module)]
Number = Optional[float]  # null: NaN (JSON has none)
Cell = Union[None, bool, int, float, str, list[Number]]


class MoeSection(BaseModel):
    """``models.moe.MoeLayout.to_dict``: its names become PEFT ``target_parameters`` in exports."""

    model_config = ConfigDict(extra="forbid", strict=True)
    experts: Module
    router: Module
    expert_parameters: list[Module]
    shared: list[Module]
    num_experts: Annotated[int, Field(ge=1)]
    top_k: Annotated[int, Field(ge=1)]
    blocks: list[Annotated[int, Field(ge=0)]]


Index = Annotated[int, Field(ge=0)]
Tower = Literal["language", "vision"]


class MoESpecSection(BaseModel):
    """``models.spec.MoESpec`` as ``ArchSpec.to_dict`` writes it."""

    model_config = ConfigDict(extra="forbid", strict=True)
    module: Module
    router: Optional[Module]
    experts: Module
    expert_parameters: list[Module] = []
    shared_experts: Optional[Module] = None
    num_experts: Index = 0
    blocks: list[Index] = []
    top_k: Index = 0
    shared: list[Module] = []


class QKVLayoutSection(BaseModel):
    """``models.spec.QKVLayout``: which features of a fused q/k/v weight are q, k and v."""

    model_config = ConfigDict(extra="forbid", strict=True)
    axis: Literal["rows", "columns"]
    head_dim: Annotated[int, Field(ge=1, le=1_000_000)]
    groups: Annotated[int, Field(ge=1, le=1_000_000)]
    pattern: Annotated[list[Literal["q", "k", "v"]], Field(min_length=1, max_length=100_000)]
    source: OneLine


class StructureSection(BaseModel):
    """``models.spec.ArchSpec.to_dict``: the layout the probe used. Its paths become LoRA targets
    and PEFT's ``layers_pattern`` in exports, so each must be a module name. Defaults are
    ``ArchSpec``'s, so a file written before a field was added still reads."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model_types: list[OneLine]
    blocks: Module
    attention: Optional[Module]
    query: Optional[Module]
    key: Optional[Module]
    value: Optional[Module]
    output: Optional[Module]
    embeddings: list[Module]
    ffn_up: Optional[Module]
    ffn_down: Optional[Module]
    ffn_gate: Optional[Module] = None
    causal: bool = False
    fused_qkv: bool = False
    maps_need_output_attentions: bool = False
    attention_interface: bool = True
    entropy_note: Optional[OneLine] = None
    qkv_targets: Optional[list[Module]] = None
    fused_gate_up: bool = False
    moe: Optional[MoESpecSection] = None
    tower: Tower = "language"
    towers: list[Tower] = ["language"]
    discovered: bool = False
    fused_conv1d: bool = False
    attention_class: Optional[OneLine] = None
    attention_free_blocks: list[Index] = []
    block_targets: list[Module] = []
    map_index: int = 1
    qkv_layout: Optional[QKVLayoutSection] = None


class DiagnosisFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: OneLine
    family: Annotated[str, AfterValidator(_family)]
    num_layers: Annotated[int, Field(ge=1, le=10_000)]
    layers: list[dict[str, Cell]]
    inflection_layers: list[int]
    ski: list[Number]
    entropy_term: list[Number]
    grad_term: list[Number]
    peaks: list[int]
    stability: list[Number]
    selection: dict[str, Any]
    groups: dict[str, Any]
    lora_targets: list[Module]
    config: dict[str, Any]
    versions: dict[str, OneLine] = {}
    flags: list[str] = []
    rules: dict[str, Any] = {}
    task_type: Annotated[str, AfterValidator(_task_type)] = "classification"
    head_modules: list[Module] = []
    output: dict[str, Any] = {}
    moe: Optional[MoeSection] = None  # {} (a dense model) is read as None
    structure: Optional[StructureSection] = None  # absent before version 2: the family is looked up
    format_version: Annotated[int, Field(ge=1)] = 1

    @field_validator("format_version")
    @classmethod
    def _not_newer_than_this_reader(cls, version: int):
        if version > FORMAT_VERSION:
            raise ValueError(
                f"format version {version} was written by a newer inflora (this one reads up to "
                f"{FORMAT_VERSION}); upgrade inflora"
            )
        return version

    @model_validator(mode="after")
    def _each_fact_once(self):
        """From version 2 on, SKI and the stability are written once (see ``from_version_1``)."""
        if self.format_version >= 2 and any("ski" in row for row in self.layers):
            raise ValueError("layer rows hold 'ski', which a version-2 file keeps only in the top-level ski")
        if self.format_version >= 2 and "stability" in self.selection:
            raise ValueError(
                "selection holds 'stability', which a version-2 file keeps only in the top-level stability"
            )
        return self

    @model_validator(mode="after")
    def _layout_of_the_named_tower(self):
        """The recorded layout is that of the tower the family names (``qwen2_vl:vision``)."""
        tower = self.family.partition(":")[2] or "language"
        if self.structure is not None and self.structure.tower != tower:
            raise ValueError(
                f"structure is the {self.structure.tower} tower's layout but family {self.family!r} "
                f"names the {tower} tower"
            )
        return self

    @field_validator("moe", "structure", mode="before")
    @classmethod
    def _empty_section_is_none(cls, value):
        return None if value == {} else value

    @field_validator("layers")
    @classmethod
    def _one_row_per_layer(cls, rows, info: ValidationInfo):
        depth = info.data.get("num_layers")
        if depth is not None and len(rows) != depth:
            raise ValueError(f"{len(rows)} rows for num_layers {depth}")
        return rows

    @field_validator("inflection_layers", "peaks")
    @classmethod
    def _inside_the_model(cls, layers, info: ValidationInfo):
        depth = info.data.get("num_layers")
        outside = [i for i in layers if depth is not None and not 0 <= i < depth]
        if outside:
            raise ValueError(f"layers {outside[:5]} are outside the model's 0..{depth - 1}")
        return layers

    @field_validator("selection")
    @classmethod
    def _rule_is_a_name(cls, selection):
        if not isinstance(selection.get("rule", ""), str):
            raise ValueError("rule is not a rule name")
        return selection
