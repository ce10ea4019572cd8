"""InflectionCallback inside a real ``transformers.Trainer`` run (tiny models, CPU, a few steps)."""

import copy
import json
import math

import pytest
import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

from inflora.errors import ConfigError
from inflora.strategies import inject_lora
from inflora.training.callback import InflectionCallback

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "the plot is nothing but boilerplate clichés from start to finish",
    "it 's a charming and often affecting journey .",
    "unfunny and tedious .",
    "a masterpiece four years in the making .",
    "everything is too neat and tidy and predictable",
    "an utterly compelling ` who wrote it ' in which the reputation of the most famous author who ever lived comes "
    "into question .",
    "boring .",
]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0]


def tiny_bert(layers=4, dropout=0.0, seed=0):
    """A tiny BERT without dropout, so a step's gradients can be recomputed exactly."""
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=2,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg)


def encoded(tokenizer):
    enc = tokenizer(TEXTS, truncation=True, max_length=32)
    return [
        {"input_ids": i, "attention_mask": m, "labels": y}
        for i, m, y in zip(enc["input_ids"], enc["attention_mask"], LABELS)
    ]


def run_trainer(model, tokenizer, out, callback, **kw):
    args = TrainingArguments(
        output_dir=str(out),
        use_cpu=True,
        seed=0,
        per_device_train_batch_size=kw.pop("batch_size", len(TEXTS)),
        learning_rate=kw.pop("lr", 1e-2),
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        report_to=kw.pop("report_to", ["tensorboard"]),
        **kw,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded(tokenizer),
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[callback],
    )
    trainer.train()
    return trainer


def assert_output_row(row, predictions):
    """The step's output numbers, and ‖∂L/∂h‖ = w·‖·‖_wrong + (1 − w)·‖·‖_right per block."""
    o = row["output"]
    assert o["predictions"] == predictions and 0 <= o["accuracy"] <= 1 and 0 < o["mean_grad_norm"] <= math.sqrt(2)
    assert 0 <= o["ece"] <= 1 and "histogram" not in o
    w = row["wrong_token_share"]
    for g, g_wrong, g_right in zip(
        row["activation_grad_norm"], row["activation_grad_norm_wrong"], row["activation_grad_norm_correct"]
    ):
        mix = (w * g_wrong if w > 0 else 0.0) + ((1 - w) * g_right if w < 1 else 0.0)
        assert mix == pytest.approx(g, rel=1e-6)


def manual_step_norms(model, tokenizer):
    """Per-block activation-gradient (per token, padding excluded) and parameter-gradient norms of one
    forward/backward on the whole data set, computed independently of the probe."""
    batch = DataCollatorWithPadding(tokenizer)(encoded(tokenizer))
    model.train()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # frozen embeddings give no graph below block 0: root it at the embedding output
    base.bert.embeddings.register_forward_hook(lambda m, a, o: o.detach().requires_grad_(True))
    out = model(**batch, output_hidden_states=True)
    hidden = out.hidden_states[1:]  # block outputs
    for h in hidden:
        h.retain_grad()
    out.loss.backward()
    mask = batch["attention_mask"].bool()
    acts = [float(h.grad.norm(dim=-1)[mask].mean()) for h in hidden]
    params = []
    for block in base.bert.encoder.layer:
        params.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in block.parameters() if p.grad is not None)))
    return acts, params


