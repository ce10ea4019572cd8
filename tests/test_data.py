import json
import shutil

import pytest

from inflora.data import decontaminate, load_file, load_task, normalize
from inflora.data.tasks import ENV_VAR
from inflora.errors import ChecksumError, ConfigError, DataError


@pytest.mark.parametrize(
    "task,split,n",
    [
        ("rotten_tomatoes", "train", 8530),
        ("rotten_tomatoes", "validation", 1066),
        ("rotten_tomatoes", "test", 1066),
        ("sst2", "validation", 872),
    ],
)
def test_split_sizes_and_balance(data_dir, task, split, n):
    ds = load_task(task, split, data_dir)
    assert len(ds) == n and ds.skipped == 0
    assert set(ds.labels) == {0, 1}


def test_rt_split_recipe_boundaries(data_dir):
    test = load_task("rotten_tomatoes", "test", data_dir)
    pos = [line.strip() for line in open(data_dir / "rotten_tomatoes/rt-polarity.pos", encoding="latin-1").readlines()]
    assert test.texts[0] == pos[4798] and test.labels[0] == 1 and test.labels[-1] == 0


def test_sst2_train_skips_nontextual_rows_and_counts_them(data_dir):
    clean = load_task("sst2", "train", data_dir)
    raw = load_task("sst2", "train", data_dir, skip_nontextual=False)
    assert len(raw) == 67349
    assert len(clean) + clean.skipped == 67349 and clean.skipped == 7
    assert all(any(c.isalpha() for c in t) for t in clean.texts)


def test_env_var_is_used(data_dir, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(data_dir))
    assert len(load_task("rotten_tomatoes", "test")) == 1066


def test_no_data_folder_offline_is_one_line_error(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="INFLORA_DATA_DIR") as exc:
        load_task("rotten_tomatoes", "test")
    assert "\n" not in str(exc.value)


def test_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_task("rotten_tomatoes", "test", tmp_path / "nope")
    with pytest.raises(DataError, match="missing data file"):
        load_task("rotten_tomatoes", "test", tmp_path)


def test_checksum_mismatch(data_dir, tmp_path):
    shutil.copytree(data_dir / "rotten_tomatoes", tmp_path / "rotten_tomatoes")
    with open(tmp_path / "rotten_tomatoes/rt-polarity.pos", "ab") as f:
        f.write(b"tampered line\n")
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        load_task("rotten_tomatoes", "test", tmp_path)


def test_unknown_task_and_split(data_dir):
    with pytest.raises(ConfigError, match="rotten_tomatoes"):
        load_task("imdb", "test", data_dir)
    with pytest.raises(DataError, match="no split 'test'"):
        load_task("sst2", "test", data_dir)


def test_decontamination_rt_test_against_sst2_train(data_dir):
    rt_test = load_task("rotten_tomatoes", "test", data_dir)
    clean = decontaminate(rt_test, load_task("sst2", "train", data_dir))
    assert clean.meta["removed"] == 761 and len(clean) == 1066 - 761
    assert normalize("Who's `` great '' [x]") == normalize(
        'who \'s " great " ( x )'.replace("(", "[").replace(")", "]")
    )


def test_stratified_subset_keeps_proportions(data_dir):
    sst = load_task("sst2", "validation", data_dir)
    sub = sst.stratified(100, seed=1)
    assert len(sub) == 100
    frac = sum(sub.labels) / 100
    assert abs(frac - sum(sst.labels) / len(sst)) <= 0.01 + 1e-9
    assert sst.stratified(100, seed=1).texts == sub.texts
    with pytest.raises(DataError):
        sst.stratified(0)


