"""Decoder LLMs from the command line: diagnose a tiny causal LM on rt-instruct or an instruction
file with the completion-only loss; bad instruction input ends in one line and exit code 2."""

import copy
import json
import logging

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.diagnosis import Diagnosis
from inflora.errors import ConfigError
from inflora.models import ensure_pad_token

FAST = ["--batches", "2", "--batch-size", "4", "--resamples", "5", "--max-length", "48"]


def _run(*args):
    result = CliRunner().invoke(app, list(map(str, args)))
    return result.exit_code, result.output


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cli_diagnose_causal_lm_on_rt_instruct(tmp_path, family):
    code, out = _run("diagnose", "--model", f"tiny-{family}", "--task", "rt-instruct", *FAST, "--out", tmp_path)
    assert code == 0, out
    d = Diagnosis.from_json(tmp_path / "diagnosis.json")
    assert d.task_type == "causal-lm" and d.family == family and d.head_modules == [] and d.num_layers == 4
    assert d.config["mean_loss"] > 5  # a random-init model over a 30k vocabulary: about log(30522) = 10.3
    # output saturation per completion token (labels -100 on the prompt and padding are skipped)
    assert d.output["unit"] == "next-token position" and 0 < d.output["predictions"] < 2 * 4 * 48
    assert d.output["mean_confidence"] < 0.1 and d.output["nonfinite_batches"] == 0  # random init: flat over 30k


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_diagnose_instruction_file_reports_skipped_rows(tmp_path):
    rows = [{"prompt": f"Question {i}: is it good?", "completion": " yes" if i % 2 else " no"} for i in range(8)]
    rows += [
        {"prompt": "no answer"},
        {"prompt": "empty", "completion": ""},
        {"messages": [{"role": "user", "content": "hello"}]},
    ]
    code, out = _run(
        "diagnose",
        "--model",
        "tiny-qwen2",
        "--task",
        _jsonl(tmp_path / "d.jsonl", rows),
        *FAST,
        "--out",
        tmp_path / "out",
    )
    assert code == 0, out
    assert "d.jsonl: skipped 3 of 11 rows" in out and "chat without an assistant turn at line 11" in out
    assert "empty completion at line 10" in out


@pytest.mark.parametrize(
    "rows,args,match",
    [
        ([{"prompt": "p", "completion": ""}, {"prompt": "q"}], [], r"no usable rows \(2 skipped"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], [], r"no usable rows .*chat without an assistant turn"),
        (
            [{"prompt": "a very long prompt " * 20, "completion": " yes"}] * 3,
            ["--max-length", "8"],
            r"no example fits --max-length 8 \(\{'prompt alone longer than --max-length': 3\}\)",
        ),
    ],
)
def test_cli_bad_instruction_data_is_one_line(tmp_path, rows, args, match):
    import re

    code, out = _run(
        "diagnose",
        "--model",
        "tiny-llama",
        "--task",
        _jsonl(tmp_path / "bad.jsonl", rows),
        *FAST,
        *args,
        "--out",
        tmp_path / "out",
    )
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in out, out  # progress lines may precede it
    assert re.search(match, errors[0]), out


def test_tokenizer_without_pad_token_pads_with_eos(tokenizer, caplog):
    tok = copy.deepcopy(tokenizer)
    tok.pad_token, tok.eos_token = None, "[SEP]"
    with caplog.at_level(logging.WARNING):
        ensure_pad_token(tok)
    assert tok.pad_token == "[SEP]" and tok.pad_token_id == tok.eos_token_id
    assert "no pad token; padding with its EOS token" in caplog.text
    tok.pad_token, tok.eos_token = None, None
    with pytest.raises(ConfigError, match="neither a pad token nor an EOS token"):
        ensure_pad_token(tok)


@pytest.mark.parametrize("model,targets", [("tiny-llama", "c_fc"), ("tiny-gpt2", "mlp,gate_proj")])
def test_cli_finetune_unknown_lora_target_fails_before_loading(tmp_path, model, targets):
    code, out = _run(
        "finetune",
        "--model",
        model,
        "--task",
        "rt-instruct",
        "--strategy",
        "lora-all",
        "--lora-targets",
        targets,
        "--out",
        tmp_path,
    )
    assert code == 2 and out.startswith("error: LoRA target(s) ") and out.count("\n") == 1, out
    assert "match no module" in out and not (tmp_path / "config.json").exists()


def test_cli_finetune_causal_lm_reports_completion_loss(tmp_path):
    code, out = _run(
        "finetune",
        "--model",
        "tiny-gpt2",
        "--task",
        "rt-instruct",
        "--strategy",
        "lora-inflection",
        "--layers",
        "1,2",
        "--lora-targets",
        "mlp",
        "--limit-train",
        "16",
        "--limit-eval",
        "16",
        "--batch-size",
        "8",
        "--max-length",
        "48",
        "--out",
        tmp_path,
    )
    assert code == 0, out
    assert "validation completion loss" in out and "perplexity" in out
    report = (tmp_path / "report.md").read_text()
    assert "Completion loss (causal LM" in report and "validation, before training" in report


def test_cli_finetune_on_an_instruction_file_with_named_columns(tmp_path):
    rows = [
        {"question": f"Is {w} a good word number {i}?", "answer": " yes" if i % 2 else " no"}
        for i, w in enumerate(["fine", "grand", "dull", "bland", "great"] * 8)
    ]
    data = _jsonl(tmp_path / "qa.jsonl", rows)
    code, out = _run(
        "finetune",
        "--model",
        "tiny-llama",
        "--task",
        data,
        "--prompt-column",
        "question",
        "--completion-column",
        "answer",
        "--strategy",
        "lora-all",
        "--lora-targets",
        "attention",
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--out",
        tmp_path / "run",
    )
    assert code == 0, out
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["sizes"] == {"train": 32, "validation": 4, "test": 4}
    assert set(m["completion"]) == {"validation", "test"} and m["completion"]["test"]["completion_tokens"] == 4
