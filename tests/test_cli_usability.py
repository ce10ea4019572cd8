"""What a user meets at the command line: user data files in every command, remedy options in
--help, one-line errors for an unwritable --out, skipped rows reported by line, tables that fit
80 columns, the demo's reading, and reports that show a <script> in a name as text."""

import json
import re

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.data import load_task
from inflora.models import tiny_model

SCRIPT = "<script>alert(1)</script>"
runner = CliRunner()


def run(*args, columns=80):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


def fits_80_columns(output: str) -> None:
    for line in output.split("\n"):
        assert len(line) <= 80 and "…" not in line, line


@pytest.fixture(scope="module")
def script_dir(tmp_path_factory):
    """A folder whose path contains <script>alert(1)</script> (the '/' makes it two folders)."""
    path = tmp_path_factory.mktemp("user") / SCRIPT
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def tiny_dir(script_dir, tokenizer):
    path = script_dir / "bert"
    tiny_model("bert", layers=4, hidden=32, heads=4).bert.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rt_rows(data_dir):
    ds = load_task("rotten_tomatoes", "validation", data_dir).stratified(120, seed=0)
    return [(t, ["neg", "pos"][y]) for t, y in zip(ds.texts, ds.labels)]


@pytest.fixture(scope="module")
def diagnosed(tiny_dir, script_dir, rt_rows, tmp_path_factory):
    """``diagnose`` on a JSONL file (with three malformed lines) whose path holds a <script> tag."""
    lines = [json.dumps({"review": t, "y": y}) for t, y in rt_rows]
    for number in (3, 8, 30):  # 1-based line numbers of the broken lines
        lines.insert(number - 1, '{"review": "unterminated')
    path = script_dir / "reviews.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("diag")
    res = run(
        "diagnose",
        "--model",
        tiny_dir,
        "--task",
        path,
        "--split",
        "all",
        "--text-column",
        "review",
        "--label-column",
        "y",
        "--batches",
        2,
        "--batch-size",
        8,
        "--max-length",
        24,
        "--resamples",
        5,
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    return res, out


@pytest.fixture(scope="module")
def finetuned(tiny_dir, rt_rows, tmp_path_factory):
    """``finetune`` of two strategies on a user CSV with custom column names."""
    folder = tmp_path_factory.mktemp("csv")
    path = folder / "my.csv"
    path.write_text("sentiment,review\n" + "".join(f'{y},"{t.replace(chr(34), chr(39))}"\n' for t, y in rt_rows))
    runs = {}
    for strategy in ("lora-inflection", "lora-all"):
        out = folder / strategy
        res = run(
            "finetune",
            "--model",
            tiny_dir,
            "--task",
            path,
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--strategy",
            strategy,
            "--layers",
            "0,1",
            "--max-length",
            24,
            "--batch-size",
            16,
            "--log-every",
            2,
            "--out",
            out,
        )
        assert res.exit_code == 0, res.output
        runs[strategy] = (res, json.loads((out / "metrics.json").read_text()))
    return path, runs


def test_finetune_reads_a_user_csv_split_80_10_10(finetuned):
    path, runs = finetuned
    res, m = runs["lora-all"]
    assert m["config"]["task"] == str(path) and m["config"]["text_column"] == "review"
    assert m["sizes"] == {"train": 96, "validation": 12, "test": 12}
    assert set(m["accuracy"]) == {"validation", "test"} and m["steps"] == 6  # 96 examples / batch 16


def table_of(output: str, title: str) -> str:
    """From the table's title to the line after it (progress bars above are tqdm's business)."""
    text = output[output.index(title) :]
    return text[: text.index("wrote")]


def test_finetune_tables_fit_80_columns(finetuned):
    for res, m in finetuned[1].values():
        fits_80_columns(table_of(res.output, "fine-tuning results"))
        assert m["strategy"] in res.output and f"{100 * m['accuracy']['test']:.2f}" in res.output


def test_demo_reading_says_what_a_smoke_run_shows(finetuned):
    from inflora.experiment.demo import DemoResult, reading
    from inflora.cli.finetune import print_comparison
    from rich.console import Console

    runs = [m for _, m in finetuned[1].values()]
    text = reading(DemoResult(None, runs))
    band, full = runs
    assert f"{100 * band['accuracy']['test']:.1f}% vs {100 * full['accuracy']['test']:.1f}%" in text
    assert "one seed" in text and "docs/results/README.md" in text and "inflora experiment sst2-to-rt" in text
    console = Console(width=80, record=True)
    # the demo's runs also carry the decontaminated test split: one more column must still fit
    with_clean = [{**m, "accuracy": {**m["accuracy"], "test_decontaminated": m["accuracy"]["test"]}} for m in runs]
    print_comparison(with_clean, console)
    text = console.export_text()
    fits_80_columns(text)
    assert "clean %" in text and "steps/s" in text


def test_diagnose_reads_a_jsonl_and_reports_malformed_lines(diagnosed):
    res, out = diagnosed
    assert re.search(
        r"reviews\.jsonl: skipped 3 of 123 rows: malformed JSON \(not an object\) at lines 3, 8, 30",
        res.output.replace("\n", " "),
    ), res.output
    d = json.loads((out / "diagnosis.json").read_text())
    assert SCRIPT in d["model"] and d["config"]["data"].endswith("reviews.jsonl")


def test_diagnose_table_fits_80_columns(diagnosed):
    res, _ = diagnosed
    table = table_of(res.output, "inflection band")
    fits_80_columns(table)
    assert "◀ band" in table and re.search(r"\d\.\d\de-\d\d", table)


def test_reports_show_script_tags_as_text(diagnosed):
    _, out = diagnosed
    html = (out / "report.html").read_text()
    assert "<script" not in html.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("command", [["diagnose"], ["finetune"], ["experiment", "--profile", "smoke"], ["demo"]])
def test_unwritable_out_is_a_one_line_error(command):
    res = run(*command, "--out", "/proc/inflora-out")
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "cannot write to the output folder /proc/inflora-out" in errors[0]
    assert "Traceback" not in res.output


def test_finetune_help_lists_every_remedy_option_with_type_and_default():
    from inflora.remedies import REMEDIES

    res = run("finetune", "--help", columns=200)
    assert res.exit_code == 0
    for name in REMEDIES.names():
        assert f"Remedy {name} (with --remedy {name})" in res.output
        for key, opt in REMEDIES.get(name).options.items():
            line = next(l for l in res.output.splitlines() if f"--{key.replace('_', '-')} " in l)
            assert (
                f"<{opt.type.__name__}>" in line
                and f"(default: {'none' if opt.default is None else opt.default})" in line
            )


@pytest.mark.parametrize(
    "args,message",
    [
        (["diagnose", "--batches", "abc"], "Invalid value for '--batches'"),
        (["diagnose", "--nope"], "No such option: --nope"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_too(args, message):
    res = run(*args)
    assert res.exit_code == 2 and "Traceback" not in res.output and "╭" not in res.output, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output


@pytest.mark.parametrize(
    "fmt,out,message",
    [
        ("json", "/proc/inflora-out/lora.json", "cannot write /proc/inflora-out/lora.json"),
        ("peft", "/proc/inflora-out", "cannot write to the output folder /proc/inflora-out"),
    ],
)
def test_export_to_an_unwritable_path_is_a_one_line_error(diagnosed, fmt, out, message):
    res = run("export", diagnosed[1] / "diagnosis.json", "--format", fmt, "--out", out)
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in res.output


def test_info_table_fits_80_columns_and_shows_the_ffn_layout():
    res = run("info")
    assert res.exit_code == 0, res.output
    fits_80_columns(res.output)
    assert (
        "FFN: mlp.gate_proj + mlp.up_proj -> mlp.down_proj" in res.output and "FFN: ffn.lin1 -> ffn.lin2" in res.output
    )
