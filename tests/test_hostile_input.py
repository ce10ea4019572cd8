"""Issue 21: nothing a file says can run code, and no input ends in a traceback.

One CLI test per case the issue found (exit code 2, exactly one ``error:`` line, no traceback), the
export injection tests (the TRL file is an import, one assignment and comments; the Axolotl YAML
holds exactly inflora's keys), and files that are malformed or hostile where inflora reads them
back (diagnosis, run folder, checkpoint, unit cache): ``<file>: <field>: <why>``.
"""

import ast
import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from inflora.cli import app
from inflora.data import load_file, load_task
from inflora.diagnosis import Diagnosis, diagnose
from inflora.diagnosis_schema import FORMAT_VERSION
from inflora.errors import DataError
from inflora.export import export_config
from inflora.models import tiny_model

runner = CliRunner()
PYTHON_INJECTION = "tiny-llama\nprint('INJECTED')\n#"
YAML_INJECTION = "x\nplugins:\n  - some.module.Plugin\n#"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(res, pattern: str) -> str:
    """Exit code 2, one line ``error: …`` on stderr matching ``pattern``, no traceback anywhere."""
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2, res.output
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def llama_diagnosis(tokenizer, data_dir, tmp_path_factory):
    """A real (tiny, random-init) causal-LM diagnosis on rt-instruct, as a dict and as a file."""
    val = load_task("rt-instruct", "validation", data_dir)
    d = diagnose(
        tiny_model("llama", task="causal-lm"),
        val,
        tokenizer,
        batches=2,
        batch_size=8,
        max_length=48,
        progress=False,
        resamples=5,
    )
    d.model, d.inflection_layers = "tiny-llama", d.inflection_layers or [1, 2]
    path = tmp_path_factory.mktemp("diag") / "diagnosis.json"
    d.to_json(path)
    return json.loads(path.read_text()), path


def hostile_file(tmp_path, data: dict, **change):
    path = tmp_path / "diagnosis.json"
    path.write_text(json.dumps({**data, **change}))
    return path


# -- 1. code injection through an exported config ------------------------------------------------


@pytest.mark.parametrize("model", [PYTHON_INJECTION, YAML_INJECTION])
def test_cli_export_refuses_a_diagnosis_whose_model_holds_code(llama_diagnosis, tmp_path, model):
    path = hostile_file(tmp_path, llama_diagnosis[0], model=model)
    for fmt in ("trl", "axolotl"):
        refused(run("export", path, "--format", fmt), r"diagnosis\.json: model: .*line break or control character")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diagnosis.json"]


def only_import_assignment_and_comments(source: str) -> dict:
    """The TRL file's statements are exactly ``from peft import LoraConfig`` and
    ``peft_config = LoraConfig(**<dict literal>)``; returns that literal."""
    tree = ast.parse(source)
    assert [type(node) for node in tree.body] == [ast.ImportFrom, ast.Assign], ast.dump(tree)
    imp, assign = tree.body
    assert imp.module == "peft" and [a.name for a in imp.names] == ["LoraConfig"] and not imp.level
    assert [t.id for t in assign.targets] == ["peft_config"]
    call = assign.value
    assert isinstance(call, ast.Call) and call.func.id == "LoraConfig" and not call.args
    assert len(call.keywords) == 1 and call.keywords[0].arg is None  # LoraConfig(**{...})
    return ast.literal_eval(call.keywords[0].value)  # raises unless the dict is literals only


@pytest.mark.parametrize(
    "field,value",
    [
        ("model", PYTHON_INJECTION),
        ("model", YAML_INJECTION),
        ("model", "x\u2028y = 1\x85\x00"),
        ("task_type", "causal-lm\r\nx = 1"),
    ],
)
def test_exported_files_from_a_hostile_diagnosis_hold_no_code(llama_diagnosis, tmp_path, field, value):
    """The loader refuses such a file; export itself must still be safe with any Diagnosis it is given."""
    data = {**llama_diagnosis[0], "task_type": "causal-lm"}
    d = Diagnosis(**data)
    setattr(d, field, value)
    d.selection = {**d.selection, "rule": "ski\nprint('rule')"}
    trl = export_config(d, "trl", tmp_path / "peft_config.py", targets="mlp", r=4).path.read_text()
    kwargs = only_import_assignment_and_comments(trl)
    assert kwargs["layers_to_transform"] == d.inflection_layers and kwargs["r"] == 4
    assert all(line.startswith("# ") for line in trl.splitlines()[:2])
    scope: dict = {}
    exec(compile(trl, "peft_config.py", "exec"), scope)  # runs: nothing but the import and the assignment
    assert sorted(k for k in scope if k != "__builtins__") == ["LoraConfig", "peft_config"]
    assert scope["peft_config"].layers_to_transform == d.inflection_layers

    text = export_config(d, "axolotl", tmp_path / "a.yaml", targets="mlp", r=4).path.read_text()
    comments = [line for line in text.splitlines() if not re.match(r"[a-z_]+:|- ", line)]
    assert comments and all(line.startswith("# ") for line in comments), comments
    fragment = yaml.safe_load(text)
    assert set(fragment) == {
        "adapter",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "peft_layers_to_transform",
        "peft_layers_pattern",
    }
    assert fragment["peft_layers_to_transform"] == d.inflection_layers

    meta = json.loads(export_config(d, "json", tmp_path / "l.json").path.read_text())["inflora"]
    assert meta[field] == value  # JSON keeps the value, as data


