"""Mixture-of-experts: the router and fused experts found from each block, router load/entropy and
per-expert gradient norms against slow references and against the model's own router logits, expert
LoRA through PEFT ``target_parameters`` on band *blocks*, exports that reload to the same trainable
count, and ``--lora-targets experts`` refused on a dense model."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from _moe import MOE_FAMILIES, save_tiny_moe, tiny_moe
from inflora.cli import app
from inflora.errors import ConfigError, DataError
from inflora.metrics.moe import expert_grad_norms, router_sums
from inflora.models import tiny_model
from inflora.models.moe import MoeLayout, moe_layout
from inflora.probe import LayerProbe
from inflora.strategies import count_parameters, inject_lora


# ---------------------------------------------------------------- slow references (loops, from the definitions)
def expert_grad_norms_reference(grads, num_experts):
    out = []
    for e in range(num_experts):
        sq = 0.0
        for g in grads:
            if g is not None:
                sq += sum(float(v) ** 2 for v in g[e].reshape(-1).tolist())
        out.append(math.sqrt(sq))
    return out


def router_reference(logits, picks, mask):
    """Per-expert picks, token count, mean entropy of softmax(logits) over the kept tokens."""
    e = logits.shape[1]
    counts, tokens, ent = [0] * e, 0, 0.0
    for row, chosen, keep in zip(logits.tolist(), picks.tolist(), mask.reshape(-1).tolist()):
        if not keep:
            continue
        tokens += 1
        z = sum(math.exp(v) for v in row)
        ent -= sum(math.exp(v) / z * (v - math.log(z)) for v in row)
        for c in chosen:
            counts[c] += 1
    return counts, tokens, ent / tokens


def test_expert_grad_norms_match_the_reference():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 6, 5, generator=g), torch.randn(4, 3, generator=g), None]
    assert torch.allclose(
        expert_grad_norms(grads, 4), torch.tensor(expert_grad_norms_reference(grads, 4), dtype=torch.float64), rtol=1e-6
    )


def test_router_sums_match_the_reference():
    g = torch.Generator().manual_seed(1)
    logits, mask = 3 * torch.randn(2 * 7, 5, generator=g), torch.ones(2, 7)
    mask[0, 5:] = 0
    picks = logits.topk(2, dim=-1).indices
    s = router_sums(logits, picks, mask)
    counts, tokens, entropy = router_reference(logits, picks, mask)
    assert s["picks"].tolist() == counts and float(s["tokens"]) == tokens == 12
    assert math.isclose(float(s["entropy_sum"]) / tokens, entropy, rel_tol=1e-5)


# ---------------------------------------------------------------- discovery
@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_router_and_fused_experts_are_found_from_the_block(family):
    model = tiny_moe(family)
    layout = moe_layout(model)
    block = model.model.layers[0]
    experts = block.get_submodule(layout.experts)
    router = block.get_submodule(layout.router)
    e = model.config.num_experts if family == "qwen3_moe" else model.config.num_local_experts
    assert layout.num_experts == e and layout.top_k == model.config.num_experts_per_tok
    assert layout.blocks == tuple(range(model.config.num_hidden_layers))
    assert router.weight.shape == (e, model.config.hidden_size)
    assert {p.rpartition(".")[2] for p in layout.expert_parameters} == {"gate_up_proj", "down_proj"}
    assert all(
        block.get_parameter(p).shape[0] == e and block.get_parameter(p).dim() == 3 for p in layout.expert_parameters
    )
    assert experts is block.get_submodule(layout.expert_parameters[0].rpartition(".")[0])
    assert MoeLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


def test_shared_experts_are_found_beside_the_routed_ones():
    """Qwen2-MoE: a shared expert MLP (gate/up/down) and a one-output shared_expert_gate that is no expert."""
    import transformers as tf
    from transformers import AutoModelForCausalLM

    cfg = tf.Qwen2MoeConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=32,
        intermediate_size=64,
    )
    layout = moe_layout(AutoModelForCausalLM.from_config(cfg))
    assert layout.shared == ("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj")
    assert layout.router == "mlp.gate"
    peft_model = inject_lora(AutoModelForCausalLM.from_config(cfg), [1], targets="mlp", dropout=0.0, r=2)
    assert _adapted_parameters(peft_model) == [(1, "down_proj"), (1, "gate_up_proj")]
    wrapped = {n.split(".layers.")[1][: -len(".lora_A")] for n, _ in peft_model.named_modules() if n.endswith("lora_A")}
    assert {w for w in wrapped if "shared" in w} == {f"1.{p}" for p in layout.shared}


def test_a_dense_model_has_no_moe_layout_and_a_bad_file_layout_is_refused():
    assert moe_layout(tiny_model("llama", task="causal-lm")) is None
    with pytest.raises(DataError, match="moe layout is malformed"):
        MoeLayout.from_dict({"experts": "mlp.experts"})
    good = moe_layout(tiny_moe("mixtral")).to_dict()
    with pytest.raises(DataError, match="moe layout is malformed"):
        MoeLayout.from_dict({**good, "num_experts": "4"})


def test_moe_is_discovered_once_per_model_and_every_reader_agrees(monkeypatch):
    """One MoE discovery: ``arch_for`` walks the blocks once; the layout (LoRA, exports, diagnosis
    JSON) and the probe's per-block modules re-read ``ArchSpec.moe`` without walking them again."""
    from inflora.models import arch_for, get_blocks
    from inflora.models import discovery_moe
    from inflora.models.moe import spec_block_moes

    calls = []
    real = discovery_moe.find_block_moe
    monkeypatch.setattr(discovery_moe, "find_block_moe", lambda *a: calls.append(1) or real(*a))
    model = tiny_moe("qwen3_moe")
    spec = arch_for(model).moe
    layout, found = moe_layout(model), spec_block_moes(model, get_blocks(model))
    assert len(calls) == model.config.num_hidden_layers  # the blocks, walked once
    assert (layout.experts, layout.router, layout.blocks, layout.num_experts) == (
        spec.experts,
        spec.router,
        spec.blocks,
        spec.num_experts,
    )
    assert layout.expert_parameters == tuple(f"{spec.experts}.{n}" for n in spec.expert_parameters)
    for i, block in enumerate(get_blocks(model)):
        assert found[i].experts is block.get_submodule(spec.experts)
        assert found[i].router is block.get_submodule(spec.router)


