"""Weights-only scan of safetensors files (``inflora.weight_scan``): the same scores as the rules on
the model in memory, blocks found from tensor names alone (MoE experts are not blocks), a hub cache,
and bad checkpoints as one ``error:`` line."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from inflora.cli import app
from inflora.diagnosis import score_without_data
from inflora.errors import ArchitectureError, ConfigError, DataError
from inflora.models import tiny_model
from inflora.models.weight_blocks import checkpoint_layout, split_block_name
from inflora.strategies.budget import Budget
from inflora.weight_scan import scan_weights

WEIGHT_RULES = ["spectrum-snr", "kappa", "alpha-hts"]
runner = CliRunner()


def assert_same_scores(scanned: dict, in_memory: dict) -> None:
    """Block scores, per-matrix metrics, selections and LoRA sizes agree (scores within 1e-6)."""
    for name in WEIGHT_RULES:
        a, b = scanned["rules"][name], in_memory["rules"][name]
        np.testing.assert_allclose(a["raw"], b["raw"], rtol=0, atol=1e-6)
        assert set(a["per_module"]) == set(b["per_module"]) and len(a["per_module"]) > 0
        keys = sorted(a["per_module"])
        np.testing.assert_allclose(
            [a["per_module"][k] for k in keys], [b["per_module"][k] for k in keys], rtol=1e-6, atol=1e-6
        )
        assert a["selected"] == b["selected"] and a["lora_params"] == b["lora_params"] > 0


@pytest.mark.real
def test_scanning_minilm_files_equals_the_rules_on_the_model_in_memory(minilm):
    budget = Budget(layers=2)
    scanned = scan_weights("minilm", WEIGHT_RULES, budget)
    assert_same_scores(scanned, score_without_data(minilm[0], WEIGHT_RULES, budget))
    scan = scanned["scan"]
    n_blocks = minilm[0].config.num_hidden_layers
    assert scan["block_list"] == "encoder.layer" and scan["blocks"] == n_blocks
    assert scan["matrices"] == 6 * n_blocks and scan["dtypes"] == ["float32", "float64"]
    assert len(scan["block_seconds"]) == n_blocks and all(s > 0 for s in scan["block_seconds"])


@pytest.fixture(scope="module")
def sharded_decoder(tmp_path_factory):
    """A tiny Qwen2 causal LM saved in many small shards (an index + shards, blocks split across them)."""
    model = tiny_model("qwen2", task="causal-lm", layers=4, hidden=64, heads=4)
    path = tmp_path_factory.mktemp("sharded") / "qwen2"
    model.save_pretrained(path, max_shard_size="100KB")
    return model, path


def test_a_sharded_decoder_scans_to_the_same_scores_as_in_memory(sharded_decoder):
    model, path = sharded_decoder
    budget = Budget(layers=2)
    scanned = scan_weights(str(path), WEIGHT_RULES, budget)
    assert_same_scores(scanned, score_without_data(model, WEIGHT_RULES, budget))
    assert scanned["scan"]["files"] >= 4 and scanned["scan"]["block_list"] == "model.layers"
    assert (path / "model.safetensors.index.json").is_file()


def test_the_cli_scans_a_folder_and_reports_time_per_block(sharded_decoder, tmp_path):
    _, path = sharded_decoder
    res = runner.invoke(
        app,
        [
            "diagnose",
            "--model",
            str(path),
            "--rules",
            "spectrum-snr,random",
            "--weights-only",
            "--budget",
            "layers=2",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "scanned 28 matrices of 4 blocks (model.layers)" in res.output and "time per block" in res.output
    out = json.loads((tmp_path / "rules.json").read_text())
    assert len(out["scan"]["block_seconds"]) == 4 and "Weights-only scan" in (tmp_path / "rules.md").read_text()


def _write(folder, tensors: dict, name="model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / name))
    return folder


def test_moe_expert_indices_are_never_block_indices(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"model.layers.{b}.mlp.experts.{e}.{w}.weight": torch.randn(16, 8, generator=g)
        for b in range(3)
        for e in range(8)
        for w in ("w1", "w2")
    }
    tensors.update({f"model.layers.{b}.mlp.gate.weight": torch.randn(8, 8, generator=g) for b in range(3)})
    tensors["model.embed_tokens.weight"] = torch.randn(50, 8, generator=g)
    layout = checkpoint_layout(str(_write(tmp_path / "moe", tensors)))
    assert layout.block_list == "model.layers" and layout.num_blocks == 3
    assert set(layout.blocks[2]) == {"mlp.gate"} | {f"mlp.experts.{e}.{w}" for e in range(8) for w in ("w1", "w2")}
    assert split_block_name("model.layers.3.mlp.experts.5.w1.weight") == ("model.layers", 3, "mlp.experts.5.w1.weight")
    result = scan_weights(str(tmp_path / "moe"), ["spectrum-snr"], Budget(layers=1))
    assert len(result["rules"]["spectrum-snr"]["raw"]) == 3 and "notes" in result  # no config: no LoRA sizes


def test_singular_values_are_held_in_numpy_memory_of_their_own():
    """A kept torch result would be a small block of torch's allocator between the large buffers each
    SVD frees, the heap fragmentation that held up to 600 MiB in a 2 GB scan (docs/performance.md)."""
    from inflora.select.spectra import singular_values

    w = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    sv = singular_values(w, "float32")
    assert sv.flags.owndata and sv.base is None
    np.testing.assert_allclose(sv, torch.linalg.svdvals(w).numpy(), rtol=1e-6)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_fused_experts_are_scored_per_expert_in_memory_and_scanned_alike(family, tmp_path):
    """transformers 5 holds these experts as 3-D parameters; Qwen3-MoE and Mixtral are saved split
    per expert (gate/up/down, w1/w2/w3) and gpt-oss fused [E, a, b]. Both paths score each expert's
    matrices, the checkpoint's, and agree within 1e-6."""
    model = tiny_model(family, task="causal-lm")
    model.save_pretrained(tmp_path / family)
    budget = Budget(layers=2)
    scanned = scan_weights(str(tmp_path / family), WEIGHT_RULES, budget)
    assert_same_scores(scanned, score_without_data(model, WEIGHT_RULES, budget))
    experts = model.config.num_local_experts if hasattr(model.config, "num_local_experts") else model.config.num_experts
    per_expert = [k for k in scanned["rules"]["kappa"]["per_module"] if k.startswith("0.") and "experts" in k]
    assert len(per_expert) == 3 * experts if family != "gpt_oss" else 2 * experts
    fused = {n for n, p in model.named_parameters() if p.ndim == 3}
    assert fused  # the model in memory does hold fused 3-D experts