# -- 2. a CSV that is not UTF-8 -------------------------------------------------------------------


def test_cli_diagnose_refuses_a_utf16_csv_naming_the_byte(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes("text,label\ngood film,1\n".encode("utf-16"))  # starts ff fe, then 't' 00
    refused(run("diagnose", "--task", path, "--out", tmp_path / "out"), r"reviews\.csv: byte 3 is NUL")


def test_cli_diagnose_reads_latin1_with_one_warning(tiny_bert_dir, data_dir, tmp_path):
    ds = load_task("rotten_tomatoes", "validation", data_dir).stratified(40, seed=0)
    ascii_texts = [t.encode("ascii", "ignore").decode().replace('"', "'") for t in ds.texts]
    text = "text,label\n" + "".join(f'"{t} café",{y}\n' for t, y in zip(ascii_texts, ds.labels))
    path = tmp_path / "latin.csv"
    path.write_bytes(text.encode("latin-1"))  # one byte per character: the first é is at its character index
    res = run(
        "diagnose",
        "--model",
        tiny_bert_dir,
        "--task",
        path,
        "--batches",
        2,
        "--batch-size",
        8,
        "--max-length",
        24,
        "--resamples",
        2,
        "--out",
        tmp_path / "out",
    )
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if "not UTF-8" in line]
    assert warnings == [f"warning: latin.csv is not UTF-8 (byte {text.index('é')} is 0xe9); read it as Latin-1"], (
        res.stderr
    )
    assert all(t.endswith("café") for t in load_file(path).texts)


# -- 3. a model folder with a config but no weights, or weights of another shape --------------------


def test_cli_refuses_a_model_folder_without_weights(tiny_bert_dir, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    refused(
        run("diagnose", "--model", folder, "--out", tmp_path / "out"),
        r"model folder .*model has no weights: none of model\.safetensors, .*pytorch_model\.bin",
    )


def test_cli_names_the_tensor_when_weights_do_not_match_the_config(tiny_bert_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"], config["intermediate_size"] = 2 * config["hidden_size"], 4 * config["intermediate_size"]
    (folder / "config.json").write_text(json.dumps(config))
    refused(
        run("diagnose", "--model", folder, "--out", tmp_path / "out"),
        rf"the weights do not match config\.json: \S+ is \[\d+(, \d+)*\] in model\.safetensors but "
        rf"\[.*{config['hidden_size']}.*\] by the config",
    )


# -- 4./5. out-of-range numbers ---------------------------------------------------------------------


def test_cli_finetune_refuses_a_negative_learning_rate(tmp_path):
    refused(run("finetune", "--lr", "-1", "--out", tmp_path), r"--lr must be greater than 0, got -1\.0")
    assert not any(tmp_path.iterdir())


def test_cli_diagnose_refuses_max_length_zero(tmp_path):
    from inflora.validate import MIN_LENGTH

    refused(
        run("diagnose", "--max-length", "0", "--out", tmp_path / "out"),
        rf"--max-length must be at least {MIN_LENGTH}, got 0",
    )
    assert not (tmp_path / "out").exists()


# -- files read back: malformed or hostile -----------------------------------------------------------


@pytest.mark.parametrize(
    "change,pattern",
    [
        ({"num_layers": "4"}, r"num_layers: Input should be a valid integer"),
        ({"inflection_layers": [0, 99]}, r"inflection_layers: .*\[99\] are outside"),
        ({"lora_targets": ["q_proj\nimport os"]}, r"lora_targets\.0: .*is not a module name"),
        ({"head_modules": ["lm_head; rm"]}, r"head_modules\.0: .*is not a module name"),
        ({"family": "cobol"}, r"family: .*unknown model family"),
        ({"layers": []}, r"layers: .*0 rows for num_layers"),
        ({"surprise": 1}, r"surprise: Extra inputs are not permitted"),
    ],
)
def test_cli_export_names_the_bad_field_of_a_diagnosis(llama_diagnosis, tmp_path, change, pattern):
    path = hostile_file(tmp_path, llama_diagnosis[0], **change)
    refused(run("export", path), rf"{re.escape(str(path))}: {pattern}")


@pytest.mark.parametrize(
    "content,pattern",
    [
        (b"{", r"line 1 column 2: not JSON"),
        (b"[1, 2]", r"not a diagnosis file"),
        (b"\xff\xfe{}", r"byte 0: not UTF-8 text"),
        (b"[" * 100000, r"nested too deeply|not JSON"),
    ],
)
def test_cli_export_refuses_a_file_that_is_not_a_diagnosis(tmp_path, content, pattern):
    path = tmp_path / "diagnosis.json"
    path.write_bytes(content)
    refused(run("export", path), pattern)


def test_cli_finetune_refuses_a_damaged_run_folder_before_loading(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"config_key": 7, "accuracy": {}}))
    refused(run("finetune", "--out", tmp_path), r"metrics\.json: config_key: Input should be a valid string")