def test_three_dimensional_weights_without_a_router_are_not_experts():
    """RecurrentGemma's RG-LRU gates are [heads, w, w] block-diagonal weights: no router beside them,
    so the model is dense (before, its 3-D gates were taken for 4 experts and diagnose failed)."""
    from inflora.models import arch_for

    model = tiny_model("recurrent_gemma", task="causal-lm", layers=2)
    assert any(p.dim() == 3 and p.shape[0] >= 2 for n, p in model.named_parameters() if "rg_lru" in n)
    assert arch_for(model).moe is None and moe_layout(model) is None


# ---------------------------------------------------------------- the probe against the model's own router
@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_probe_load_and_expert_grads_match_the_model(family):
    model = tiny_moe(family)
    ids = torch.randint(5, 200, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with LayerProbe(model, ["moe"]) as probe:
        out = model(input_ids=ids, attention_mask=mask, labels=ids, output_router_logits=True)
        out.loss.backward()
        probe.after_backward()
        rows = probe.layer_results()
    k, layout = model.config.num_experts_per_tok, moe_layout(model)
    for i, (row, logits) in enumerate(zip(rows, out.router_logits)):
        counts, tokens, entropy = router_reference(logits.detach(), logits.detach().topk(k, dim=-1).indices, mask)
        assert row["expert_load"] == pytest.approx([c / (tokens * k) for c in counts])
        assert row["router_entropy"] == pytest.approx(entropy, rel=1e-5)
        block = model.model.layers[i]
        grads = [p.grad for p in block.get_submodule(layout.experts).parameters(recurse=False)]
        assert row["expert_grad_norm"] == pytest.approx(
            expert_grad_norms_reference(grads, layout.num_experts), rel=1e-5
        )
        router_grad = math.sqrt(
            sum(float(p.grad.pow(2).sum()) for p in block.get_submodule(layout.router).parameters())
        )
        assert row["router_grad_norm"] == pytest.approx(router_grad, rel=1e-5)


# ---------------------------------------------------------------- expert LoRA on band blocks
def _adapted_parameters(peft_model) -> list[tuple[int, str]]:
    """(block index, parameter) of every fused parameter PEFT wrapped (ParamWrapper)."""
    out = []
    for name, module in peft_model.named_modules():
        if type(module).__name__ == "ParamWrapper" and hasattr(module, "parameter_name"):
            out.append((int(name.split(".layers.")[1].split(".")[0]), module.parameter_name))
    return sorted(out)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_expert_lora_adapts_only_the_band_blocks(family):
    """PEFT ignores layers_to_transform for target_parameters, so inflora names the band's blocks in
    them: band [2] adapts block 2's two fused weights, whatever the expert count."""
    peft_model = inject_lora(tiny_moe(family), [2], targets="experts", dropout=0.0, r=2)
    cfg = peft_model.peft_config["default"]
    assert cfg.layers_to_transform == [2]
    assert _adapted_parameters(peft_model) == [(2, "down_proj"), (2, "gate_up_proj")]
    trainable = {n.split(".layers.")[1].split(".")[0] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {"2"}


def test_all_adds_attention_modules_on_the_same_blocks():
    peft_model = inject_lora(tiny_moe("mixtral"), [0, 2], targets="all", dropout=0.0, r=2)
    blocks = {int(n.split(".layers.")[1].split(".")[0]) for n, p in peft_model.named_parameters() if p.requires_grad}
    assert blocks == {0, 2} and len(_adapted_parameters(peft_model)) == 4
    assert any(".self_attn.o_proj.lora_A" in n for n, _ in peft_model.named_parameters())


@pytest.mark.parametrize(
    "model,targets,dropout,match",
    [
        ("llama", "experts", 0.0, r"--lora-targets experts needs a mixture-of-experts model; this llama model"),
        ("mixtral", "experts", 0.1, r"cannot use dropout, got 0.1; pass --lora-dropout 0"),
    ],
)
def test_expert_targets_refused_where_they_cannot_work(model, targets, dropout, match):
    m = tiny_model(model, task="causal-lm") if model == "llama" else tiny_moe(model)
    with pytest.raises(ConfigError, match=match):
        inject_lora(m, [1], targets=targets, dropout=dropout)


def test_cli_experts_on_a_dense_model_is_an_error(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "--model",
            "tiny-llama",
            "--task",
            "rt-instruct",
            "--lora-targets",
            "experts",
            "--lora-dropout",
            "0",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --lora-targets experts needs a mixture-of-experts model")
    assert result.output.count("\n") == 1


# ---------------------------------------------------------------- diagnose + exports
@pytest.fixture(scope="module")
def moe_runs(tokenizer, data_dir, tmp_path_factory):
    """Per family: a saved tiny model folder and its diagnosis on rt-instruct (2 batches)."""
    from inflora.data import load_task
    from inflora.diagnosis import diagnose

    val = load_task("rt-instruct", "validation", data_dir)
    out = {}
    for family in MOE_FAMILIES:
        root = tmp_path_factory.mktemp(family)
        folder = save_tiny_moe(family, root / "model", tokenizer)
        d = diagnose(
            tiny_moe(family), val, tokenizer, batches=2, batch_size=8, max_length=48, progress=False, resamples=5
        )
        d.model, d.inflection_layers = folder, [1, 2]
        d.to_json(root / "diagnosis.json")
        out[family] = (folder, root / "diagnosis.json", d)
    return out


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_diagnose_reports_router_and_experts_per_block(moe_runs, family):
    d = moe_runs[family][2]
    assert d.moe["num_experts"] == 4 and d.moe["blocks"] == [0, 1, 2]
    for row in d.layers:
        assert len(row["expert_load"]) == 4 and sum(row["expert_load"]) == pytest.approx(1.0)
        assert 0 < row["router_entropy_norm"] <= 1 and row["expert_load_max_ratio"] >= 1
        assert len(row["expert_grad_norm"]) == 4 and all(v >= 0 for v in row["expert_grad_norm"])
        assert math.isfinite(row["router_grad_norm"]) and not any(k.startswith("dormant") for k in row)
    assert any("dormant FFN units are measured on dense blocks and on shared experts only" in f for f in d.flags)
    assert (family == "gpt_oss") == any("sink" in f for f in d.flags)


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("fmt", ["peft", "axolotl", "trl", "json"])
def test_expert_exports_reload_to_the_same_trainable_count(moe_runs, tmp_path, family, fmt):
    from peft import get_peft_model
    from test_export import load_back

    from inflora.diagnosis import Diagnosis
    from inflora.export import export_config

    folder, path, _ = moe_runs[family]
    d = Diagnosis.from_json(path)
    targets = "all" if fmt == "trl" else "experts"
    done = export_config(d, fmt, tmp_path / fmt, model=folder, targets=targets, r=4, dropout=0.0)
    assert sum(n for t, n in done.matched.items() if "experts" in t) == 2 * len(d.inflection_layers)
    loaded = load_back(fmt, done.path)
    if fmt == "axolotl":
        import yaml

        loaded.target_parameters = yaml.safe_load(done.path.read_text())["lora_target_parameters"]
    assert loaded.layers_to_transform == [1, 2]
    assert sorted(loaded.target_parameters) == sorted(
        f"layers.{i}.mlp.experts.{p}" for i in (1, 2) for p in ("gate_up_proj", "down_proj")
    )
    theirs = count_parameters(get_peft_model(tiny_moe(family), loaded))
    ours = count_parameters(inject_lora(tiny_moe(family), [1, 2], targets=targets, r=4, dropout=0.0))
    assert theirs == ours and ours[0] > 0


def test_cli_export_experts_of_a_dense_diagnosis_is_an_error(moe_runs, tmp_path):
    data = json.loads(moe_runs["mixtral"][1].read_text())
    data.update(moe={}, family="llama")
    path = tmp_path / "diagnosis.json"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(app, ["export", str(path), "--lora-targets", "experts", "--lora-dropout", "0"])
    assert result.exit_code == 2 and result.output.startswith("error: --lora-targets experts needs"), result.output


# ---------------------------------------------------------------- training
def _train(folder, tmp_path, **kw):
    from inflora.training import FinetuneConfig, finetune

    small = dict(
        task="rt-instruct",
        limit_train=64,
        limit_eval=32,
        batch_size=16,
        eval_batch_size=32,
        max_length=48,
        cka_examples=0,
        decontaminate_against=None,
        log_every=2,
        lr=1e-2,
        lora_targets=["experts"],
        lora_dropout=0.0,
        epochs=2,
        attn_implementation="eager",
    )
    return finetune(
        FinetuneConfig(model=folder, strategy="lora-inflection", **{**small, **kw}), tmp_path, progress=False
    )


def test_expert_lora_lowers_the_completion_loss(moe_runs, tmp_path):
    m = _train(moe_runs["qwen3_moe"][0], tmp_path, layers=[1, 2])
    before, after = m["completion_before"]["completion_loss"], m["completion"]["validation"]["completion_loss"]
    assert after < before - 0.05, (before, after)
    assert m["layers"] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_expert_lora_inflection_lowers_the_completion_loss(moe_runs, tmp_path, family):
    """The whole path: an on-the-fly diagnosis chooses the band, LoRA on its blocks' experts trains."""
    m = _train(moe_runs[family][0], tmp_path, diagnose_batches=2)
    before, after = m["completion_before"]["completion_loss"], m["completion"]["validation"]["completion_loss"]
    assert after < before - 0.05, (before, after)
    assert m["band_info"]["source"] == "on-the-fly" and m["layers"] == m["band"]


def test_report_and_cli_show_the_moe_table(moe_runs, tmp_path):
    from inflora.cli.diagnose import moe_table
    from inflora.reports import write_diagnosis_report
    from inflora.reports.moe_section import moe_rows

    d = moe_runs["gpt_oss"][2]
    rows = moe_rows(d)
    assert [r["block"] for r in rows] == [0, 1, 2] and [r["band"] for r in rows] == ["", "●", "●"]
    assert [r["dead"] for r in rows] == [r["expert_load"].count(0.0) for r in d.layers]
    paths = write_diagnosis_report(d, tmp_path)
    assert "moe.png" in paths and "## Mixture-of-experts blocks" in paths["md"].read_text()
    from rich.console import Console

    console = Console(width=80, record=True)
    console.print(moe_table(d))
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80 and sum(line.lstrip().startswith(("0 ", "1 ", "2 ")) for line in lines) == 3


@pytest.mark.parametrize("targets", ["experts", "all"])
def test_budget_counts_expert_lora_parameters_as_peft_builds_them(targets):
    from inflora.strategies.budget import lora_params_per_rank

    per_rank = lora_params_per_rank(tiny_moe("gpt_oss"), [0, 2], [targets])
    assert (
        3 * per_rank == count_parameters(inject_lora(tiny_moe("gpt_oss"), [0, 2], targets=targets, r=3, dropout=0.0))[0]
    )


def test_cli_export_of_experts_dry_runs_against_the_model(moe_runs, tmp_path):
    folder, path, _ = moe_runs["mixtral"]
    args = [
        "export",
        str(path),
        "--format",
        "axolotl",
        "--model",
        folder,
        "--lora-targets",
        "experts",
        "--out",
        str(tmp_path / "a.yaml"),
    ]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and refused.output.startswith("error: LoRA on fused expert parameters"), (
        refused.output
    )
    result = CliRunner().invoke(app, [*args, "--lora-dropout", "0"])
    assert result.exit_code == 0, result.output
    assert "4 modules matched" in result.output and "layers.2.mlp.experts.down_proj: 1" in result.output
    assert "lora_target_parameters" in (tmp_path / "a.yaml").read_text()


def test_deepseek_v3_dense_first_blocks_and_shared_experts_are_told_apart():
    """DeepSeek-V3: the first ``first_k_dense_replace`` blocks are dense; the others hold a sigmoid,
    group-limited router (``mlp.gate``), fused experts and shared experts."""
    import transformers as tf
    from transformers import AutoModelForCausalLM

    from inflora.models.moe import block_moes

    cfg = tf.DeepseekV3Config(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        moe_intermediate_size=16,
        intermediate_size=64,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        head_dim=8,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    found = block_moes(model.model.layers, model.config)
    assert found[0] is None and all(m is not None for m in found[1:])
    assert found[1].paths["router"] == "mlp.gate" and found[1].num_experts == 4 and found[1].top_k == 2
    assert found[1].paths["shared"] == (
        "mlp.shared_experts.gate_proj",
        "mlp.shared_experts.up_proj",
        "mlp.shared_experts.down_proj",
    )


def test_router_counted_once_per_forward_under_gradient_checkpointing():
    """A checkpointed block re-runs its router in backward; the load must not count those tokens twice."""
    model = tiny_moe("mixtral")
    model.gradient_checkpointing_enable()
    model.train()
    ids = torch.randint(5, 200, (2, 6), generator=torch.Generator().manual_seed(3))
    with LayerProbe(model, ["moe"]) as probe:
        model(input_ids=ids, labels=ids).loss.backward()
        probe.after_backward()
        totals = probe.plugins[0].blocks[0].load.totals()
    assert float(totals["tokens"]) == ids.numel()
    assert float(totals["picks"].sum()) == ids.numel() * model.config.num_experts_per_tok
