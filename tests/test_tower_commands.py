"""``--tower`` on ``finetune`` and ``compare`` (as on ``diagnose``): the tiny vision-language model
trains LoRA on the chosen tower's blocks only, and a tower the model lacks, an unknown tower, or a
tower text cannot feed is one ``error:`` line with exit code 2, refused before any weights load."""

import json

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.models import set_tower, tiny_model
from inflora.models.tiny import VISION_LANGUAGE
from inflora.strategies import count_parameters
from inflora.strategies.lora import inject_lora

runner = CliRunner()
VL = f"tiny-{VISION_LANGUAGE[0]}"
SMALL = ["--task", "rt-instruct", "--limit-train", "8", "--limit-eval", "4", "--max-length", "64", "--batch-size", "4"]


def lora_count(tower: str) -> int:
    """Trainable parameters of LoRA (r=2) on block 1 of ``tower`` of a fresh tiny VL model."""
    model = tiny_model(VISION_LANGUAGE[0], task="causal-lm")
    set_tower(model, tower)
    return count_parameters(inject_lora(model, [1], r=2))[0]


def test_finetune_trains_the_language_tower_blocks_it_is_given(tmp_path, data_dir):
    res = runner.invoke(
        app,
        [
            "finetune",
            "--model",
            VL,
            *SMALL,
            "--strategy",
            "lora-inflection",
            "--layers",
            "1",
            "--lora-r",
            "2",
            "--tower",
            "language",
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["layers"] == [1]
    language, vision = lora_count("language"), lora_count("vision")
    assert language != vision  # the check below can tell the towers apart
    assert metrics["trainable_params"] == language


def test_compare_runs_on_the_language_tower(tmp_path, data_dir):
    res = runner.invoke(
        app,
        [
            "compare",
            "--model",
            VL,
            *SMALL,
            "--rules",
            "random",
            "--seeds",
            "1",
            "--budget",
            "layers=1",
            "--batches",
            "1",
            "--diagnose-batch-size",
            "4",
            "--tower",
            "language",
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "compare.json").read_text())
    assert result["meta"]["plan"]["tower"] == "language"


@pytest.mark.parametrize("command", ["finetune", "compare"])
@pytest.mark.parametrize(
    "model, tower, message",
    [
        ("tiny-llama", "vision", "error: LlamaForCausalLM has no vision tower; it has: language"),
        (VL, "vision", "error: the vision tower of qwen2_vl needs image inputs"),
        (VL, "audio", "error: unknown tower 'audio'; choose one of language, vision"),
    ],
)
def test_a_bad_tower_is_one_line_before_anything_loads(command, model, tower, message, tmp_path):
    res = runner.invoke(
        app, [command, "--model", model, "--task", "rt-instruct", "--tower", tower, "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not any(tmp_path.iterdir())  # refused before a run folder was filled
