"""A fuzzed boundary (issue 21): generated junk through the file readers (labelled and instruction
files as CSV, TSV, JSONL and Parquet), ``Diagnosis.from_json`` and the CLI's argument parsing.
Every case either works or ends in an ``InfloraError`` (ConfigError/DataError) whose message is one
line; nothing else may escape. A few hundred examples per property keep the suite's time budget."""

import ast
import csv
import io
import itertools
import json
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from inflora.data import load_any
from inflora.diagnosis import Diagnosis, diagnose
from inflora.errors import InfloraError
from inflora.models import tiny_model

pytestmark = pytest.mark.fuzz
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
COLUMNS = ("text", "label", "prompt", "completion", "messages")
counter = itertools.count()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["", " ", "0", "1", "-1", "pos", "neg", "é\x00\n"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
rows = st.lists(
    st.dictionaries(st.one_of(st.sampled_from(COLUMNS), st.text(max_size=6)), json_values, max_size=5), max_size=12
)


def one_line_or_works(call):
    """Run ``call``: a result, or an InfloraError with a one-line message; anything else fails the test."""
    try:
        return call()
    except InfloraError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return None


def fresh(tmp_path, suffix: str):
    return tmp_path / f"f{next(counter)}{suffix}"


def read_all_ways(path):
    """The file as labelled text and as instructions (how ``--task FILE`` reads it)."""
    one_line_or_works(lambda: load_any(path, "all"))
    one_line_or_works(lambda: load_any(path, "train", prompt_column="prompt", completion_column="completion"))
    one_line_or_works(lambda: load_any(path, "all", text_column="prompt", label_column="completion"))


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_file_readers_survive_arbitrary_bytes(tmp_path, data, suffix):
    path = fresh(tmp_path, suffix)
    path.write_bytes(data)
    read_all_ways(path)


def _write_rows(path, records: list[dict]) -> None:
    """The records in the file's own format (cells that are not text go in as JSON where needed)."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.write_table(pa.Table.from_pylist(records), path)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            assume(False)  # pyarrow cannot type or store these columns: no such Parquet file exists
    else:
        keys = sorted({k for r in records for k in r}) or ["text"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, keys, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writeheader()
        for r in records:
            writer.writerow({k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()})
        path.write_text(buf.getvalue())


@FUZZ
@given(records=rows, suffix=st.sampled_from(SUFFIXES))
def test_file_readers_survive_junk_rows(tmp_path, records, suffix):
    path = fresh(tmp_path, suffix)
    _write_rows(path, records)
    read_all_ways(path)


@pytest.fixture(scope="module")
def diagnosis_dict(tmp_path_factory):
    import torch

    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(5, 100, (4, 8), generator=g),
        "attention_mask": torch.ones(4, 8, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0, 1]),
    }
    d = diagnose(tiny_model("bert", layers=4, hidden=32), [batch, batch], progress=False, resamples=2)
    path = tmp_path_factory.mktemp("d") / "diagnosis.json"
    d.to_json(path)
    return json.loads(path.read_text())


def check_export_is_data(d: Diagnosis, tmp_path) -> None:
    """An accepted diagnosis exports as a TRL file of one import, one assignment and comments."""
    from inflora.export import export_config

    done = one_line_or_works(lambda: export_config(d, "trl", fresh(tmp_path, ".py")))
    if done is not None:
        tree = ast.parse(done.path.read_text())
        assert [type(n) for n in tree.body] == [ast.ImportFrom, ast.Assign]
        ast.literal_eval(tree.body[1].value.keywords[0].value)


@FUZZ
@given(field=st.sampled_from(list(Diagnosis.__dataclass_fields__) + ["unknown"]), value=json_values)
def test_from_json_survives_a_junk_field(diagnosis_dict, tmp_path, field, value):
    path = fresh(tmp_path, ".json")
    path.write_text(json.dumps({**diagnosis_dict, field: value}))
    d = one_line_or_works(lambda: Diagnosis.from_json(path))
    if d is not None:
        check_export_is_data(d, tmp_path)


@FUZZ
@given(value=json_values)
def test_from_json_survives_any_json(tmp_path, value):
    path = fresh(tmp_path, ".json")
    path.write_text(json.dumps(value))
    one_line_or_works(lambda: Diagnosis.from_json(path))


@FUZZ
@given(text=st.text(max_size=40))
def test_cli_value_parsers_survive_junk(text):
    from inflora.cli.diagnose import parse_params
    from inflora.cli.experiment import _split
    from inflora.validate import parse_blocks
    from inflora.select import rule_parameters
    from inflora.strategies.budget import Budget

    one_line_or_works(lambda: Budget.parse(text))
    one_line_or_works(lambda: parse_blocks(text))
    one_line_or_works(lambda: _split(text, int))
    params = one_line_or_works(lambda: parse_params([text]))
    if params is not None:
        for rule in ("ski", "topk", "threshold"):
            one_line_or_works(lambda rule=rule: rule_parameters(rule, params))


runner = CliRunner()
cli_text = st.one_of(st.text(max_size=12), st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e309", "0.5", "8", "1"]))


@FUZZ
@given(
    fmt=st.one_of(st.sampled_from(["trl", "axolotl", "json", "peft"]), st.text(max_size=6)),
    r=cli_text,
    alpha=cli_text,
    dropout=cli_text,
    targets=st.one_of(st.sampled_from(["qkv", "mlp", "all"]), st.text(max_size=12)),
)
def test_cli_export_arguments_work_or_end_in_one_error_line(diagnosis_dict, tmp_path, fmt, r, alpha, dropout, targets):
    path = fresh(tmp_path, ".json")
    path.write_text(json.dumps(diagnosis_dict))
    res = runner.invoke(
        app_(),
        [
            "export",
            str(path),
            "--format",
            fmt,
            "--lora-r",
            r,
            "--lora-alpha",
            alpha,
            "--lora-dropout",
            dropout,
            "--lora-targets",
            targets,
            "--out",
            str(fresh(tmp_path, "")),
        ],
    )
    assert res.exit_code in (0, 2), res.output
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, res.stderr
    else:
        assert int(r) >= 1 and 0 <= float(dropout) < 1 and math.isfinite(float(dropout))


def app_():
    from inflora.cli import app

    return app
