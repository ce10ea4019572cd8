"""LoRA targets per family (attention / mlp / all / names), the one PEFT-config builder, and the
dry-run that refuses a target or band layer matching nothing; causal-LM diagnosis on tiny decoders."""

import pytest

from inflora.errors import ConfigError
from inflora.models import arch_for, tiny_model
from inflora.strategies import count_parameters, inject_lora, lora_config
from inflora.strategies.lora import match_lora_targets, resolve_targets

DECODERS = ["llama", "qwen2", "gpt2"]


def _adapted(peft_model) -> set[tuple[int, str]]:
    """(layer, module path inside the block) of every LoRA-wrapped module."""
    spec = arch_for(peft_model.get_base_model())
    marker = f"{spec.blocks.split('.')[-1]}."
    out = set()
    for name, _ in peft_model.named_modules():
        if name.endswith(".lora_A"):
            rest = name.split(marker, 1)[1][: -len(".lora_A")]
            layer, path = rest.split(".", 1)
            out.add((int(layer), path))
    return out


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("preset", ["qkv", "attention", "mlp", "all"])
def test_presets_adapt_exactly_the_table_modules_on_the_band(family, preset):
    model = tiny_model(family, task="causal-lm")
    spec = arch_for(model)
    want = {"qkv": spec.lora_targets, "attention": (*spec.lora_targets, spec.output), "mlp": spec.mlp_targets}
    want["all"] = want["attention"] + spec.mlp_targets
    peft_model = inject_lora(model, [1, 3], targets=preset, r=2)
    assert _adapted(peft_model) == {(i, p) for i in (1, 3) for p in want[preset]}
    assert {n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n} == set()


def test_family_mlp_projections():
    assert resolve_targets("llama", "mlp") == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert resolve_targets("qwen2", "mlp") == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert resolve_targets("gpt2", "all") == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert resolve_targets("llama", None) == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    assert resolve_targets("llama", "q_proj,mlp") == ["q_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_qwen2_tiny_uses_grouped_query_attention():
    model = tiny_model("qwen2", task="causal-lm")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    peft_model = inject_lora(model, [0], r=2)  # k/v projections are narrower than q
    a = {n.split(".")[-4]: p.shape for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert a["k_proj"][0] == a["q_proj"][0] // 2


def test_bert_mlp_does_not_catch_the_attention_output():
    """BERT's FFN ``output.dense`` is a suffix of ``attention.output.dense``: PEFT would wrap both."""
    peft_model = inject_lora(tiny_model("bert"), [0], targets="mlp", r=2)
    assert _adapted(peft_model) == {(0, "intermediate.dense"), (0, "output.dense")}
    both = inject_lora(tiny_model("bert"), [0], targets="all", r=2)
    assert (0, "attention.output.dense") in _adapted(both) and len(_adapted(both)) == 6


@pytest.mark.parametrize(
    "targets,match",
    [
        ("q_proj,nonexistent", r"\['nonexistent'\] match no module"),
        ("c_attn", r"\['c_attn'\] match no module of this llama"),
    ],
)
def test_a_target_the_model_lacks_is_an_error(targets, match):
    with pytest.raises(ConfigError, match=match):
        inject_lora(tiny_model("llama", task="causal-lm"), [1], targets=targets)


def test_a_band_layer_that_matches_nothing_is_an_error():
    model = tiny_model("gpt2", task="causal-lm")
    with pytest.raises(ConfigError, match=r"layer\(s\) \[7\] of the band match no module: .* 4 blocks"):
        match_lora_targets(model, lora_config("gpt2", [1, 7], task_type="CAUSAL_LM"))
    assert match_lora_targets(model, lora_config("gpt2", [1, 2], targets="all")) == {
        "attn.c_attn": 2,
        "attn.c_proj": 2,
        "mlp.c_fc": 2,
        "mlp.c_proj": 2,
    }


def test_one_builder_for_inject_and_diagnosis(tokenizer, data_dir):
    """Diagnosis.lora_config() and inject_lora() build the same config: same trainable count."""
    from peft import get_peft_model

    from inflora.data import load_task
    from inflora.diagnosis import diagnose

    model = tiny_model("llama", task="causal-lm")
    d = diagnose(
        model,
        load_task("rt-instruct", "validation", data_dir),
        tokenizer,
        batches=2,
        batch_size=8,
        max_length=48,
        progress=False,
        resamples=5,
    )
    assert d.task_type == "causal-lm" and d.head_modules == [] and d.config["mean_loss"] > 0
    band = d.inflection_layers or [1]
    d.inflection_layers = band
    cfg = d.lora_config(targets="all")
    assert cfg.task_type == "CAUSAL_LM" and cfg.layers_to_transform == band
    via_diagnosis = count_parameters(get_peft_model(tiny_model("llama", task="causal-lm"), cfg))
    assert via_diagnosis == count_parameters(inject_lora(tiny_model("llama", task="causal-lm"), band, targets="all"))


@pytest.mark.parametrize("family", ["t5", "flaubert"])
def test_a_sequence_classifier_with_an_unusual_head_name_is_a_classifier(family):
    """T5 (``classification_head``) and Flaubert (``sequence_summary``): transformers' class says
    classification, so the probe feeds class labels, not next-token labels."""
    from inflora.strategies.lora import task_type_of

    model = tiny_model(family, layers=2, task="classification")
    assert task_type_of(model) == "classification"
    assert task_type_of(tiny_model("gpt2", layers=2, task="causal-lm")) == "causal-lm"