def test_callback_in_trainer_matches_direct_gradients_and_writes_tensorboard(tmp_path, tokenizer):
    """LoRA on blocks 2,3 of a PEFT-wrapped model: rows on steps 0,2,4; block 0-1 parameter gradients are
    zero, activation gradients reach every block; step 0 equals an independent forward/backward, before
    clipping (max_grad_norm is tiny); ΔCKA is ~0 below the band and > 0 in it; TensorBoard has the tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = inject_lora(tiny_bert(), [2, 3], dropout=0.0)
    want_acts, want_params = manual_step_norms(copy.deepcopy(model), tokenizer)
    cka = [DataCollatorWithPadding(tokenizer)(encoded(tokenizer))]
    cb = InflectionCallback(every=2, cka_batches=cka)
    run_trainer(model, tokenizer, tmp_path, cb, max_steps=5, max_grad_norm=1e-6)

    data = json.loads((tmp_path / "inflora_grad_profile.json").read_text())
    rows = data["grad_profile"]
    assert [r["step"] for r in rows] == [0, 2, 4]
    for r in rows:
        assert len(r["activation_grad_norm"]) == len(r["param_grad_norm"]) == 4
        assert all(v is not None and math.isfinite(v) and v > 0 for v in r["activation_grad_norm"])
        assert r["param_grad_norm"][:2] == [0.0, 0.0]  # frozen blocks
        assert all(v > 1e-4 for v in r["param_grad_norm"][2:])  # LoRA blocks, far above the 1e-6 clip
        assert r["param_grad_norm_embeddings"] == 0.0 and r["param_grad_norm_head"] > 1e-4
        assert math.isfinite(r["loss"])
    torch.testing.assert_close(
        torch.tensor(rows[0]["activation_grad_norm"]), torch.tensor(want_acts), rtol=1e-4, atol=0
    )
    torch.testing.assert_close(torch.tensor(rows[0]["param_grad_norm"]), torch.tensor(want_params), rtol=1e-4, atol=0)
    assert rows[1]["param_grad_norm"] != rows[0]["param_grad_norm"]  # a later step's own gradients
    for r in rows:  # output saturation of the step's own forward, and ‖∂L/∂h‖ split by wrong/right examples
        assert_output_row(r, predictions=len(TEXTS))

    dcka = data["delta_cka"]
    assert len(dcka) == 4 and cb.delta_cka == dcka
    assert max(abs(v) for v in dcka[:2]) < 1e-9, dcka  # nothing below the band changed
    assert min(dcka[2:]) > 1e-6, dcka

    events = list((tmp_path / "runs" / "inflora").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "inflora/activation_grad_norm/layer_03" in tags and "inflora/param_grad_norm/head" in tags
    assert [e.step for e in acc.Scalars("inflora/param_grad_norm/layer_02")] == [1, 3, 5]  # Trainer's global_step
    assert "inflora/delta_cka/layer_00" in tags
    assert not any("inflora" in p.name for p in tmp_path.glob("runs/*") if p.name != "inflora")


def test_callback_with_gradient_accumulation_plain_model_and_custom_json(tmp_path, tokenizer):
    """A plain (non-PEFT) model with dropout and gradient accumulation, every step logged: every block
    and the embeddings receive gradient; no TensorBoard without report_to; the JSON goes where asked."""
    path = tmp_path / "elsewhere" / "profile.json"
    cb = InflectionCallback(every=1, json_path=path)
    run_trainer(
        tiny_bert(layers=3, dropout=0.1),
        tokenizer,
        tmp_path / "run",
        cb,
        max_steps=3,
        batch_size=2,
        gradient_accumulation_steps=2,
        report_to="none",
    )
    rows = json.loads(path.read_text())["grad_profile"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert all(math.isfinite(v) and v > 0 for v in r["activation_grad_norm"] + r["param_grad_norm"])
        assert r["param_grad_norm_embeddings"] > 0
        assert_output_row(r, predictions=4)  # both micro-batches of the step
    assert not (tmp_path / "run" / "inflora_grad_profile.json").exists()
    assert not (tmp_path / "run" / "runs").exists()
    assert cb.recorder is None  # detached at the end


def test_callback_rejects_bad_options():
    with pytest.raises(ConfigError, match="every"):
        InflectionCallback(every=0)
    with pytest.raises(ConfigError, match="cka_batches"):
        InflectionCallback(cka_batches=[])
