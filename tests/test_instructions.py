"""Instruction data: files, chat rendering, the completion-only mask, truncation, rt-instruct."""

import copy
import json
import logging

import pytest

from inflora.data import (
    EncodedInstructions,
    InstructionDataset,
    decontaminate,
    instruction_probe_batches,
    load_instructions,
    load_task,
)
from inflora.data.instructions import plain_chat_prompt, render
from inflora.errors import DataError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "is this film good"},
    {"role": "assistant", "content": "yes , very good"},
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from inflora.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


@pytest.fixture(scope="module")
def chat_tok(tok):
    t = copy.deepcopy(tok)
    t.chat_template = CHATML
    return t


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _one(prompt, completion, options=()):
    return InstructionDataset([str(prompt)], [0], prompts=[prompt], completions=[completion], options=list(options))


def _labelled(batch, row=0):
    ids, labels = batch["input_ids"][row], batch["labels"][row]
    keep = labels != -100
    assert (labels[keep] == ids[keep]).all()
    return ids[~keep & (batch["attention_mask"][row] == 1)].tolist(), ids[keep].tolist()


def test_completion_mask_covers_exactly_the_completion(tok):
    enc = EncodedInstructions(_one("Review: a fine film\nSentiment:", " positive"), tok, 64)
    prompt, completion = _labelled(next(enc.batches(1)))
    assert prompt == _ids(tok, "Review: a fine film\nSentiment:") and completion == _ids(tok, " positive")


def test_chat_uses_the_tokenizers_template(chat_tok):
    head, reply = render(CHAT[:2], CHAT[2]["content"], chat_tok)
    assert head.endswith("<|im_start|>assistant\n") and reply == "yes , very good<|im_end|>\n"
    enc = EncodedInstructions(load_like_file(CHAT), chat_tok, 128)
    prompt, completion = _labelled(next(enc.batches(1)))
    assert prompt == _ids(chat_tok, head) and completion == _ids(chat_tok, reply)


def test_chat_without_template_uses_the_plain_one(tok):
    head, reply = render(CHAT[:2], "yes , very good", tok)
    assert head == plain_chat_prompt(CHAT[:2]) == "System: be brief\nUser: is this film good\nAssistant:"
    assert reply == " yes , very good"
    prompt, completion = _labelled(next(EncodedInstructions(load_like_file(CHAT), tok, 128).batches(1)))
    assert completion == _ids(tok, " yes , very good") and prompt == _ids(tok, head)


def load_like_file(chat):
    return InstructionDataset(["x"], [0], prompts=[chat[:-1]], completions=[chat[-1]["content"]])


def test_over_long_example_loses_prompt_tokens_from_the_left(tok, caplog):
    prompt = "one two three four five six seven eight"
    ds = InstructionDataset(["a", "b"], [0, 0], prompts=[prompt, "short"], completions=[" nine ten", " ok"])
    with caplog.at_level(logging.WARNING):
        enc = EncodedInstructions(ds, tok, 9)
    assert enc.truncated == 1 and enc.skipped == 0 and "1 example(s) lost prompt tokens" in caplog.text
    kept, completion = _labelled(enc.collate_rows([0]))
    assert completion == _ids(tok, " nine ten") and kept == _ids(tok, prompt)[-7:]


def test_rows_that_cannot_fit_are_skipped_and_counted(tok):
    ds = InstructionDataset(
        ["a", "b", "c"],
        [0] * 3,
        prompts=["one two three four five six seven", "x", "y"],
        completions=[" ok", " a b c d e f g h", " fine"],
    )
    enc = EncodedInstructions(ds, tok, 5)
    assert len(enc) == 1 and enc.stats()["skipped_reasons"] == {
        "prompt alone longer than --max-length": 1,
        "completion leaves no room for the prompt within --max-length": 1,
    }
    with pytest.raises(DataError, match="no example fits --max-length 2"):
        EncodedInstructions(ds.subset([0, 1]), tok, 2)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_files_with_prompt_completion_columns(tmp_path, suffix):
    rows = [{"q": f"question {i}", "a": " yes" if i % 2 else " no"} for i in range(6)]
    rows += [{"q": "no answer", "a": None}, {"q": "empty answer", "a": "  "}]
    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".csv":
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, ["q", "a"])
            w.writeheader()
            w.writerows([{**r, "a": r["a"] or ""} for r in rows])  # CSV has no null: both are empty
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    ds = load_instructions(path, "q", "a")
    assert len(ds) == 6 and ds.prompts[1] == "question 1" and ds.completions[1] == " yes"
    assert ds.options == [" no", " yes"] and ds.labels[:2] == [0, 1]
    assert ds.skipped == (3 if suffix == ".jsonl" else 2) and ds.meta["skipped_reasons"]["empty completion"] >= 1


def test_chat_files_skip_chats_without_a_reply(tmp_path):
    rows = [{"messages": CHAT}, {"messages": CHAT[:2]}, {"messages": CHAT[:2] + [{"role": "assistant", "content": ""}]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_instructions(path)
    assert len(ds) == 1 and ds.prompts[0] == CHAT[:2] and ds.completions[0] == "yes , very good"
    assert ds.meta["skipped_reasons"] == {"chat without an assistant turn": 1, "empty completion": 1}
    assert ds.options == []  # a free-text completion is not a label
    path.write_text(json.dumps({"messages": CHAT[:2]}) + "\n")
    with pytest.raises(DataError, match="no usable rows.*chat without an assistant turn"):
        load_instructions(path)
    path.write_text(json.dumps({"text": "x", "label": 1}) + "\n")
    with pytest.raises(DataError, match="no column 'prompt'"):
        load_instructions(path)


@pytest.mark.real
def test_rt_instruct_keeps_rotten_tomatoes_splits_and_decontamination(data_dir):
    for split, n in (("train", 8530), ("validation", 1066), ("test", 1066)):
        ds = load_task("rt-instruct", split, data_dir)
        rt = load_task("rotten_tomatoes", split, data_dir)
        assert len(ds) == n and ds.texts == rt.texts and ds.labels == rt.labels
    assert ds.prompts[0] == f"Review: {rt.texts[0]}\nSentiment:" and ds.completions[0] == " positive"
    assert ds.options == [" negative", " positive"] and ds.completions[-1] == " negative"
    clean = decontaminate(ds, load_task("sst2", "train", data_dir))
    assert isinstance(clean, InstructionDataset) and len(clean) == 1066 - 761
    assert all(c == clean.options[y] for c, y in zip(clean.completions, clean.labels))


@pytest.mark.real
def test_instruction_probe_batches_are_stratified_and_masked(data_dir, tok):
    batches = instruction_probe_batches(
        load_task("rt-instruct", "validation", data_dir), tok, batches=2, batch_size=8, max_length=64
    )
    assert len(batches) == 2
    for b in batches:
        labelled = b["labels"][b["labels"] != -100]
        assert set(labelled.tolist()) <= {_ids(tok, " positive")[0], _ids(tok, " negative")[0]}
        assert len(labelled) == 8
