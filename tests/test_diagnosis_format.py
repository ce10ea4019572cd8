"""diagnosis.json keeps each fact once (format version 2) and still reads version 1 files, in which
SKI was also written into every layer row and the stability also into ``selection``."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.data import load_task, probe_batches
from inflora.diagnosis import Diagnosis, diagnose
from inflora.diagnosis_schema import FORMAT_VERSION
from inflora.errors import DataError
from inflora.export import export_config
from inflora.models import tiny_model

PUBLISHED_V1 = Path(__file__).parents[1] / "docs/results/compare-minilm-rt/diagnosis.json"  # written before version 2


@pytest.fixture(scope="module")
def saved(tokenizer, data_dir, tmp_path_factory):
    batches = probe_batches(
        load_task("rotten_tomatoes", "validation", data_dir), tokenizer, batches=2, batch_size=8, max_length=24
    )
    d = diagnose(tiny_model("bert", layers=4), batches, progress=False, resamples=4)
    d.inflection_layers = d.inflection_layers or [1, 2]
    path = tmp_path_factory.mktemp("v2") / "diagnosis.json"
    d.to_json(path)
    return d, json.loads(path.read_text())


def as_version_1(data: dict, with_version: bool) -> dict:
    """The same diagnosis as version 1 wrote it: SKI in each row too, the stability in selection too."""
    layers = [{**row, "ski": s} for row, s in zip(data["layers"], data["ski"])]
    old = {**data, "layers": layers, "selection": {**data["selection"], "stability": data["stability"]}}
    return {**old, "format_version": 1} if with_version else {k: v for k, v in old.items() if k != "format_version"}


def test_version_2_holds_ski_and_stability_once(saved):
    d, data = saved
    assert data["format_version"] == FORMAT_VERSION == 2
    assert not any("ski" in row for row in data["layers"]) and "stability" not in data["selection"]
    assert len(data["ski"]) == len(data["stability"]) == d.num_layers
    assert not any("ski" in row for row in d.layers) and "stability" not in d.selection


@pytest.mark.parametrize("with_version", [True, False])
def test_a_version_1_file_reads_as_the_same_diagnosis(saved, tmp_path, with_version):
    d, data = saved
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(as_version_1(data, with_version)))
    back = Diagnosis.from_json(path)
    assert back.to_dict() == d.to_dict() and back.format_version == FORMAT_VERSION
    back.to_json(tmp_path / "again.json")  # written again: version 2, each fact once
    assert json.loads((tmp_path / "again.json").read_text()) == data


def test_a_published_version_1_file_reads_and_exports(tmp_path):
    data = json.loads(PUBLISHED_V1.read_text())
    assert "format_version" not in data and all("ski" in row for row in data["layers"])
    d = Diagnosis.from_json(PUBLISHED_V1)
    assert d.ski == [row["ski"] for row in data["layers"]] == data["ski"]
    assert d.stability == data["selection"]["stability"] == data["stability"]
    assert not any("ski" in row for row in d.layers) and "stability" not in d.selection
    exported = export_config(d, "json", tmp_path / "lora.json")
    assert json.loads(exported.path.read_text())["lora_config"]["layers_to_transform"] == data["inflection_layers"]


@pytest.mark.parametrize("where", ["row", "selection"])
def test_a_version_2_file_that_repeats_a_fact_is_refused(saved, tmp_path, where):
    _, data = saved
    twice = as_version_1(data, with_version=False)
    if where == "row":
        twice["selection"] = data["selection"]
    else:
        twice["layers"] = data["layers"]
    path = tmp_path / "diagnosis.json"
    path.write_text(json.dumps({**twice, "format_version": 2}))
    res = CliRunner().invoke(app, ["export", str(path), "--format", "json", "--out", str(tmp_path / "x.json")])
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "a version-2 file keeps only in the top-level" in errors[0] and str(path.name) in errors[0]


# ---------------------------------------------------------------- the layout the probe used


def test_every_layout_field_is_checked_when_read():
    """``structure`` holds ``ArchSpec.to_dict``: the schema names every field (a new field fails here)."""
    from dataclasses import MISSING, fields

    from inflora.diagnosis_schema import MoESpecSection, StructureSection
    from inflora.models import ARCHITECTURES, ArchSpec
    from inflora.models.spec import MoESpec

    assert set(StructureSection.model_fields) == {f.name for f in fields(ArchSpec)} - {"family"}
    assert set(MoESpecSection.model_fields) == {f.name for f in fields(MoESpec)}
    for section, spec_class in ((StructureSection, ArchSpec), (MoESpecSection, MoESpec)):
        for f in fields(spec_class):  # a field added later has a default, so an older file still reads
            default = f.default if f.default is not MISSING else MISSING
            if default is not MISSING:
                written = list(default) if isinstance(default, tuple) else default
                assert section.model_fields[f.name].default == written, f.name
    for spec in ARCHITECTURES:
        written = json.loads(json.dumps(spec.to_dict()))
        StructureSection.model_validate(written)
        assert ArchSpec.from_dict(spec.family, written) == spec


def test_a_saved_diagnosis_exports_the_layout_it_was_made_on(tokenizer, data_dir, tmp_path):
    """A Qwen2-MoE whose config makes every block dense: looked up by its family (a tiny default
    Qwen2-MoE, MoE blocks) its ``mlp`` targets would be the shared experts it does not have; the
    recorded layout gives the model's own dense projections, and PEFT finds each of them."""
    from inflora.models import arch_for
    from inflora.strategies.lora import match_lora_targets

    model = tiny_model("qwen2_moe", task="causal-lm", mlp_only_layers=[0, 1, 2, 3])
    own, by_family = arch_for(model), arch_for("qwen2_moe")
    assert set(own.mlp_targets) != set(by_family.mlp_targets)  # the lookup the file used to need disagrees
    val = load_task("rt-instruct", "validation", data_dir)
    d = diagnose(model, val, tokenizer, batches=2, batch_size=8, max_length=48, progress=False, resamples=2)
    d.inflection_layers = d.inflection_layers or [1, 2]
    d.to_json(tmp_path / "diagnosis.json")
    back = Diagnosis.from_json(tmp_path / "diagnosis.json")
    assert back.spec() == own and back.structure == own.to_dict()
    config = back.lora_config(targets="mlp")
    assert sorted(config.target_modules) == sorted(own.mlp_targets)
    matched = match_lora_targets(model, config)
    assert set(matched) == set(own.mlp_targets) and all(n == len(d.inflection_layers) for n in matched.values())


