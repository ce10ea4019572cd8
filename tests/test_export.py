"""``inflora export``: every format round-trips into PEFT with inflora's own trainable count, and the
``--model`` dry run refuses a band, target or architecture that does not fit."""

import json
import re

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.diagnosis import Diagnosis, diagnose
from inflora.export import export_config
from inflora.models import tiny_model
from inflora.strategies import count_parameters, inject_lora

DECODERS = ["llama", "qwen2", "gpt2"]


@pytest.fixture(scope="module")
def diagnoses(tokenizer, data_dir, tmp_path_factory):
    """One real (tiny) causal-LM diagnosis per decoder family on rt-instruct, saved as diagnosis.json."""
    from inflora.data import load_task

    val = load_task("rt-instruct", "validation", data_dir)
    out = {}
    for family in DECODERS:
        d = diagnose(
            tiny_model(family, task="causal-lm"),
            val,
            tokenizer,
            batches=2,
            batch_size=8,
            max_length=48,
            progress=False,
            resamples=5,
        )
        d.model = f"tiny-{family}"
        d.inflection_layers = d.inflection_layers or [1, 2]  # a random-init profile may have no peak
        path = tmp_path_factory.mktemp(family) / "diagnosis.json"
        d.to_json(path)
        out[family] = path
    return out


def _axolotl_lora_config(fragment: dict):
    """The LoraConfig Axolotl builds from these keys (its load_lora)."""
    from peft import LoraConfig

    return LoraConfig(
        r=fragment["lora_r"],
        lora_alpha=fragment["lora_alpha"],
        lora_dropout=fragment["lora_dropout"],
        target_modules=fragment["lora_target_modules"],
        layers_to_transform=fragment["peft_layers_to_transform"],
        layers_pattern=fragment["peft_layers_pattern"],
        fan_in_fan_out=fragment.get("lora_fan_in_fan_out", False),
        modules_to_save=fragment.get("lora_modules_to_save"),
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_back(fmt: str, path):
    """Each format read the way its consumer reads it."""
    import yaml
    from peft import LoraConfig

    if fmt == "peft":
        return LoraConfig.from_pretrained(str(path))
    if fmt == "axolotl":
        return _axolotl_lora_config(yaml.safe_load(path.read_text()))
    if fmt == "trl":
        scope: dict = {}
        exec(path.read_text(), scope)  # the snippet a TRL user pastes: peft_config = LoraConfig(...)
        return scope["peft_config"]
    return LoraConfig(**json.loads(path.read_text())["lora_config"])


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("fmt", ["peft", "axolotl", "trl", "json"])
def test_every_format_round_trips_to_inflora_trainable_count(diagnoses, tmp_path, family, fmt):
    from peft import get_peft_model

    d = Diagnosis.from_json(diagnoses[family])
    targets = "all" if fmt in ("axolotl", "trl") else None  # MLP targets through two of the formats
    done = export_config(d, fmt, tmp_path / fmt, model=f"tiny-{family}", targets=targets, r=4)
    loaded = load_back(fmt, done.path)
    assert loaded.layers_to_transform == d.inflection_layers
    theirs = count_parameters(get_peft_model(tiny_model(family, task="causal-lm"), loaded))
    ours = count_parameters(
        inject_lora(tiny_model(family, task="causal-lm"), d.inflection_layers, targets=targets, r=4)
    )
    assert theirs == ours and ours[0] > 0
    per_layer = 3 if targets is None and family != "gpt2" else (1 if targets is None else None)
    if per_layer:
        assert sum(done.matched.values()) == per_layer * len(d.inflection_layers)


def _run(*args):
    result = CliRunner().invoke(app, list(map(str, args)))
    return result.exit_code, result.output


def test_cli_export_with_model_prints_matched_count(diagnoses, tmp_path):
    code, out = _run(
        "export",
        diagnoses["qwen2"],
        "--format",
        "axolotl",
        "--model",
        "tiny-qwen2",
        "--lora-targets",
        "mlp",
        "--out",
        tmp_path / "a.yaml",
    )
    n = len(Diagnosis.from_json(diagnoses["qwen2"]).inflection_layers)
    assert code == 0, out
    assert re.search(rf"dry run on tiny-qwen2: {3 * n} modules matched", out)
    assert "peft_layers_to_transform" in (tmp_path / "a.yaml").read_text()


@pytest.mark.parametrize(
    "change,args,match",
    [
        (
            {"inflection_layers": [1, 9]},
            ["--model", "tiny-llama"],  # refused on reading, before the dry run
            r"diagnosis\.json: inflection_layers: Value error, layers \[9\] are outside the model's 0\.\.3",
        ),
        ({}, ["--model", "tiny-llama", "--lora-targets", "c_fc"], r"\['c_fc'\] match no module"),
        ({}, ["--model", "tiny-gpt2"], r"made on a llama model .* but --model tiny-gpt2 is gpt2"),
        ({}, ["--format", "onnx"], r"unknown export format 'onnx'; choose one of: peft, axolotl, trl, json"),
    ],
)
def test_cli_export_refuses_what_does_not_fit(diagnoses, tmp_path, change, args, match):
    data = json.loads(diagnoses["llama"].read_text())
    data.update(change)
    path = tmp_path / "diagnosis.json"
    path.write_text(json.dumps(data))
    code, out = _run("export", path, *args)
    assert code == 2 and out.startswith("error: ") and out.count("\n") == 1, out
    assert re.search(match, out), out
    assert not (tmp_path / "peft-lora").exists()