def test_a_block_list_the_checkpoint_names_differently_scores_the_same_in_memory(tmp_path):
    """Qwen2-VL holds its language blocks at model.language_model.layers and saves them as
    model.layers; in memory the matrices are read by their saved names, as the scan reads them."""
    model = tiny_model("qwen2_vl", task="causal-lm")
    model.save_pretrained(tmp_path / "vl")
    budget = Budget(layers=2)
    scanned = scan_weights(str(tmp_path / "vl"), WEIGHT_RULES, budget)
    assert scanned["scan"]["block_list"] == "model.layers"
    assert_same_scores(scanned, score_without_data(model, WEIGHT_RULES, budget))


def test_the_block_list_holding_most_weight_is_scanned_and_the_others_named(tmp_path):
    tensors = {f"visual.blocks.{b}.attn.qkv.weight": torch.randn(12, 4) for b in range(6)}
    tensors.update({f"model.layers.{b}.self_attn.q_proj.weight": torch.randn(32, 32) for b in range(2)})
    layout = checkpoint_layout(str(_write(tmp_path / "vl", tensors)))
    assert layout.block_list == "model.layers" and layout.other_lists == {"visual.blocks": 6}


def test_a_hub_name_is_read_from_the_hub_cache(sharded_decoder, monkeypatch, tmp_path):
    import shutil

    from huggingface_hub import constants

    _, path = sharded_decoder
    repo = tmp_path / "hub" / "models--someone--tiny-qwen2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(path, repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    result = scan_weights("someone/tiny-qwen2", ["kappa"], Budget(layers=1))
    assert (
        result["rules"]["kappa"]["raw"] == scan_weights(str(path), ["kappa"], Budget(layers=1))["rules"]["kappa"]["raw"]
    )
    with pytest.raises(ConfigError, match="not in the hub cache"):
        scan_weights("someone/not-downloaded", ["kappa"], Budget(layers=1))


