"""Fine-tuning tiny causal LMs on rt-instruct: the completion loss goes down, all six strategies run,
and evaluation reports completion loss, perplexity and label-option accuracy."""

import math

import pytest

from inflora.errors import ConfigError
from inflora.training import FinetuneConfig, finetune

# A few steps on a few examples: enough to see the completion loss move, cheap on 2 cores.
SMALL = dict(
    task="rt-instruct",
    limit_train=64,
    limit_eval=32,
    batch_size=16,
    eval_batch_size=32,
    max_length=48,
    cka_examples=0,
    decontaminate_against=None,
    log_every=2,
)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_lora_inflection_lowers_the_completion_loss(tmp_path, family):
    """The band comes from a diagnosis of the model on rt-instruct (completion-only loss), run on the fly."""
    m = finetune(
        FinetuneConfig(
            model=f"tiny-{family}",
            strategy="lora-inflection",
            diagnose_batches=2,
            lr=1e-2,
            lora_targets=["all"],
            epochs=2,
            **SMALL,
        ),
        tmp_path,
        progress=False,
    )
    before, after = m["completion_before"], m["completion"]["validation"]
    assert after["completion_loss"] < before["completion_loss"] - 0.05, (before, after)
    assert math.isclose(after["perplexity"], math.exp(after["completion_loss"]), rel_tol=1e-9)
    assert after["completion_tokens"] > 0 and 0 <= after["accuracy"] <= 1
    assert m["accuracy"]["validation"] == after["accuracy"] and "test" in m["completion"]
    assert m["band_info"]["source"] == "on-the-fly" and m["layers"] == m["band"] and m["steps"] == 8


def test_all_six_strategies_run_on_a_causal_lm(tmp_path):
    trainable = {}
    for strategy in ("full", "head", "shallow", "lora-all", "lora-inflection", "lora-random"):
        cfg = FinetuneConfig(model="tiny-llama", strategy=strategy, layers=[2], **{**SMALL, "limit_train": 16})
        m = finetune(cfg, tmp_path / strategy, progress=False)
        trainable[strategy] = m["trainable_params"]
        assert math.isfinite(m["completion"]["validation"]["completion_loss"])
    assert trainable["full"] > trainable["shallow"] > trainable["head"] > trainable["lora-all"]
    assert trainable["lora-all"] == 4 * trainable["lora-inflection"] == 4 * trainable["lora-random"]


def test_remedies_are_refused_on_instruction_data(tmp_path):
    cfg = FinetuneConfig(model="tiny-llama", strategy="lora-all", remedies=["spectral-decoupling"], **SMALL)
    with pytest.raises(ConfigError, match="act on classification losses"):
        finetune(cfg, tmp_path, progress=False)
