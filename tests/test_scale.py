"""Scale in one process on the real MiniLM: gradient accumulation follows the large batch, bf16
autocast runs end to end, and what ran where is recorded. (Several processes: test_scale_ddp.py.)"""

import math

import pytest
import torch

from inflora.validate import load_json
from inflora.training import FinetuneConfig, finetune

pytestmark = pytest.mark.real


def cfg(model_dir, **kw) -> FinetuneConfig:
    base = dict(
        model=str(model_dir),
        strategy="lora-inflection",
        layers=[0, 1],
        lora_dropout=0.0,
        epochs=1,
        limit_train=64,
        limit_eval=32,
        max_length=32,
        cka_examples=0,
        batch_size=32,
        log_every=1,
        lr=1e-3,
        device="cpu",
        decontaminate_against=None,
    )
    return FinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def batch32(minilm_no_dropout, tmp_path_factory):
    return finetune(cfg(minilm_no_dropout), tmp_path_factory.mktemp("b32"), progress=False)


def test_grad_accum_2_at_batch_16_follows_batch_32(batch32, minilm_no_dropout, tmp_path):
    acc = finetune(cfg(minilm_no_dropout, batch_size=16, grad_accum=2), tmp_path, progress=False)
    assert acc["steps"] == batch32["steps"] == 2 and acc["global_batch_size"] == batch32["global_batch_size"] == 32
    # Same examples per optimizer step; only the float order of the sums differs (two padded halves
    # instead of one batch): float32 round-off, far below the 1e-2-per-step change of the loss itself.
    torch.testing.assert_close(acc["step_losses"], batch32["step_losses"], rtol=1e-5, atol=0)
    assert abs(batch32["step_losses"][1] - batch32["step_losses"][0]) > 1e-3  # the steps did change the model
    for a, b in zip(acc["grad_profile"], batch32["grad_profile"]):
        for key in ("activation_grad_norm", "param_grad_norm"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(a["param_grad_norm_head"], b["param_grad_norm_head"], rtol=1e-4, atol=0)
    assert acc["accuracy"] == batch32["accuracy"]
    assert acc["config_key"] != batch32["config_key"]  # a different run folder identity
    assert (acc["grad_accum"], batch32["grad_accum"]) == (2, 1)


def test_bf16_on_cpu_runs_end_to_end_and_is_recorded(batch32, minilm_no_dropout, tmp_path):
    m = finetune(cfg(minilm_no_dropout, precision="bf16"), tmp_path, progress=False)
    assert (m["device"], m["precision"], m["world_size"]) == ("cpu", "bf16", 1)
    assert load_json(tmp_path / "metrics.json")["precision"] == "bf16"
    assert all(math.isfinite(v) for v in m["step_losses"]) and 0 <= m["accuracy"]["test"] <= 1
    # autocast really ran in bf16: the losses differ from fp32's, by bf16's ~3 significant digits only
    assert m["step_losses"] != batch32["step_losses"]
    torch.testing.assert_close(m["step_losses"], batch32["step_losses"], rtol=3e-2, atol=0)
    assert all(math.isfinite(v) and v > 0 for row in m["grad_profile"] for v in row["activation_grad_norm"])
    from inflora.reports import write_finetune_report

    write_finetune_report(m, tmp_path)
    assert "Ran on cpu in bf16 with 1 process(es), global batch 32" in (tmp_path / "report.md").read_text()


def test_a_run_is_resumed_only_with_its_precision(minilm_no_dropout, tmp_path):
    from inflora.errors import ConfigError

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(
            cfg(minilm_no_dropout, epochs=2, limit_train=32, precision="bf16"),
            out,
            progress=False,
            on_epoch_end=lambda e: (_ for _ in ()).throw(KeyboardInterrupt),
        )
    with pytest.raises(
        ConfigError, match="started with --precision bf16, not fp32; use --precision bf16 to resume"
    ) as exc:
        finetune(cfg(minilm_no_dropout, epochs=2, limit_train=32), out, progress=False)
    assert "\n" not in str(exc.value)
