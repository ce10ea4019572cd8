"""Each example's main() runs at toy size and writes its JSON and PNG."""

import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))


@pytest.mark.parametrize(
    "module,args,stem",
    [
        ("two_moons_sd", ["--seeds", "1", "--epochs", "30"], "two_moons_sd"),
        ("redo_stream", ["--seeds", "1", "--tasks", "2", "--steps", "20"], "redo_stream"),
        ("dal_quadratic", ["--steps", "20"], "dal_quadratic"),
        ("dal_mlp", ["--seeds", "1", "--steps", "10"], "dal_mlp"),
        ("nm_digits", ["--seeds", "1", "--steps", "30", "--patterns", "1:8"], "nm_digits"),
    ],
)
def test_example_writes_json_and_png(tmp_path, module, args, stem):
    mod = __import__(module)
    mod.main(args + ["--out", str(tmp_path)])
    data = json.loads((tmp_path / f"{stem}.json").read_text())
    assert data and (tmp_path / f"{stem}.png").stat().st_size > 1000


def test_nm_sst2_runs_on_tiny_bert_and_diagnostics_separate(tmp_path, monkeypatch):
    from inflora.data import resolve_data_dir

    if resolve_data_dir(None) is None:
        pytest.skip("no data folder: set INFLORA_DATA_DIR")
    import nm_sst2

    res = nm_sst2.main(
        [
            "--model",
            "tiny",
            "--train",
            "192",
            "--val",
            "64",
            "--epochs",
            "2",
            "--recipes",
            "dense,ste,sr-ste,mdgf-exp",
            "--out",
            str(tmp_path),
        ]
    )
    rows = {r["recipe"]: r for r in res["rows"]}
    assert rows["dense"]["sad"] == 0.0 and rows["dense"]["n_sparse_layers"] == 0
    assert rows["ste"]["sad"] > 0 and rows["ste"]["n_sparse_layers"] == 4
    assert rows["sr-ste"]["sad"] <= rows["ste"]["sad"]
    assert (tmp_path / "nm_sst2.png").exists()