def _bad_checkpoints(root):
    """(folder, expected message) for checkpoints a scan must refuse."""
    g = torch.Generator().manual_seed(0)
    out = [(root / "empty", "no safetensors weights")]
    out[0][0].mkdir(parents=True)
    out.append(
        (
            _write(root / "flat", {"encoder.weight": torch.randn(4, 4), "decoder.weight": torch.randn(4, 4)}),
            "no blocks in the tensor names",
        )
    )
    out.append(
        (
            _write(root / "gap", {f"h.{i}.mlp.weight": torch.randn(4, 4, generator=g) for i in (0, 2)}),
            "block 1 has no weight matrix",
        )
    )
    out.append((_write(root / "int8", {"h.0.mlp.weight": torch.ones(4, 4, dtype=torch.int8)}), "stored as I8"))
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    out.append((corrupt, "not a readable safetensors file"))
    for name, weight_map, message in (
        ("outside", {"h.0.w.weight": "../x.safetensors"}, "not a .safetensors file in the folder"),
        ("mismatch", {"h.0.w.weight": "a.safetensors", "h.9.w.weight": "a.safetensors"}, "does not hold it"),
        ("notjson", None, "cannot read"),
    ):
        folder = _write(root / name, {"h.0.w.weight": torch.randn(4, 4)}, "a.safetensors")
        text = json.dumps({"weight_map": weight_map}) if weight_map else "{not json"
        (folder / "model.safetensors.index.json").write_text(text)
        out.append((folder, message))
    return out


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    for folder, message in _bad_checkpoints(tmp_path):
        res = runner.invoke(
            app,
            [
                "diagnose",
                "--model",
                str(folder),
                "--rules",
                "kappa",
                "--weights-only",
                "--budget",
                "layers=1",
                "--out",
                str(tmp_path / "out"),
            ],
        )
        assert res.exit_code == 2, (folder.name, res.output)
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in res.output and "Traceback" not in res.output, (folder.name, res.output)


def test_library_errors_have_the_project_types(tmp_path):
    _write(tmp_path / "flat", {"encoder.weight": torch.randn(4, 4)})
    with pytest.raises(ArchitectureError):
        checkpoint_layout(str(tmp_path / "flat"))
    _write(tmp_path / "gap", {"h.1.mlp.weight": torch.randn(4, 4)})
    with pytest.raises(DataError):
        checkpoint_layout(str(tmp_path / "gap"))
    with pytest.raises(ConfigError, match="hub is offline"):
        scan_weights("nobody/nothing-here", ["kappa"], Budget(layers=1))


def test_a_scan_started_again_resumes_after_its_finished_blocks(sharded_decoder, tmp_path, monkeypatch):
    import inflora.weight_scan as ws

    _, path = sharded_decoder
    first = scan_weights(str(path), WEIGHT_RULES, Budget(layers=2), resume_dir=tmp_path / "scan")
    assert sorted(p.name for p in (tmp_path / "scan").iterdir()) == [f"block-0000{i}.npz" for i in range(4)]
    (tmp_path / "scan" / "block-00002.npz").unlink()
    (tmp_path / "scan" / "block-00001.npz").write_bytes(b"truncated")  # a damaged file is recomputed
    reads, real_read = [], ws.read_tensor
    monkeypatch.setattr(ws, "read_tensor", lambda ref: reads.append(ref.name) or real_read(ref))  # counts real reads
    again = scan_weights(str(path), WEIGHT_RULES, Budget(layers=2), resume_dir=tmp_path / "scan")
    assert sorted({n.split(".")[2] for n in reads}) == ["1", "2"] and len(reads) == 14
    assert again["scan"]["resumed_blocks"] == [0, 3] and first["scan"]["resumed_blocks"] == []
    for name in WEIGHT_RULES:
        assert again["rules"][name]["per_module"] == first["rules"][name]["per_module"]
    other_rules = scan_weights(str(path), ["spectrum-snr"], Budget(layers=2), resume_dir=tmp_path / "scan")
    assert len(reads) == 14 + 28  # other rules, other dtypes: the cache does not apply
    assert other_rules["rules"]["spectrum-snr"]["raw"] == first["rules"]["spectrum-snr"]["raw"]
