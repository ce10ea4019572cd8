"""The one device decision (``inflora.devices``) and its bad input on every command."""

import pytest
import torch
from typer.testing import CliRunner

from inflora.cli import app
from inflora.devices import DeviceChoice, check_precision, make_accelerator, resolve_device
from inflora.errors import ConfigError

runner = CliRunner()
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no GPU")
no_mps = pytest.mark.skipif(
    bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    reason="checks the error where there is no MPS",
)


def test_auto_picks_the_best_available_device():
    want = (
        "cuda"
        if torch.cuda.is_available()
        else ("mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    )
    choice = resolve_device("auto", "fp32")
    assert choice == DeviceChoice(want, "fp32", 1) and choice.to_dict() == {
        "device": want,
        "precision": "fp32",
        "world_size": 1,
    }
    assert resolve_device(" CPU ", "bf16").device == "cpu"  # bf16 autocast runs on a CPU


@pytest.mark.parametrize(
    "device,precision,message",
    [
        ("tpu", "fp32", "unknown device 'tpu'; choose one of: auto, cpu, cuda, cuda:N, mps"),
        ("cuda:x", "fp32", "unknown device 'cuda:x'"),
        ("cpu", "fp8", "unknown precision 'fp8'; choose one of: fp32, bf16, fp16"),
        ("cpu", "fp16", "--precision fp16 needs a GPU"),
    ],
)
def test_bad_device_or_precision_is_one_line(device, precision, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as exc:
        resolve_device(device, precision)
    assert "\n" not in str(exc.value)


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_where_there_is_none(device):
    with pytest.raises(ConfigError, match=f"--device {device}: no CUDA GPU is available"):
        resolve_device(device)


@no_mps
def test_mps_where_there_is_none():
    with pytest.raises(ConfigError, match="MPS"):
        resolve_device("mps")


def test_fp16_is_refused_on_cpu_by_the_shared_check_too():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        check_precision("fp16", "cpu")
    check_precision("bf16", "cpu")


def test_accelerator_follows_the_choice_and_accumulation_is_validated():
    acc = make_accelerator(DeviceChoice("cpu", "bf16"), grad_accum=3)
    assert acc.device.type == "cpu" and acc.mixed_precision == "bf16" and acc.gradient_accumulation_steps == 3
    acc = make_accelerator(DeviceChoice("cpu", "fp32"))  # a second run in the same process may change precision
    assert acc.mixed_precision == "no" and acc.scaler is None
    with pytest.raises(ConfigError, match="--grad-accum must be at least 1, got 0"):
        make_accelerator(DeviceChoice("cpu", "fp32"), grad_accum=0)


BAD = [(["--device", "tpu"], "unknown device 'tpu'"), (["--precision", "fp16", "--device", "cpu"], "fp16 needs a GPU")]
if not torch.cuda.is_available():
    BAD.append((["--device", "cuda"], "no CUDA GPU is available"))


@pytest.mark.parametrize("command", ["diagnose", "finetune", "experiment", "demo"])
@pytest.mark.parametrize("args,message", BAD)
def test_every_command_refuses_bad_devices_in_one_line_before_loading_anything(command, args, message):
    res = runner.invoke(app, [command, *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["finetune", "--grad-accum", "0"], "--grad-accum must be at least 1, got 0"),
        (["diagnose", "--fsdp"], "--fsdp needs several processes"),
    ],
)
def test_other_scale_flags_bad_input(args, message):
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and res.output.strip().startswith("error: ") and message in res.output, res.output
