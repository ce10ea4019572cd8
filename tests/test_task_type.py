"""The task type (classification or causal-lm) is decided by one function, ``inflora.data.task_type``,
from a name before loading and from the data after; a model built for that data says the same."""

import ast
import json
from pathlib import Path

import pytest

import inflora
from inflora.data import CAUSAL_LM, CLASSIFICATION, load_any, task_type
from inflora.diagnosis import load_model_for
from inflora.strategies.lora import task_type_of

ROOT = Path(inflora.__file__).parent


@pytest.mark.parametrize(
    "task, expected",
    [
        ("rotten_tomatoes", CLASSIFICATION),
        ("sst2", CLASSIFICATION),
        ("trec", CLASSIFICATION),
        ("rt-instruct", CAUSAL_LM),
    ],
)
def test_the_name_and_the_loaded_data_give_one_answer(task, expected):
    assert task_type(task) == expected
    assert task_type(load_any(task, "validation")) == expected


def test_a_file_is_read_by_its_columns(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"conversation": [{"role": "user", "content": "hi"}]}) + "\n")
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"text": "good", "label": 1}) + "\n")
    assert task_type(chat) == CLASSIFICATION  # not the default messages column ...
    assert task_type(chat, messages_column="conversation") == CAUSAL_LM  # ... but the one named
    assert task_type(str(plain)) == CLASSIFICATION
    assert task_type(tmp_path / "missing.jsonl") == CLASSIFICATION


@pytest.mark.parametrize("task", ["rotten_tomatoes", "rt-instruct"])
def test_the_model_loaded_for_the_data_has_the_same_task_type(task):
    data = load_any(task, "validation")
    model, _ = load_model_for("tiny-llama", data, seed=0)
    assert task_type_of(model) == task_type(data) == task_type(task)


def deciders(root: Path = ROOT) -> list[str]:
    """Places outside ``data/`` that decide the task type themselves: ``isinstance(x, InstructionDataset)``
    or a call of ``is_instruction_source``/``is_instruction_task``/``is_instruction_file``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "data":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if (
                name == "isinstance"
                and "InstructionDataset" in ast.unparse(node.args[1])
                or name in ("is_instruction_source", "is_instruction_task", "is_instruction_file")
            ):
                out.append(f"{path.relative_to(root)}:{node.lineno}")
    return out


def test_no_module_outside_data_decides_the_task_type_itself(tmp_path):
    assert deciders() == []
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "x.py").write_text(
        "def f(splits, cfg):\n    a = isinstance(splits['train'], InstructionDataset)\n"
        "    return a or is_instruction_source(cfg.task)\n"
    )
    assert deciders(tmp_path) == ["training/x.py:2", "training/x.py:3"]
