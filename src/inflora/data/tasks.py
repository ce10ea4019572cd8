"""Built-in tasks: exact split recipes from the shared data folder, else the Hugging Face hub.

The data folder comes from the ``data_dir`` argument, else ``$INFLORA_DATA_DIR``; without either we
try the hub (``datasets``) when it is reachable, and otherwise fail with one line naming the fix.
"""

from __future__ import annotations

import csv
import hashlib
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..errors import ChecksumError, DataError
from ..registry import Registry
from .dataset import TextDataset
from .instructions import InstructionDataset

ENV_VAR = "INFLORA_DATA_DIR"

CHECKSUMS = {
    "rotten_tomatoes/rt-polarity.pos": "2da124ec187a9d5a29c9f04e91c540e02baed5af8868f550a26bd6fd4dbf8bf0",
    "rotten_tomatoes/rt-polarity.neg": "4ace77d558c3714723843f1d65b60c01e3417b208180f0728808d76ad0eeeaca",
    "sst2/train.tsv": "5c47819a1d04cfabc7afcc79a919c97b0b367101ad42d3ff148d67bf501384c2",
    "sst2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "trec/train.all": "c8183fd8c2a5cc4a9a1c56548d7c6410a8b71ed7843df9ef1f0a05cd7cf2fb3e",
    "trec/test.all": "92a6a3cede5678b447ef5f1d7ec474134fcda211e6590e6fa627b4a2c68e4566",
}
# TREC publishes no validation split: a stratified 10 % of train, always with this seed.
TREC_VALIDATION_FRACTION, TREC_VALIDATION_SEED = 0.1, 0
TREC_CLASSES = ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM")  # label ids 0-5 as in the files


@dataclass(frozen=True)
class TaskSpec:
    name: str
    splits: tuple[str, ...]
    read_local: Callable[[Path, str, bool], tuple[list[str], list[int], int]]
    hub_id: tuple[str, ...]  # () : only from the shared data folder
    num_labels: int = 2
    prompt_template: str | None = None  # an instruction task: each text as a prompt...
    options: tuple[str, ...] = ()  # ...and the option of its label as the completion


TASKS: Registry[TaskSpec] = Registry("task")


def is_textual(text: str) -> bool:
    """A row needs at least one letter; punctuation- or number-only rows are data errors here."""
    return any(c.isalpha() for c in text)


def _keep(text: str, skip_nontextual: bool) -> bool:
    return bool(text) and (is_textual(text) or not skip_nontextual)


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified(root: Path, rel: str) -> Path:
    """The path of ``rel`` under ``root`` after checking it exists and matches its checksum."""
    path = root / rel
    if not path.is_file():
        raise DataError(f"missing data file {path} (SHA-256 {CHECKSUMS[rel]}; is {root} the shared data folder?)")
    st = path.stat()
    digest = _sha256(str(path), st.st_size, st.st_mtime)
    if digest != CHECKSUMS[rel]:
        raise ChecksumError(f"checksum mismatch for {path}: got SHA-256 {digest[:12]}…, expected {CHECKSUMS[rel]}")
    return path


def _read_rt(root: Path, split: str, skip_nontextual: bool) -> tuple[list[str], list[int], int]:
    # Latin-1 bytes; readlines() (not splitlines) so that U+0085 does not split a row.
    lines = {}
    for polarity in ("pos", "neg"):
        with open(verified(root, f"rotten_tomatoes/rt-polarity.{polarity}"), encoding="latin-1") as f:
            lines[polarity] = [line.strip() for line in f.readlines()]
    n = len(lines["pos"])
    i1, i2 = int(n * 0.8 + 0.5), int(n * 0.9 + 0.5)
    cut = {"train": slice(0, i1), "validation": slice(i1, i2), "test": slice(i2, None)}[split]
    texts, labels, skipped = [], [], 0
    for polarity, label in (("pos", 1), ("neg", 0)):
        for text in lines[polarity][cut]:
            if _keep(text, skip_nontextual):
                texts.append(text)
                labels.append(label)
            else:
                skipped += 1
    return texts, labels, skipped


