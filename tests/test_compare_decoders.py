"""``inflora compare`` (and its oracle) on decoder LLMs with instruction data: tiny random-init Qwen2
on ``rt-instruct`` (scored by option accuracy) and tiny Llama on a free-text JSONL file (scored by the
validation completion loss, lower is better), end to end with a few units each."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from inflora.cli import app

runner = CliRunner()
FAST = [
    "--limit-train",
    16,
    "--limit-eval",
    16,
    "--batch-size",
    8,
    "--batches",
    2,
    "--diagnose-batch-size",
    4,
    "--max-length",
    48,
    "--budget",
    "layers=2",
]


def run(*args):
    return runner.invoke(app, ["compare", *[str(a) for a in args]], env={"COLUMNS": "80"})


def _units(folder):
    return {
        (u["rule"], u["seed"]): u
        for u in (json.loads(p.read_text()) for p in (folder / "units").glob("arm-*/result.json"))
    }


def test_compare_tiny_qwen2_on_rt_instruct_scores_option_accuracy(tmp_path):
    res = run(
        "--model",
        "tiny-qwen2",
        "--task",
        "rt-instruct",
        "--rules",
        "ski,top-grad,random,all",
        "--seeds",
        "1,2",
        "--lora-targets",
        "attention",
        *FAST,
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "compare.json").read_text())
    assert out["metric"] == "test" and {r["rule"] for r in out["table"]} == {"ski", "top-grad", "random", "all"}
    units = _units(tmp_path)
    assert len(units) == 8 and {len(u["layers"]) for (rule, _), u in units.items() if rule != "all"} == {2}
    for u in units.values():  # option accuracy, per example, beside the completion loss of each split
        assert np.mean(u["per_example"]["test"]["correct"]) == pytest.approx(u["accuracy"]["test"])
        losses = u["per_example"]["validation"]["completion_loss"]  # rows too long for --max-length are skipped
        assert len(losses) == len(u["per_example"]["validation"]["correct"]) > 8 and all(v > 0 for v in losses)
    run_cfg = json.loads(next((tmp_path / "units").glob("arm-*/run/metrics.json")).read_text())["config"]
    assert run_cfg["lora_targets"] == ["attention"]
    assert "matched-budget comparison" in res.output and "recommendation:" in res.output


def _free_text(path):
    words = ["river", "stone", "cloud", "ember", "field", "glass", "maple", "north"]
    rows = [
        {"prompt": f"Describe the {w} number {i}.", "completion": f" The {w} {i} is {words[(i * 3) % 8]}."}
        for i, w in enumerate(words * 5)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compare_and_oracle_on_tiny_llama_with_free_text_score_the_completion_loss(tmp_path):
    data = _free_text(tmp_path / "free.jsonl")
    res = run(
        "--model",
        "tiny-llama",
        "--task",
        data,
        "--rules",
        "ski,all",
        "--seeds",
        "1,2",
        "--oracle",
        "--blocks",
        "0,3",
        "--lora-targets",
        "mlp",
        *FAST,
        "--out",
        tmp_path / "out",
    )
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert out["metric"] == "completion_loss"
    units = _units(tmp_path / "out")
    for row in out["table"]:  # scores are minus the validation completion loss, seed by seed
        for seed, score in row["completion_loss"]["per_seed"].items():
            assert score == pytest.approx(-units[row["rule"], int(seed)]["completion"]["validation"]["completion_loss"])
    oracle = json.loads((tmp_path / "out" / "oracle.json").read_text())
    assert oracle["metric"] == "completion_loss" and oracle["blocks"] == [0, 3]
    gain = oracle["table"][1]["gain"]["per_seed"]["1"]  # block 3 alone: loss of head minus its own
    head, alone = (units[name, 1]["completion"]["validation"]["completion_loss"] for name in ("head", "block-3"))
    assert gain == pytest.approx(head - alone)
    assert "per-block oracle (nats)" in res.output and "nats" in (tmp_path / "out" / "compare.md").read_text()


def test_compare_refuses_a_lora_target_the_decoder_lacks_before_any_unit(tmp_path):
    res = run("--model", "tiny-llama", "--task", "rt-instruct", "--lora-targets", "c_attn", *FAST, "--out", tmp_path)
    assert res.exit_code == 2 and "error:" in res.output and not (tmp_path / "units").exists()
