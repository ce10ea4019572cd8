import pytest
import torch

from inflora.errors import ArchitectureError, ConfigError
from inflora.models import (
    arch_for,
    ensure_eager_attention,
    get_attention,
    get_blocks,
    get_ffn,
    load_model,
    parameter_groups,
    tiny_model,
)
from inflora.models.tiny import TINY_FAMILIES


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_table_locates_blocks_attention_and_projections(family):
    model = tiny_model(family, layers=3)
    spec = arch_for(model)
    blocks = get_blocks(model)
    assert len(blocks) == 3
    for name in spec.lora_targets + (spec.output,):
        assert isinstance(blocks[0].get_submodule(name), torch.nn.Module)
    maps = []
    get_attention(blocks[1], spec).register_forward_hook(lambda m, i, o: maps.append(o[1]))
    ids = torch.randint(5, 1000, (2, 6))
    kw = {"output_attentions": True} if spec.maps_need_output_attentions else {}
    model(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    assert maps and maps[0].shape == (2, 4, 6, 6)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 6))
    groups = parameter_groups(model)
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in groups.values() for _, p in g) == total
    assert all(groups[f"block.{i}"] for i in range(3)) and groups["embeddings"]


MLP_NAMES = {
    "bert": ("intermediate.dense", "output.dense"),
    "distilbert": ("ffn.lin1", "ffn.lin2"),
    "mpnet": ("intermediate.dense", "output.dense"),
    "gpt2": ("mlp.c_fc", "mlp.c_proj"),
    "llama": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_table_locates_the_ffn_and_its_hidden_units(family):
    """The FFN units are ffn_down's input: intermediate-sized, and act(gate x) * up x where gated."""
    model = tiny_model(family, layers=1)
    spec = arch_for(model)
    if family in MLP_NAMES:
        assert spec.mlp_targets == MLP_NAMES[family]
    block = get_blocks(model)[0]
    ffn = get_ffn(block, spec)
    seen = {}
    ffn.down.register_forward_pre_hook(lambda m, args: seen.__setitem__("h", args[0]))
    for name, mod in zip(("gate", "up") if spec.ffn_gate else ("up",), ffn.inputs):
        mod.register_forward_hook(lambda m, a, o, name=name: seen.__setitem__(name, o))
    ids = torch.randint(5, 1000, (2, 6))
    model(input_ids=ids, attention_mask=torch.ones_like(ids))
    width = 128 if family == "gpt2" else 64  # GPT-2's inner size is 4 * hidden, the others' 2 * hidden
    assert seen["h"].shape == (2, 6, width) and seen["up"].shape == (2, 6, width)
    if spec.ffn_gate:
        torch.testing.assert_close(seen["h"], torch.nn.functional.silu(seen["gate"]) * seen["up"])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_lm_families(family):
    model = tiny_model(family, task="causal-lm")
    assert arch_for(model).causal and len(get_blocks(model)) == 4


def test_unknown_family_is_one_clear_error():
    with pytest.raises(ArchitectureError, match="unknown model type 'no-such-family'"):
        arch_for("no-such-family")
    with pytest.raises(ArchitectureError, match="unsupported architecture 'Linear'"):
        arch_for(torch.nn.Linear(2, 2))


def test_unknown_model_path_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="no-such-model"):
        load_model(str(tmp_path / "no-such-model"))


def test_switch_to_eager_from_sdpa(caplog):
    model = tiny_model("bert")
    model.set_attn_implementation("sdpa")
    with caplog.at_level("WARNING"):
        assert ensure_eager_attention(model) is True
    assert "eager" in caplog.text and model.config._attn_implementation == "eager"
    assert ensure_eager_attention(model) is False


@pytest.mark.real
def test_real_minilm(minilm):
    model, tok = minilm
    spec = arch_for(model)
    assert spec.family == "bert" and len(get_blocks(model)) == 6
    assert model.config.hidden_size == 384 and model.config._attn_implementation == "eager"
    n = sum(p.numel() for p in model.parameters())
    assert 22_000_000 < n < 23_500_000
    batch = tok(["a gorgeous film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
