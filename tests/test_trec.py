"""TREC as a built-in task: the published 5,452 / 500 split read from the shared folder (Latin-1),
a stratified 10 % validation cut of train with a fixed seed, six coarse labels, and checksums
whose failure names the file and the expected SHA-256."""

import hashlib
import shutil
from collections import Counter

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.data import load_task
from inflora.data.tasks import CHECKSUMS, TREC_CLASSES
from inflora.errors import ChecksumError, DataError


def raw_lines(data_dir, name):
    """Slow reference: each line's label digit and question, straight from the bytes."""
    with open(data_dir / "trec" / name, "rb") as f:
        rows = [line.decode("latin-1").rstrip("\n") for line in f]
    return [(int(r[0]), r[2:].strip()) for r in rows]


def test_trec_split_sizes_and_labels(data_dir):
    train_file, test_file = raw_lines(data_dir, "train.all"), raw_lines(data_dir, "test.all")
    assert (len(train_file), len(test_file)) == (5452, 500)  # the standard split (data README)
    train, val, test = (load_task("trec", s, data_dir) for s in ("train", "validation", "test"))
    assert len(val) == round(0.1 * len(train_file)) and len(train) + len(val) == len(train_file)
    assert list(zip(test.labels, test.texts)) == test_file
    assert sorted(zip(train.labels + val.labels, train.texts + val.texts)) == sorted(train_file)
    assert {ds.num_labels for ds in (train, val, test)} == {len(TREC_CLASSES)} == {6}
    assert set(train.labels) == set(val.labels) == set(test.labels) == set(range(6))
    whole = Counter(label for label, _ in train_file)
    for label, n in whole.items():  # stratified: each class keeps its share of the cut, to one example
        assert abs(val.label_counts()[label] - 0.1 * n) <= 1


def test_trec_validation_is_fixed_and_disjoint(data_dir):
    a, b = load_task("trec", "validation", data_dir), load_task("trec", "validation", data_dir)
    assert a.texts == b.texts and a.labels == b.labels
    train = load_task("trec", "train", data_dir)
    held, kept = Counter(zip(a.labels, a.texts)), Counter(zip(train.labels, train.texts))
    assert held + kept == Counter(raw_lines(data_dir, "train.all"))  # every row once, in one of the two


def test_trec_latin1_line_is_read(data_dir):
    texts = load_task("trec", "train", data_dir).texts + load_task("trec", "validation", data_dir).texts
    assert any(any(ord(c) > 127 for c in t) for t in texts)


@pytest.mark.parametrize("name", ["train.all", "test.all"])
def test_trec_checksums_match_the_files(data_dir, name):
    digest = hashlib.sha256((data_dir / "trec" / name).read_bytes()).hexdigest()
    assert CHECKSUMS[f"trec/{name}"] == digest


def test_altered_trec_file_names_file_and_expected_sha256(data_dir, tmp_path):
    shutil.copytree(data_dir / "trec", tmp_path / "trec")
    with open(tmp_path / "trec" / "test.all", "ab") as f:
        f.write(b"5 How many lines were added ?\n")
    with pytest.raises(ChecksumError) as exc:
        load_task("trec", "test", tmp_path)
    assert str(tmp_path / "trec" / "test.all") in str(exc.value) and CHECKSUMS["trec/test.all"] in str(exc.value)


def test_missing_trec_file_is_one_line_cli_error(data_dir, tmp_path):
    (tmp_path / "trec").mkdir()
    shutil.copy(data_dir / "trec" / "test.all", tmp_path / "trec" / "test.all")
    with pytest.raises(DataError, match="train.all"):
        load_task("trec", "validation", tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "--model",
            "minilm",
            "--task",
            "trec",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 2 and "error:" in result.output and "train.all" in result.output
    assert CHECKSUMS["trec/train.all"] in result.output.replace("\n", "")
    assert "Traceback" not in result.output
