"""Discovery: the ArchSpec derived from the model agrees with every verified row of the override
table, finds fused, latent and MoE layouts, picks the tower asked for, and fails by naming what it
looked for."""

import pytest
import torch
from typer.testing import CliRunner

from inflora.cli import app
from inflora.errors import ArchitectureError, ConfigError
from inflora.models import ARCHITECTURES, arch_for, get_attention, get_blocks, get_ffn, set_tower, tiny_model
from inflora.models.architectures import base_model
from inflora.models.discovery import discover
from inflora.strategies import inject_lora
from inflora.strategies.lora import lora_config

FIELDS = (
    "blocks",
    "attention",
    "query",
    "key",
    "value",
    "output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "causal",
    "fused_qkv",
    "attention_interface",
)


@pytest.mark.parametrize("spec", ARCHITECTURES, ids=[s.family for s in ARCHITECTURES])
def test_discovery_agrees_with_every_verified_row(spec):
    for kind in spec.model_types:
        model = tiny_model(kind, layers=2, task="causal-lm" if spec.causal else "classification")
        found = discover(model, base_model(model))
        assert found.discovered and not spec.discovered
        assert {f: getattr(found, f) for f in FIELDS} == {f: getattr(spec, f) for f in FIELDS}, kind
        assert set(spec.embeddings) <= set(found.embeddings)


@pytest.mark.parametrize(
    "family,expect",
    [
        ("phi3", dict(query="self_attn.qkv_proj", fused_qkv=True, ffn_up="mlp.gate_up_proj", fused_gate_up=True)),
        ("gpt_neox", dict(query="attention.query_key_value", fused_qkv=True, fused_conv1d=False)),
        ("deepseek_v3", dict(qkv_targets=("self_attn.q_proj", "self_attn.kv_a_proj_with_mqa", "self_attn.kv_b_proj"))),
        ("gemma2", dict(attention_interface=False)),
        ("bloom", dict(attention_interface=False)),
    ],
)
def test_fused_latent_and_non_plain_softmax_layouts(family, expect):
    spec = arch_for(tiny_model(family, layers=2, task="causal-lm"))
    assert {k: getattr(spec, k) for k in expect} == expect
    assert spec.attention_interface or spec.entropy_note  # eager always says why


def test_moe_blocks_record_router_experts_and_shared_experts():
    deepseek = tiny_model("deepseek_v3", task="causal-lm")
    moe = arch_for(deepseek).moe
    assert moe.blocks == (1, 2, 3) and moe.router == "mlp.gate" and moe.shared_experts == "mlp.shared_experts"
    block = get_blocks(deepseek)[1]
    assert block.get_submodule(moe.experts).gate_up_proj.dim() == 3 and moe.expert_parameters == (
        "gate_up_proj",
        "down_proj",
    )
    assert get_ffn(block, arch_for(deepseek)).down is block.get_submodule("mlp.shared_experts.down_proj")
    assert get_ffn(get_blocks(deepseek)[0], arch_for(deepseek)).down is get_blocks(deepseek)[0].mlp.down_proj
    mixtral = tiny_model("mixtral", task="causal-lm")  # no shared experts: no dense FFN in any block
    assert arch_for(mixtral).moe.num_experts == 4 and get_ffn(get_blocks(mixtral)[0], arch_for(mixtral)) is None


def _adapted(peft_model) -> set[str]:
    return {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if "lora_A" in n}


def test_tower_picks_the_block_list_and_peft_adapts_only_that_tower():
    model = tiny_model("qwen2_vl", task="causal-lm")
    assert arch_for(model).blocks == "language_model.layers" and arch_for(model).towers == ("language", "vision")
    language = _adapted(inject_lora(model, [1], r=2))
    assert language and all(".language_model.layers.1." in n for n in language)
    vision_model = tiny_model("qwen2_vl", task="causal-lm")
    spec = set_tower(vision_model, "vision")
    assert spec.blocks == "visual.blocks" and spec.family == "qwen2_vl:vision"
    assert lora_config(spec, [0]).layers_pattern == "visual.blocks"
    vision = _adapted(inject_lora(vision_model, [0], r=2))
    assert vision and all(".visual.blocks.0." in n for n in vision)


def test_a_tower_the_model_lacks_and_a_model_without_attention_fail_by_name():
    with pytest.raises(ArchitectureError, match="LlamaForCausalLM has no vision tower; it has: language"):
        set_tower(tiny_model("llama", task="causal-lm"), "vision")
    with pytest.raises(ConfigError, match="unknown tower 'audio'; choose one of language, vision"):
        set_tower(tiny_model("llama", task="causal-lm"), "audio")
    with pytest.raises(
        ArchitectureError,
        match="SqueezeBertModule: the attention module 'attention' holds no Linear "
        "projection; to support it, add an ArchSpec row .*ARCHITECTURES",
    ):
        arch_for(tiny_model("squeezebert", layers=2))  # convolutional q/k/v: not read, and said so