def test_cli_compare_refuses_a_damaged_invocation_log_before_any_work(tmp_path):
    (tmp_path / "invocations.json").write_text(json.dumps([{"command": "x", "wall_seconds": "long"}]))
    refused(run("compare", "--out", tmp_path), r"invocations\.json: 0\.wall_seconds: Input should be a valid number")
    assert not (tmp_path / "units").exists()


def test_checkpoint_meta_and_unit_results_are_validated(tmp_path):
    from inflora.experiment.cache import UnitCache
    from inflora.training.checkpoint import load_checkpoint

    (tmp_path / "meta.json").write_text(json.dumps({"epoch": -1}))
    with pytest.raises(DataError, match=r"meta\.json: epoch: Input should be greater than or equal to 0"):
        load_checkpoint(tmp_path, model=None)
    cache = UnitCache(tmp_path)
    folder = cache.folder("arm", {"a": 1})
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"rule": "ski", "seed": 1, "r": "8"}))
    with pytest.raises(DataError, match=r"result\.json: r: Input should be a valid integer"):
        cache.done("arm", {"a": 1})


# -- Markdown the tool writes ------------------------------------------------------------------------


def test_report_titles_headings_and_cells_stay_on_their_line(tmp_path):
    from inflora.reports.document import Report

    hostile = "minilm\n# injected heading\n| a | b |\u2028<script>"
    rep = Report(f"inflora diagnosis — {hostile}").heading(hostile).table([{"model": hostile, "n": 1}])
    rep.write(tmp_path)
    md = next(tmp_path.glob("*.md")).read_text()
    assert [line for line in md.splitlines() if line.startswith("#")] == [
        "# inflora diagnosis — minilm # injected heading | a | b | <script>",
        "## minilm # injected heading | a | b | <script>",
    ]
    row = [line for line in md.splitlines() if line.startswith("| minilm")]
    assert row == ["| minilm # injected heading \\| a \\| b \\| <script> | 1 |"]


def test_a_column_option_with_a_built_in_task_works_and_says_it_is_ignored(tmp_path):
    """Odd but usable: the built-in task keeps its columns, and one line says the option was ignored."""
    res = runner.invoke(
        app,
        [
            "diagnose",
            "--model",
            "tiny-bert",
            "--task",
            "rotten_tomatoes",
            "--text-column",
            "review",
            "--batches",
            "1",
            "--batch-size",
            "4",
            "--max-length",
            "16",
            "--resamples",
            "0",
            "--out",
            str(tmp_path / "d"),
        ],
    )
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if "--text-column review is ignored" in line]
    assert len(notes) == 1 and notes[0].startswith("warning:"), res.stderr


def test_a_diagnosis_from_a_newer_inflora_is_refused(llama_diagnosis, tmp_path):
    """(Reading version 1 files: tests/test_diagnosis_format.py.)"""
    data, _ = llama_diagnosis
    assert data["format_version"] == FORMAT_VERSION
    (tmp_path / "new.json").write_text(json.dumps({**data, "format_version": FORMAT_VERSION + 1}))
    refused(
        run("export", tmp_path / "new.json", "--format", "json", "--out", tmp_path / "x.json"),
        r"new\.json: format_version: .*newer inflora",
    )