def test_a_layout_of_another_tower_than_the_family_names_is_refused(saved, tmp_path):
    _, data = saved
    path = tmp_path / "diagnosis.json"
    path.write_text(json.dumps({**data, "structure": {**data["structure"], "tower": "vision"}}))
    with pytest.raises(DataError, match="structure is the vision tower's layout but family 'bert' names the language"):
        Diagnosis.from_json(path)
    path.write_text(json.dumps({**data, "structure": {**data["structure"], "blocks": "encoder.layer\nx"}}))
    with pytest.raises(DataError, match="structure.blocks: .*is not a module name"):
        Diagnosis.from_json(path)


@pytest.mark.slow
def test_the_layout_of_every_discoverable_model_type_is_written_and_read_back():
    """Every transformers model type whose layout inflora finds (on a tiny meta-device model): its
    ``structure`` passes the file check and reads back equal, so no diagnosis of it is refused
    (285 types with transformers 5.25; about a minute on 2 cores)."""
    from transformers import CONFIG_MAPPING

    from inflora.diagnosis_schema import StructureSection
    from inflora.models import ArchSpec
    from inflora.models.architectures import spec_for_type

    read = 0
    for kind in sorted(CONFIG_MAPPING.keys()):
        try:
            spec = spec_for_type(kind)
        except Exception:  # not discoverable (no causal-LM or classifier class, no blocks): another test's subject
            continue
        written = json.loads(json.dumps(spec.to_dict()))
        StructureSection.model_validate(written)
        assert ArchSpec.from_dict(spec.family, written) == spec, kind
        read += 1
    assert read > 100