def test_state_space_and_hybrid_models_get_no_attention_and_say_so():
    mamba = arch_for(tiny_model("mamba", layers=2, task="causal-lm"))
    assert mamba.attention is None and mamba.attention_free_blocks == (0, 1)
    assert mamba.lora_targets == ("mixer.in_proj", "mixer.out_proj") and "entropy does not apply" in mamba.entropy_note
    hybrid = tiny_model("qwen3_next", task="causal-lm")  # linear-attention blocks beside softmax ones
    spec = arch_for(hybrid)
    assert spec.attention == "self_attn" and spec.attention_free_blocks
    assert [get_attention(b, spec) is None for b in get_blocks(hybrid)] == [
        i in spec.attention_free_blocks for i in range(len(get_blocks(hybrid)))
    ]
    with pytest.raises(ArchitectureError, match="unsupported architecture 'Linear': not a transformers model"):
        arch_for(torch.nn.Linear(2, 2))


def test_cli_info_prints_the_discovered_structure_and_bad_towers_are_one_line():
    runner = CliRunner()
    res = runner.invoke(app, ["info", "--model", "tiny-deepseek_v3"])
    assert res.exit_code == 0, res.output
    assert "kv_a_proj_with_mqa" in res.output and "shared mlp.shared_experts" in res.output
    res = runner.invoke(app, ["info", "--model", "tiny-llama", "--tower", "vision"])
    assert res.exit_code == 2 and "error: LlamaForCausalLM has no vision tower" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("family", ["phi3", "modernbert"])
def test_redo_recycles_both_halves_of_a_fused_gate_up(family):
    """Unit i of a fused gate/up FFN owns rows i and units + i of the fused weight."""
    from inflora.remedies.redo import recycle, transformer_units

    model = tiny_model(family, layers=1, task="classification")
    unit = transformer_units(model)[0]
    (fused,) = unit.incoming
    before = fused.weight.detach().clone()
    units = unit.next.weight.shape[1]
    dead = torch.zeros(units, dtype=torch.bool)
    dead[[0, 5]] = True
    assert recycle(unit, dead) == 2
    changed = (fused.weight != before).any(1).nonzero().flatten().tolist()
    assert changed == [0, 5, units, units + 5]
    assert not unit.next.weight[:, dead].any()


def test_vision_tower_export_names_the_vision_blocks_and_diagnosis_needs_images(tmp_path, tokenizer, data_dir):
    from peft import LoraConfig, get_peft_model

    from inflora.data import load_task
    from inflora.diagnosis import diagnose
    from inflora.export import export_config
    from inflora.strategies import count_parameters

    val = load_task("rt-instruct", "validation", data_dir)
    d = diagnose(
        tiny_model("qwen2_vl", task="causal-lm"),
        val,
        tokenizer,
        batches=1,
        batch_size=4,
        max_length=32,
        progress=False,
        resamples=2,
    )
    d.model, d.family, d.inflection_layers = "tiny-qwen2_vl", "qwen2_vl:vision", [1]  # a band of vision blocks
    d.structure = arch_for("qwen2_vl:vision").to_dict()  # ... and the layout of that tower
    done = export_config(d, "peft", tmp_path / "peft", model="tiny-qwen2_vl", r=2)
    loaded = LoraConfig.from_pretrained(str(done.path))
    assert loaded.layers_pattern == "visual.blocks" and sum(done.matched.values()) == 1
    peft_model = get_peft_model(tiny_model("qwen2_vl", task="causal-lm"), loaded)
    assert _adapted(peft_model) and all(".visual.blocks.1." in n for n in _adapted(peft_model))
    assert count_parameters(peft_model)[0] > 0
    with pytest.raises(ConfigError, match="vision tower of qwen2_vl needs image inputs"):
        diagnose(
            tiny_model("qwen2_vl", task="causal-lm"),
            val,
            tokenizer,
            batches=1,
            batch_size=4,
            max_length=32,
            progress=False,
            tower="vision",
        )


def test_a_decoder_block_with_cross_attention_is_read_at_its_self_attention():
    """Blenderbot/Marian/Pegasus causal LMs: the block holds ``self_attn`` then ``encoder_attn``;
    the cross-attention never runs without an encoder, so the probe must read ``self_attn``."""
    model = tiny_model("blenderbot", layers=2, task="causal-lm")
    spec = arch_for(model)
    assert hasattr(get_blocks(model)[0], "encoder_attn")
    assert (spec.attention, spec.query, spec.causal) == ("self_attn", "self_attn.q_proj", True)


@pytest.mark.parametrize(
    "family,query,key",
    [
        ("ctrl", "multi_head_attention.Wq", "multi_head_attention.Wk"),  # upper-case names
        ("moshi", "self_attn.q_proj.linear", "self_attn.k_proj.linear"),  # the Linear one level down
    ],
)
def test_projection_roles_read_through_case_and_wrapper_names(family, query, key):
    spec = arch_for(tiny_model(family, layers=2, task="causal-lm"))
    assert (spec.query, spec.key) == (query, key)
