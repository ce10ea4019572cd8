"""Several processes on the CPU (torchrun, gloo) with the real MiniLM: DDP fine-tuning equals one
process with the same global batch, a killed 2-process run resumes to the same numbers, a run is
resumed only with its world size, and diagnose under FSDP2 reports the full-gradient norms.

Kept lean for a shared 2-core machine: 64 training and 32 evaluation examples, 32 tokens, 2 epochs.
Dropout is off (``minilm_no_dropout``: same weights) so that splitting a batch across processes
changes nothing but the float order of the gradient sums, and the comparisons can be tight."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from pathlib import Path

from inflora.errors import ConfigError
from inflora.validate import load_json
from inflora.training import FinetuneConfig, finetune
from inflora.training.loop import KILL_AFTER_EPOCH

pytestmark = pytest.mark.real
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SAME = ("accuracy", "history", "best_epoch", "steps", "step_losses", "grad_profile", "delta_cka", "world_size")
FT = dict(
    strategy="lora-inflection",
    layers=[0, 1],
    lora_dropout=0.0,
    epochs=2,
    limit_train=64,
    limit_eval=32,
    max_length=32,
    cka_examples=32,
    log_every=1,
    lr=1e-3,
    device="cpu",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m inflora ARGS`` on this Python, gloo on the loopback."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "inflora",
        *map(str, args),
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def finetune_args(model_dir, out, batch_size=16):
    args = ["finetune", "--model", model_dir, "--out", out, "--batch-size", batch_size]
    for key, value in FT.items():
        flag = "--" + key.replace("_", "-")
        if key == "layers":
            value = ",".join(map(str, value))
        if key != "cka_examples":
            args += [flag, value]
    return args


def close(a, b, rtol):
    torch.testing.assert_close(
        torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), rtol=rtol, atol=1e-12
    )


@pytest.fixture(scope="module")
def one_process(minilm_no_dropout, tmp_path_factory):
    """One process, batch 32: the global batch of 2 processes × 16."""
    cfg = FinetuneConfig(model=str(minilm_no_dropout), batch_size=32, **FT)
    return finetune(cfg, tmp_path_factory.mktemp("one"), progress=False)


@pytest.fixture(scope="module")
def two_processes(minilm_no_dropout, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    res = torchrun(*finetune_args(minilm_no_dropout, out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, load_json(out / "metrics.json"), res


def test_two_processes_equal_one_process_with_the_same_global_batch(one_process, two_processes):
    out, two, res = two_processes
    assert (two["world_size"], two["global_batch_size"], two["precision"]) == (2, 32, "fp32")
    assert (one_process["world_size"], one_process["global_batch_size"]) == (1, 32)
    assert two["steps"] == one_process["steps"] == 4  # 64 examples / 32 per step × 2 epochs
    # the same predictions: every accuracy is equal (each example counted once; eval sizes match)
    assert two["accuracy"] == one_process["accuracy"] and two["sizes"] == one_process["sizes"]
    assert [h["validation_accuracy"] for h in two["history"]] == [
        h["validation_accuracy"] for h in one_process["history"]
    ]
    # losses and gradient profiles: DDP averages two half-batch gradients where one process sums one
    # batch; only float32 round-off differs (the loss moves by >1e-3 per step, see the last assert)
    close(two["step_losses"], one_process["step_losses"], 1e-5)
    for a, b in zip(two["grad_profile"], one_process["grad_profile"]):
        close(a["param_grad_norm"], b["param_grad_norm"], 1e-4)
        close(a["activation_grad_norm"], b["activation_grad_norm"], 1e-4)
    close(two["delta_cka"], one_process["delta_cka"], 1e-3)
    assert abs(one_process["step_losses"][-1] - one_process["step_losses"][0]) > 1e-3
    # one rank wrote the files: one metrics.json, one report, one progress print
    assert sorted(p.name for p in out.glob("metrics*.json")) == ["metrics.json"] and (out / "report.html").exists()
    assert res.stdout.count("wrote ") == 1


def test_a_killed_two_process_run_resumes_to_the_same_numbers(two_processes, minilm_no_dropout, tmp_path):
    _, uninterrupted, _ = two_processes
    out = tmp_path / "run"
    killed = torchrun(*finetune_args(minilm_no_dropout, out), env={KILL_AFTER_EPOCH: "1"})
    assert killed.returncode != 0  # SIGKILL right after epoch 1's checkpoint: no clean-up ran
    assert not (out / "metrics.json").exists()
    meta = load_json(out / "checkpoints/last/meta.json")
    assert (meta["epoch"], meta["world_size"]) == (1, 2)
    assert (out / "checkpoints/last/rng-rank1.pt").is_file()  # every rank's RNG state is kept

    # the same folder cannot be resumed by one process: its data split and RNG streams were for two
    alone = tmp_path / "alone"
    shutil.copytree(out, alone)
    cfg = FinetuneConfig(model=str(minilm_no_dropout), batch_size=16, **{**FT, "cka_examples": 512})
    with pytest.raises(ConfigError, match="started with 2 process\\(es\\) and this run has 1; resume it with 2") as exc:
        finetune(cfg, alone, progress=False)
    assert "\n" not in str(exc.value)

    resumed = torchrun(*finetune_args(minilm_no_dropout, out))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "from the end of epoch 1" in resumed.stderr
    m = load_json(out / "metrics.json")
    for key in SAME:
        assert m[key] == uninterrupted[key], key


def test_diagnose_under_two_fsdp_ranks_reports_the_single_process_norms(tmp_path):
    common = [
        "--model",
        "minilm",
        "--device",
        "cpu",
        "--batches",
        2,
        "--batch-size",
        8,
        "--max-length",
        32,
        "--resamples",
        10,
    ]
    res = torchrun("diagnose", "--fsdp", *common, "--out", tmp_path / "fsdp")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "inflora", "diagnose", *map(str, common), "--out", tmp_path / "one"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = (json.loads((tmp_path / name / "diagnosis.json").read_text()) for name in ("fsdp", "one"))
    assert (a["config"]["sharding"], a["config"]["world_size"], b["config"]["world_size"]) == ("fsdp", 2, 1)
    # per-layer parameter-gradient norms of the FULL gradients: the squared norms of each rank's
    # shards summed over the ranks; equal to one process up to float32 reduce-scatter round-off
    for key, rtol in (("param_grad_norm", 1e-5), ("activation_grad_norm", 1e-6), ("attention_entropy", 1e-9)):
        close([r[key] for r in a["layers"]], [r[key] for r in b["layers"]], rtol)
    close(list(a["groups"].values()), list(b["groups"].values()), 1e-5)
    assert a["inflection_layers"] == b["inflection_layers"]
    # a shard alone would be about 1/sqrt(2) of the full norm: the comparison above can tell
    assert all(r["param_grad_norm"] > 0 for r in a["layers"])


def test_more_processes_than_probe_batches_is_one_line(tmp_path, tiny_bert_dir):
    res = torchrun(
        "diagnose",
        "--model",
        tiny_bert_dir,
        "--device",
        "cpu",
        "--batches",
        1,
        "--batch-size",
        4,
        "--max-length",
        16,
        "--out",
        tmp_path,
    )
    assert res.returncode != 0
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error: ")]
    assert errors and all("2 processes but only 1 probe batch(es)" in e for e in errors), res.stderr[-2000:]
    # each rank exits with 2 and no traceback of its own; torchrun then reports the failed child
    # with a traceback of its launcher (ChildFailedError), which is torchrun's, not inflora's
    assert "exitcode  : 2" in res.stderr
    assert res.stderr.count("Traceback") == res.stderr.count("ChildFailedError(")


def test_trainer_callback_under_two_gloo_ranks_reports_the_single_process_numbers(tmp_path):
    """Trainer + InflectionCallback, 2 DDP ranks × batch 4 against one process × batch 8 (same
    examples per step; a tiny dropout-free BERT, gradients clipped to 1e-6: the rows must be pre-clip)."""
    import callback_worker

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        str(HERE / "callback_worker.py"),
        str(tmp_path / "ddp"),
        "4",
    ]
    (tmp_path / "ddp").mkdir()
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = callback_worker.run(tmp_path / "one", 8)
    finally:
        torch.set_num_threads(threads)
    ranks = [json.loads((tmp_path / "ddp" / f"rows-rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank computes the same numbers
    assert not (tmp_path / "ddp" / "rows-rank1.json").samefile(tmp_path / "ddp" / "rows-rank0.json")
    written = json.loads((tmp_path / "ddp" / "profile.json").read_text())["grad_profile"]  # written by one rank
    assert [r["step"] for r in written] == [r["step"] for r in single] == [0, 1]
    for a, b in zip(ranks[0], single):
        for key in ("activation_grad_norm", "param_grad_norm"):
            close(a[key], b[key], 1e-5)
        close(
            [a["loss"], a["param_grad_norm_embeddings"], a["param_grad_norm_head"]],
            [b["loss"], b["param_grad_norm_embeddings"], b["param_grad_norm_head"]],
            1e-5,
        )
        assert min(a["param_grad_norm"]) > 1e-4  # far above the 1e-6 clip: pre-clip gradients