def test_one_class_is_rejected_when_required(data_dir):
    rt = load_task("rotten_tomatoes", "test", data_dir)
    pos_only = rt.subset([i for i, y in enumerate(rt.labels) if y == 1])
    with pytest.raises(DataError, match="1 class"):
        pos_only.require_classes()


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_user_files_with_custom_columns_and_bad_rows(tmp_path, fmt):
    rows = [("a fine film", "pos"), ("", "neg"), ("a dull film", "neg"), ("123", "pos"), ("great fun", "pos")]
    path = tmp_path / f"reviews.{fmt}"
    if fmt == "jsonl":
        lines = [json.dumps({"review": t, "y": y}) for t, y in rows] + ["{not json"]
        path.write_text("\n".join(lines) + "\n")
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_text("review" + sep + "y\n" + "".join(f"{t}{sep}{y}\n" for t, y in rows))
    ds = load_file(path, text_column="review", label_column="y", label_names=["neg", "pos"])
    assert ds.texts == ["a fine film", "a dull film", "great fun"]
    assert ds.labels == [1, 0, 1] and ds.num_labels == 2
    assert ds.skipped == (3 if fmt == "jsonl" else 2)


def test_user_file_errors(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\nhello world,0\n")
    with pytest.raises(DataError, match="no column 'sentence'"):
        load_file(p, text_column="sentence")
    with pytest.raises(DataError, match="does not exist"):
        load_file(tmp_path / "missing.csv")
    (tmp_path / "d.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match="unsupported"):
        load_file(tmp_path / "d.xlsx")
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_file(tmp_path / "d.parquet")
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n,0\n")
    with pytest.raises(DataError, match="no usable rows"):
        load_file(empty)


def test_length_sorted_batches_cover_each_row_once_shortest_first(data_dir, tokenizer):
    from inflora.data import EncodedSplit

    split = EncodedSplit(load_task("rotten_tomatoes", "validation").stratified(100, 0), tokenizer, 64)
    batches = list(split.batches(16, by_length=True))
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    plain = list(split.batches(16))
    assert sum(b["attention_mask"].sum() for b in batches) == sum(b["attention_mask"].sum() for b in plain)
    assert sorted(int(y) for b in batches for y in b["labels"]) == sorted(split.ds.labels)
    assert sum(b["input_ids"].numel() for b in batches) < sum(b["input_ids"].numel() for b in plain)


def test_length_sorted_evaluation_gives_the_plain_order_accuracy(data_dir, minilm):
    """Sorting only changes padding, and padding is masked: the same predictions."""
    import torch

    from inflora.data import EncodedSplit
    from inflora.models import load_model
    from inflora.training.evaluate import accuracy

    model, tok = load_model("minilm", num_labels=2)
    split = EncodedSplit(load_task("rotten_tomatoes", "test").stratified(200, 1), tok, 64)
    model.eval()
    with torch.no_grad():
        plain = sum(
            int((model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1) == b["labels"]).sum())
            for b in split.batches(32)
        ) / len(split)
    assert accuracy(model, split, 32) == plain


def test_load_any_splits_a_user_file_once_and_reads_split_files(tmp_path, caplog):
    """One file: disjoint stratified 80/10/10 splits covering every row, one skipped-rows warning
    for all three; a path with {split}: one file per split, labels named as in train."""
    import logging

    from inflora.data import load_any

    rows = [(f"review number {i} is {'good' if i % 3 else 'bad'}", "pos" if i % 3 else "neg") for i in range(60)]
    path = tmp_path / "r.csv"
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows) + ",pos\n")
    with caplog.at_level(logging.WARNING):
        parts = {s: load_any(path, s) for s in ("train", "validation", "test")}
    assert [len(p) for p in parts.values()] == [48, 6, 6]
    assert sorted(t for p in parts.values() for t in p.texts) == sorted(t for t, _ in rows)
    assert all(p.label_counts() == {0: n // 3, 1: 2 * n // 3} for p, n in zip(parts.values(), (48, 6, 6)))
    assert caplog.text.count("skipped 1 of 61 rows") == 1 and len(load_any(path, "all")) == 60
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text(
            "text,label\ngreat fun,pos\n" + ("dull,neg\n" if split == "train" else "")
        )
    test = load_any(tmp_path / "{split}.csv", "test")
    assert test.labels == [1] and test.num_labels == 2  # 'pos' keeps train's id although test lacks 'neg'
