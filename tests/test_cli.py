"""The command line: outputs on the real model, one-line errors, remedy flags."""

import json

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.models import tiny_model

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def tiny_dir(tiny_bert_dir):
    return tiny_bert_dir  # the session's saved tiny BERT (conftest), read-only here


@pytest.mark.real
def test_diagnose_writes_json_reports_and_summary(tmp_path, data_dir):
    res = run(
        "diagnose",
        "--model",
        "minilm",
        "--batches",
        2,
        "--batch-size",
        16,
        "--max-length",
        32,
        "--resamples",
        20,
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "diagnosis.json").read_text())
    assert d["num_layers"] == 6 and len(d["layers"]) == 6 and d["selection"]["rule"] == "ski"
    for name in ("report.html", "report.md", "profile.png", "heads.png", "reliability.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "inflection band" in res.output and "◀ band" in res.output
    assert d["output"]["predictions"] == 32 and "output (32 examples): accuracy" in res.output
    assert d["config"]["attention"] == "streaming" and "streamed beside SDPA" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        (["diagnose", "--batches", "0"], "--batches must be at least 1"),
        (["diagnose", "--rule", "nope"], "unknown selection rule 'nope'"),
        (["diagnose", "--task", "imdb"], "unknown task 'imdb'"),
        (["finetune", "--strategy", "nope"], "unknown strategy 'nope'"),
        (["finetune", "--layers", "a,b"], "--layers expects block indices separated by commas"),
        (
            ["finetune", "--sd-lambda", "0.1"],
            "--sd-lambda is an option of remedy 'spectral-decoupling', which was not chosen",
        ),
        (["finetune", "--remedy", "spectral-decoupling", "--sd-lambda", "abc"], "cannot read 'abc' as float"),
        (["finetune", "--remedy", "magic"], "unknown remedy 'magic'"),
        (["experiment", "--profile", "huge"], "unknown profile 'huge'"),
        (["diagnose", "--attention", "fast"], "unknown attention mode 'fast'; choose one of streaming, eager"),
        (["diagnose", "--entropy-queries", "0"], "--entropy-queries must be at least 1"),
    ],
)
def test_bad_input_is_one_line_error(args, message, tmp_path):
    res = run(*args, "--out", tmp_path)
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1


def test_missing_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("INFLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    res = run("diagnose", "--out", tmp_path)
    assert res.exit_code == 2 and "INFLORA_DATA_DIR" in res.output


def test_finetune_with_a_remedy_flag(tiny_dir, tmp_path):
    res = run(
        "finetune",
        "--model",
        tiny_dir,
        "--strategy",
        "lora-all",
        "--limit-train",
        32,
        "--limit-eval",
        16,
        "--max-length",
        24,
        "--log-every",
        1,
        "--remedy",
        "spectral-decoupling",
        "--sd-lambda",
        "0.05",
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    # kept as the option's declared type (a float), not the text typed: the API's 0.05 names the same run
    assert m["config"]["remedy_options"] == {"spectral-decoupling": {"sd_lambda": 0.05}}
    assert m["remedy_metrics"] and "starvation.saturated_frac" in m["remedy_metrics"][0]
    assert (tmp_path / "report.html").exists()
    # the remedy's saturated share and the profile's output section are one measurement of the same forward
    by_step = {r["step"]: r for r in m["grad_profile"]}
    for r in m["remedy_metrics"]:
        out = by_step[r["step"]]["output"]
        assert r["starvation.saturated_frac"] == pytest.approx(out["share_true_class_over_0.99"], abs=1e-12)
    assert "Output saturation during training" in (tmp_path / "report.md").read_text()


def test_diagnose_with_sampled_entropy_queries_reports_an_estimate(tiny_dir, tmp_path):
    res = run(
        "diagnose",
        "--model",
        tiny_dir,
        "--batches",
        2,
        "--batch-size",
        8,
        "--max-length",
        32,
        "--resamples",
        0,
        "--entropy-queries",
        4,
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "diagnosis.json").read_text())
    assert d["config"]["entropy_queries"] == 4 and d["config"]["attention"] == "streaming"
    assert all(row["attention_entropy_se"] > 0 for row in d["layers"])
    report = (tmp_path / "report.md").read_text()
    assert "**estimate**" in report and "entropy SE" in report
    assert "estimate from 4 sampled queries" in res.output


def test_streaming_attention_on_mpnet_is_one_line_error_naming_the_families(tokenizer, tmp_path):
    path = tmp_path / "mpnet"
    tiny_model("mpnet", layers=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    res = run("diagnose", "--model", path, "--attention", "streaming", "--batches", 1, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'mpnet' does not" in errors[0] and "bert" in errors[0] and "qwen2" in errors[0]