def _read_sst2(root: Path, split: str, skip_nontextual: bool) -> tuple[list[str], list[int], int]:
    rel = {"train": "sst2/train.tsv", "validation": "sst2/dev.tsv"}[split]
    texts, labels, skipped = [], [], 0
    with open(verified(root, rel), encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            text, label = (row.get("sentence") or "").strip(), (row.get("label") or "").strip()
            if label in ("0", "1") and _keep(text, skip_nontextual):
                texts.append(text)
                labels.append(int(label))
            else:
                skipped += 1
    return texts, labels, skipped


def _read_trec_file(root: Path, rel: str) -> tuple[list[str], list[int], int]:
    """``<digit> <question>`` per line, Latin-1; a line without a known label or any letter is skipped."""
    texts, labels, skipped = [], [], 0
    with open(verified(root, rel), encoding="latin-1") as f:
        for line in f.readlines():
            label, _, text = line.strip().partition(" ")
            if label.isdigit() and int(label) < len(TREC_CLASSES) and _keep(text.strip(), True):
                texts.append(text.strip())
                labels.append(int(label))
            else:
                skipped += 1
    return texts, labels, skipped


def _read_trec(root: Path, split: str, skip_nontextual: bool) -> tuple[list[str], list[int], int]:
    if split == "test":
        return _read_trec_file(root, "trec/test.all")
    texts, labels, skipped = _read_trec_file(root, "trec/train.all")
    full = TextDataset(texts, labels, "trec", "train", len(TREC_CLASSES))
    held = set(full.stratified_indices(int(len(full) * TREC_VALIDATION_FRACTION + 0.5), TREC_VALIDATION_SEED))
    keep = [i for i in range(len(full)) if (i in held) == (split == "validation")]
    return [texts[i] for i in keep], [labels[i] for i in keep], skipped if split == "train" else 0


TASKS.register("rotten_tomatoes")(
    TaskSpec("rotten_tomatoes", ("train", "validation", "test"), _read_rt, ("rotten_tomatoes",))
)
TASKS.register("sst2")(TaskSpec("sst2", ("train", "validation"), _read_sst2, ("glue", "sst2")))
TASKS.register("trec")(TaskSpec("trec", ("train", "validation", "test"), _read_trec, (), num_labels=len(TREC_CLASSES)))
# Rotten Tomatoes for causal LMs: the same splits, rows and decontamination, as prompt -> ' positive'/' negative'.
TASKS.register("rt-instruct")(
    TaskSpec(
        "rt-instruct",
        ("train", "validation", "test"),
        _read_rt,
        ("rotten_tomatoes",),
        prompt_template="Review: {text}\nSentiment:",
        options=(" negative", " positive"),
    )
)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The folder to read from, or None when neither the argument nor the variable names one."""
    chosen = data_dir or os.environ.get(ENV_VAR)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        source = "--data-dir" if data_dir else ENV_VAR
        raise DataError(f"data folder {path} (from {source}) does not exist")
    return path


def hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _read_hub(spec: TaskSpec, split: str) -> tuple[list[str], list[int], int]:
    import datasets

    ds = datasets.load_dataset(*spec.hub_id, split=split)
    text_col = "text" if "text" in ds.column_names else "sentence"
    texts, labels, skipped = [], [], 0
    for text, label in zip(ds[text_col], ds["label"]):
        text = (text or "").strip()
        if label in (0, 1) and _keep(text, True):
            texts.append(text)
            labels.append(int(label))
        else:
            skipped += 1
    return texts, labels, skipped


def load_task(
    name: str, split: str, data_dir: str | os.PathLike | None = None, *, skip_nontextual: bool = True
) -> TextDataset:
    """Load one split of a built-in task (``rotten_tomatoes``, ``trec``: train/validation/test; ``sst2``:
    train/validation). TREC's validation is a stratified 10 % of its train file (seed 0), train the rest.

    ``skip_nontextual`` drops rows with no letter (SST-2 train has 7: "(", ")" and five numbers),
    counting them in ``skipped``; set it False for the raw GLUE row count.
    """
    spec = TASKS.get(name)
    if split not in spec.splits:
        raise DataError(f"task {name!r} has no split {split!r}; available: {', '.join(spec.splits)}")
    root = resolve_data_dir(data_dir)
    if root is not None:
        texts, labels, skipped = spec.read_local(root, split, skip_nontextual)
        source = str(root)
    elif spec.hub_id and hub_reachable():
        texts, labels, skipped = _read_hub(spec, split)
        source = "hub:" + "/".join(spec.hub_id)
    else:
        raise DataError(
            f"no data folder for {name!r}: pass --data-dir DIR or set {ENV_VAR} "
            + (
                "(the Hugging Face hub is not reachable)"
                if spec.hub_id
                else "(it is read from the shared data folder only)"
            )
        )
    ds = TextDataset(texts, labels, name, split, spec.num_labels, skipped, source).require_nonempty()
    return (
        InstructionDataset.from_labelled(ds, spec.prompt_template, list(spec.options)) if spec.prompt_template else ds
    )


def is_instruction_task(name: str) -> bool:
    return name in TASKS and TASKS.get(name).prompt_template is not None
