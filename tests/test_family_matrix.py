"""Every family of the issue (and a vision-language model), discovered rather than listed: a real
diagnosis on 2 batches of real data, a few LoRA steps on the diagnosed band that lower the loss,
and a PEFT export dry-run that reloads to inflora's own trainable-parameter count."""

import math

import pytest
import torch

from inflora.diagnosis import _as_batches, diagnose
from inflora.errors import ArchitectureError
from inflora.export import export_config
from inflora.models import arch_for, tiny_model
from inflora.models.tiny import FAMILIES, VISION_LANGUAGE, auto_class, tiny_config
from inflora.strategies import count_parameters, inject_lora


def task_of(family: str) -> str:
    """Decoders are tried as causal LMs (rt-instruct), encoders as classifiers (Rotten Tomatoes)."""
    try:
        auto_class(tiny_config(family), "causal-lm")
    except ArchitectureError:
        return "classification"
    model = tiny_model(family, layers=1, task="causal-lm")
    return "causal-lm" if arch_for(model).causal else "classification"


@pytest.fixture(scope="module")
def datasets(data_dir):
    from inflora.data import load_task

    return {
        "causal-lm": load_task("rt-instruct", "validation", data_dir),
        "classification": load_task("rotten_tomatoes", "validation", data_dir),
    }


def _train_steps(model, batches, steps=6, lr=2e-3) -> list[float]:
    """Plain AdamW steps on one probe batch (fitting it must lower its loss): the losses before each step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.eval()  # no dropout: the steps themselves must lower the loss
    losses = []
    for _ in range(steps):
        loss = model(**batches[0]).loss
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


@pytest.mark.parametrize("family", FAMILIES + VISION_LANGUAGE)
def test_family_diagnoses_trains_on_its_band_and_exports(family, datasets, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    task = task_of(family)
    model = tiny_model(family, task=task)
    d = diagnose(model, datasets[task], tokenizer, batches=2, batch_size=4, max_length=32, progress=False, resamples=2)
    assert d.num_layers == 4 and d.family == arch_for(model).family
    for row in d.layers:
        assert math.isfinite(row["activation_grad_norm"]) and row["activation_grad_norm"] > 0
        assert math.isfinite(row["attention_entropy"]) and row["attention_entropy"] >= 0
    spec = arch_for(model)
    if spec.entropy_note:
        assert d.config["attention"] == "eager" and any(spec.entropy_note in f for f in d.flags)
    band = d.inflection_layers or [1, 2]  # a random-init profile may have no peak
    batches = _as_batches(
        datasets[task], tokenizer, batches=2, batch_size=4, max_length=32, seed=0, causal_lm=task == "causal-lm"
    )
    peft_model = inject_lora(tiny_model(family, task=task), band, r=4)
    losses = _train_steps(peft_model, batches)
    assert losses[-1] < losses[0], losses
    d.model, d.inflection_layers = f"tiny-{family}", band
    done = export_config(d, "peft", tmp_path / "peft", model=f"tiny-{family}", r=4)
    loaded = LoraConfig.from_pretrained(str(done.path))
    assert loaded.layers_to_transform == band
    theirs = count_parameters(get_peft_model(tiny_model(family, task=task), loaded))
    assert theirs == count_parameters(inject_lora(tiny_model(family, task=task), band, r=4)) and theirs[0] > 0
