"""``diagnose`` end to end: the real MiniLM on real RT validation, the file format, the LoRA config,
and every kind of bad input (a one-line error or a flagged result)."""

import copy
import json
import math

import pytest
import torch
import transformers

from inflora.data import TextDataset, load_task
from inflora.diagnosis import Diagnosis, diagnose
from inflora.errors import ArchitectureError, ConfigError, DataError
from inflora.models import get_blocks, tiny_model
from inflora.select import select_layers, ski_terms

transformers.logging.set_verbosity_error()


SMALL = dict(batches=3, batch_size=16, max_length=32, progress=False)
LAYER_KEYS = {
    "layer",
    "attention_entropy",
    "attention_entropy_norm",
    "activation_grad_norm",
    "param_grad_norm",
    "head_entropy",
}
TOP_KEYS = {"model", "num_layers", "layers", "inflection_layers", "selection", "config", "versions"}


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


def tiny_batches(n=3, seed=0, b=4, t=8):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 1000, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        mask[1, 5:] = 0
        out.append({"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask, "labels": torch.arange(b) % 2})
    return out


# ---------------------------------------------------------------- the real model and data


@pytest.fixture(scope="module")
def rt_diagnosis(minilm, data_dir):
    model, tok = minilm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    d = diagnose(model, "rotten_tomatoes", tok, resamples=50, data_dir=str(data_dir), **SMALL)
    return d, before, was_training


@pytest.mark.real
def test_real_diagnosis_attributes(rt_diagnosis):
    d, _, _ = rt_diagnosis
    assert d.model == "minilm" and d.family == "bert" and d.num_layers == 6 and len(d.layers) == 6
    assert [r["layer"] for r in d.layers] == list(range(6))
    for r in d.layers:
        assert LAYER_KEYS <= set(r)
        assert 0 < r["attention_entropy"] < math.log(32)
        assert 0 < r["attention_entropy_norm"] <= 1
        assert len(r["head_entropy"]) == 12 and all(0 <= h < math.log(32) for h in r["head_entropy"])
        assert r["attention_entropy"] == pytest.approx(sum(r["head_entropy"]) / 12, rel=1e-9)
        assert r["activation_grad_norm"] > 0 and r["param_grad_norm"] > 0
        assert r["activation_grad_nonfinite_batches"] == 0
    assert d.groups["param_grad_norm_embeddings"] > 0 and d.groups["param_grad_norm_head"] > 0
    # the SKI row, the peaks and the band are consistent with the profiles they came from
    entropy, grad = d.profile("attention_entropy"), d.profile("activation_grad_norm")
    assert d.ski == pytest.approx(ski_terms(entropy, grad)["ski"].tolist(), abs=1e-12)
    assert d.inflection_layers == select_layers("ski", entropy, grad)
    assert 1 <= len(d.inflection_layers) <= 6 and set(d.peaks) <= set(d.inflection_layers)
    for term in (d.entropy_term, d.grad_term):  # min-max normalised: each spans [0, 1] exactly
        assert min(term) == 0.0 and max(term) == 1.0
    assert len(d.stability) == 6 and all(0 <= s <= 1 for s in d.stability)
    assert all(d.stability[i] > 0 for i in d.inflection_layers)
    assert d.selection["rule"] == "ski" and d.selection["parameters"]["alpha"] == 0.5
    assert (
        d.config["probe_batches"] == 3
        and d.config["data"] == "rotten_tomatoes"
        and math.isfinite(d.config["mean_loss"])
    )
    assert d.flags == []
    assert d.lora_targets == ["attention.self.query", "attention.self.key", "attention.self.value"]


@pytest.mark.real
def test_real_diagnose_changes_nothing_in_the_model(rt_diagnosis, minilm):
    _, before, was_training = rt_diagnosis
    model, _ = minilm
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training == was_training
    assert all(p.grad is None for p in model.parameters())
    assert model.config._attn_implementation == "eager"


@pytest.mark.real
def test_real_diagnosis_is_reproducible_and_accepts_a_dataset(rt_diagnosis, minilm, data_dir):
    d, _, _ = rt_diagnosis
    model, tok = minilm
    ds = load_task("rotten_tomatoes", "validation", data_dir)
    again = diagnose(model, ds, tok, resamples=50, **SMALL)
    assert (
        again.layers == d.layers and again.stability == d.stability and again.inflection_layers == d.inflection_layers
    )


@pytest.mark.real
def test_json_round_trip_and_required_keys(rt_diagnosis, tmp_path):
    d, _, _ = rt_diagnosis
    path = tmp_path / "out" / "diagnosis.json"
    text = d.to_json(path)
    data = json.loads(path.read_text())
    assert json.loads(text) == data
    assert TOP_KEYS <= set(data)
    assert data["model"] == "minilm" and data["num_layers"] == 6
    assert all(LAYER_KEYS <= set(row) for row in data["layers"])
    assert {"rule", "parameters", "resamples"} <= set(data["selection"]) and "stability" not in data["selection"]
    assert len(data["stability"]) == len(data["ski"]) == 6 and not any("ski" in row for row in data["layers"])
    assert {"torch", "transformers", "peft", "inflora"} <= set(data["versions"])
    back = Diagnosis.from_json(path)
    assert back.to_dict() == d.to_dict()
    assert back.inflection_layers == d.inflection_layers


@pytest.mark.real
def test_lora_config_targets_exactly_the_band(rt_diagnosis, minilm):
    from peft import LoraConfig, get_peft_model

    d, _, _ = rt_diagnosis
    cfg = d.lora_config()
    assert isinstance(cfg, LoraConfig)
    assert cfg.layers_to_transform == d.inflection_layers
    assert cfg.r == 8 and cfg.lora_alpha == 16
    assert d.lora_config(r=4).r == 4
    peft_model = get_peft_model(copy.deepcopy(minilm[0]), cfg)
    adapted = {
        int(name.split("encoder.layer.")[1].split(".")[0])
        for name, _ in peft_model.named_parameters()
        if "lora_A" in name
    }
    assert adapted == set(d.inflection_layers)
    n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert n_lora == len(d.inflection_layers) * 3 * 8 * (384 + 384)  # q, k, v: A (8x384) + B (384x8)


# ---------------------------------------------------------------- rules through diagnose


def test_reported_ski_matches_the_rule_variant():
    model = tiny_model("bert", layers=5)
    d = diagnose(model, tiny_batches(), rule="ski-decay", resamples=10, progress=False)
    entropy, grad = d.profile("attention_entropy"), d.profile("activation_grad_norm")
    assert d.selection["parameters"]["variant"] == "decay"
    assert d.ski == pytest.approx(ski_terms(entropy, grad, variant="decay")["ski"].tolist(), abs=1e-12)
    assert d.inflection_layers == select_layers("ski-decay", entropy, grad)
    k2 = diagnose(model, tiny_batches(), rule="topk", rule_params={"k": 2}, resamples=10, progress=False)
    assert len(k2.inflection_layers) == 2 and k2.selection["parameters"]["k"] == 2


def test_no_selected_layer_is_flagged_and_lora_config_refuses():
    d = diagnose(
        tiny_model("bert", layers=3),
        tiny_batches(),
        rule="threshold",
        rule_params={"tau": 1.01},
        resamples=5,
        progress=False,
    )
    assert d.inflection_layers == [] and any("selected no layer" in f for f in d.flags)
    with pytest.raises(ConfigError, match="selected no layers") as info:
        d.lora_config()
    one_line(info)


def test_single_batch_gives_nan_stability_and_valid_json(tmp_path):
    d = diagnose(tiny_model("bert", layers=3), tiny_batches(1), progress=False)
    assert all(math.isnan(s) for s in d.stability)
    d.to_json(tmp_path / "d.json")
    assert json.loads((tmp_path / "d.json").read_text())["stability"] == [None] * 3


# ---------------------------------------------------------------- bad input


def test_model_without_attention_blocks():
    with pytest.raises(ArchitectureError, match="unsupported architecture 'Sequential'") as info:
        diagnose(torch.nn.Sequential(torch.nn.Linear(4, 4)), tiny_batches(), progress=False)
    one_line(info)


def test_undiscoverable_hf_architecture_built_offline():
    """Families are discovered (T5 now is); one whose q/k/v are convolutions names what was looked for."""
    squeezebert = tiny_model("squeezebert", layers=1)
    with pytest.raises(
        ArchitectureError, match="attention module 'attention' holds no Linear projection.*ARCHITECTURES"
    ) as info:
        diagnose(squeezebert, tiny_batches(), progress=False)
    one_line(info)


def test_data_with_one_class_only(tokenizer):
    ds = TextDataset(["a fine film"] * 10 + ["a lovely film"] * 10, [1] * 20, name="one-class", split="validation")
    with pytest.raises(DataError, match="1 class") as info:
        diagnose(tiny_model("bert", layers=2), ds, tokenizer, batches=2, batch_size=4, progress=False)
    one_line(info)


def test_sequences_all_padding():
    batches = tiny_batches(2)
    batches[1]["attention_mask"].zero_()
    model = tiny_model("bert", layers=2)
    with pytest.raises(DataError, match="only padding") as info:
        diagnose(model, batches, progress=False)
    one_line(info)
    assert not model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("batches", [0, -2])
def test_zero_batches(batches):
    with pytest.raises(ConfigError, match="--batches must be at least 1") as info:
        diagnose(tiny_model("bert", layers=2), tiny_batches(), batches=batches, progress=False)
    one_line(info)


def test_unknown_rule_name():
    with pytest.raises(ConfigError, match="unknown selection rule 'sky'; choose one of: .*ski") as info:
        diagnose(tiny_model("bert", layers=2), tiny_batches(), rule="sky", progress=False)
    one_line(info)


def test_empty_or_unusable_data():
    model = tiny_model("bert", layers=2)
    with pytest.raises(DataError, match="no probe batches") as info:
        diagnose(model, [], progress=False)
    one_line(info)
    with pytest.raises(DataError, match="cannot diagnose on int") as info:
        diagnose(model, 3, progress=False)
    one_line(info)


def test_inf_in_one_blocks_output_gradient_is_flagged_per_layer():
    model = tiny_model("bert", layers=4)
    calls = []

    def inject(module, args, output):  # the first probe batch only: d(loss)/d(h2) becomes inf
        if not calls:
            calls.append(1)
            output.register_hook(lambda g: g + float("inf"))

    handle = get_blocks(model)[2].register_forward_hook(inject)
    try:
        d = diagnose(model, tiny_batches(3), resamples=20, progress=False)
    finally:
        handle.remove()
    bad = [r["activation_grad_nonfinite_batches"] for r in d.layers]
    assert bad == [1, 1, 1, 0]  # layer 2 and everything below it saw the inf
    assert [r["param_grad_nonfinite_batches"] for r in d.layers] == [1, 1, 1, 0]
    for i in range(3):
        assert any(f.startswith(f"layer {i}:") and "activation grad" in f for f in d.flags)
    assert not any(f.startswith("layer 3:") for f in d.flags)
    # the bad batch is left out where it was bad and kept where it was not: the profile stays finite
    assert all(math.isfinite(r["activation_grad_norm"]) for r in d.layers)
    clean = diagnose(model, tiny_batches(3)[1:], resamples=0, progress=False)
    full = diagnose(model, tiny_batches(3), resamples=0, progress=False)
    expected = [clean.layers[i] if i < 3 else full.layers[i] for i in range(4)]
    for a, b in zip(d.layers, expected):
        assert a["activation_grad_norm"] == pytest.approx(b["activation_grad_norm"], rel=1e-6)
        assert a["param_grad_norm"] == pytest.approx(b["param_grad_norm"], rel=1e-6)
    assert d.inflection_layers  # a selection was still made


def test_inf_weight_gives_a_flagged_result_not_a_crash(tmp_path):
    model = tiny_model("bert", layers=3)
    with torch.no_grad():
        get_blocks(model)[1].intermediate.dense.weight[0, 0] = float("inf")
    d = diagnose(model, tiny_batches(2), resamples=10, progress=False)
    assert any("non-finite loss" in f for f in d.flags)
    assert any("non-finite diagnostics at layers" in f for f in d.flags)
    assert d.inflection_layers == [] and all(math.isnan(s) for s in d.ski)
    assert all(r["activation_grad_nonfinite_batches"] == 2 for r in d.layers)
    d.to_json(tmp_path / "d.json")  # NaN is written as null, the file stays valid JSON
    assert json.loads((tmp_path / "d.json").read_text())["ski"] == [None] * 3
    with pytest.raises(ConfigError):
        d.lora_config()


def test_from_json_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        Diagnosis.from_json(tmp_path / "missing.json")
    one_line(info)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: line 1 column 2: not JSON"):
        Diagnosis.from_json(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"model": "x"}')
    with pytest.raises(DataError, match="not a diagnosis file"):
        Diagnosis.from_json(tmp_path / "partial.json")


def test_lora_config_keeps_pooler_and_classifier_trainable_on_bert(tokenizer, data_dir):
    from peft import get_peft_model

    from inflora.data import load_task, probe_batches
    from inflora.models import tiny_model

    model = tiny_model("bert", layers=6)
    batches = probe_batches(
        load_task("rotten_tomatoes", "validation", data_dir), tokenizer, batches=4, batch_size=16, max_length=24
    )
    d = diagnose(model, batches, progress=False, resamples=5)
    peft_model = get_peft_model(model, d.lora_config())
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("pooler" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert {int(n.split("layer.")[1].split(".")[0]) for n in trainable if "lora_" in n} == set(d.inflection_layers)
