"""Fused q/k/v layouts (``ArchSpec.qkv_layout``): the q, k and v features of each family's fused
projection, checked against the query, key and value the model itself hands to its attention
function (captured through transformers' attention interface), or, for Bloom, which has its own
attention code, against the model's own split of the fused output (``_reshape``). One token at position 0, so rotary
embeddings are the identity and q and k are the projection's output as is."""

import pytest
import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from typer.testing import CliRunner

from inflora.cli import app
from inflora.models import arch_for, get_blocks, set_tower, tiny_model
from inflora.models.spec import QKVLayout

CAPTURED: list[dict] = []


def _capture(module, query, key, value, attention_mask=None, **kwargs):
    CAPTURED.append({"q": query, "k": key, "v": value})
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("inflora_capture", _capture)

FAMILIES = {  # name -> (family, config overrides, layout source expected)
    "gpt2": ("gpt2", {}, "gpt2: [q|k|v] blocks"),
    "gpt_neox": ("gpt_neox", {}, "gpt_neox: interleaved per head"),
    "phi3": ("phi3", {"num_key_value_heads": 2}, "phi3: [q|k|v] blocks"),
    "falcon-multi-query": ("falcon", {}, "falcon (multi-query): [q|k|v] blocks"),
    "falcon-per-head": ("falcon", {"multi_query": False, "num_kv_heads": 4}, "falcon: interleaved per head"),
    "falcon-new-arch": (
        "falcon",
        {"new_decoder_architecture": True, "multi_query": False, "num_kv_heads": 2},
        "falcon new architecture: per key/value group",
    ),
}


def _projection_output(model, spec, x_ids) -> torch.Tensor:
    """The fused projection's output for block 0, [batch, features] (one token)."""
    seen = {}
    proj = get_blocks(model)[0].get_submodule(spec.query)
    handle = proj.register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach()))
    with torch.no_grad():
        model(input_ids=x_ids)
    handle.remove()
    return seen["out"][:, 0, :]


def _heads_flat(t: torch.Tensor) -> torch.Tensor:
    """[batch, heads, 1, head_dim] -> [batch, heads * head_dim] in head order."""
    return t[:, :, 0, :].reshape(t.shape[0], -1)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_q_k_v_features_are_what_the_model_feeds_its_attention(name):
    family, overrides, source = FAMILIES[name]
    model = tiny_model(family, task="causal-lm", **overrides).eval()
    spec = arch_for(model)
    layout = spec.qkv_layout
    assert spec.fused_qkv and layout is not None and layout.source == source
    model.set_attn_implementation("inflora_capture")
    ids = torch.tensor([[5], [17]])
    CAPTURED.clear()
    fused = _projection_output(model, spec, ids)
    first = CAPTURED[0]  # block 0
    for role in ("q", "k", "v"):
        torch.testing.assert_close(fused[:, layout.indices(role)], _heads_flat(first[role]), rtol=0, atol=0)


def test_bloom_per_head_layout_matches_its_own_split():
    """Bloom's attention (ALiBi through ``baddbmm``) does not go through the attention interface."""
    model = tiny_model("bloom", task="causal-lm").eval()
    spec = arch_for(model)
    layout = spec.qkv_layout
    assert layout.source == "bloom: interleaved per head" and layout.groups == model.config.n_head
    attention = get_blocks(model)[0].self_attention
    fused = torch.randn(2, 1, layout.width)
    split = getattr(attention, "_reshape", None) or attention._split_heads  # its name varies by version
    q, k, v = split(fused)
    for role, ours in zip("qkv", (q, k, v)):
        torch.testing.assert_close(fused[:, 0, layout.indices(role)], _heads_flat(ours), rtol=0, atol=0)


def test_the_qwen2_vl_vision_tower_layout_matches_its_attention():
    """The vision blocks' attention called directly (its inputs need no image processor): one
    sequence of 3 patches with identity rotary (cos 1, sin 0)."""
    model = tiny_model("qwen2_vl", task="causal-lm").eval()
    spec = set_tower(model, "vision")
    layout = spec.qkv_layout
    assert layout.source == "qwen2_vl: [q|k|v] blocks"
    attention = get_blocks(model)[0].get_submodule(spec.query.rpartition(".")[0])
    attention.config._attn_implementation = "inflora_capture"
    x = torch.randn(3, attention.qkv.in_features, generator=torch.Generator().manual_seed(0))
    identity = (torch.ones(3, layout.head_dim), torch.zeros(3, layout.head_dim))
    CAPTURED.clear()
    with torch.no_grad():
        attention(x, cu_seqlens=torch.tensor([0, 3]), position_embeddings=identity)
        fused = attention.qkv(x)
    for role in ("q", "k", "v"):
        theirs = CAPTURED[0][role][0].transpose(0, 1).reshape(3, -1)  # [1, heads, 3, d] -> [3, heads * d]
        torch.testing.assert_close(fused[:, layout.indices(role)], theirs, rtol=0, atol=0)


def test_slices_merge_contiguous_heads_and_cover_the_width_once():
    grouped = QKVLayout("rows", head_dim=2, groups=2, pattern=("q", "q", "k", "v"), source="t")
    assert grouped.slices("q") == [slice(0, 4), slice(8, 12)] and grouped.slices("v") == [slice(6, 8), slice(14, 16)]
    assert sorted(i for r in "qkv" for i in grouped.indices(r)) == list(range(grouped.width))


def test_info_prints_the_fused_layout_and_says_when_it_is_assumed():
    runner = CliRunner()
    res = runner.invoke(app, ["info", "--model", "tiny-gpt_neox"])
    assert res.exit_code == 0 and "fused q/k/v rows 4 groups of [q,k,v] x 8" in res.output
    res = runner.invoke(app, ["info", "--model", "tiny-gpt2"])
    assert "fused q/k/v columns q 0:32 | k 32:64 | v 64:96" in res.output
    res = runner.invoke(app, ["info", "--model", "tiny-modernbert"])
    assert "assumed" in res.output
