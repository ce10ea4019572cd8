"""Two CPU processes (gloo) diagnose the same batches: both ranks report identical numbers, equal
to a single process over the same batches (bootstrap stability and the output section included)."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dist_worker  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same(a, b, path="", rel=1e-6):
    """Equal structure; floats equal to ``rel`` (None = NaN written as null must match too)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}", rel)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def test_two_gloo_ranks_match_a_single_process(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.fail("torch.distributed with the gloo backend is required")
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(HERE / "dist_worker.py"), str(tmp_path / f"rank{rank}.json")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )

    # the single-process reference, computed here while the two ranks run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, single_steps = dist_worker.run()
    finally:
        torch.set_num_threads(threads)

    logs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed workers timed out")
        logs.append(out)
        assert p.returncode == 0, f"worker failed:\n{out[-3000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    # each rank probed only its share of the 5 batches ([rank::world]: 3 and 2); alone, all 5
    assert [r["steps"] for r in ranks] == [3, 2] and single_steps == 5
    # both ranks report identical numbers ...
    assert ranks[0]["diagnosis"] == ranks[1]["diagnosis"]
    # ... equal to one process over all batches, bootstrap stability and mean loss included
    d = ranks[0]["diagnosis"]
    assert d["config"]["probe_batches"] == 5
    # where it ran is recorded: two data-parallel processes here, one alone
    assert (d["config"].pop("world_size"), d["config"].pop("sharding")) == (2, "ddp")
    assert (single["config"].pop("world_size"), single["config"].pop("sharding")) == (1, None)
    assert_same(d, single)
    # the output section too: 5 batches x 4 examples, merged from both ranks' sums
    assert d["output"]["predictions"] == 20 and sum(d["output"]["histogram"]["count"]) == 20
    assert all(r["wrong_token_share"] is not None for r in d["layers"])
    stab = d["stability"]
    assert all(s is not None and 0 <= s <= 1 for s in stab)
    assert any(0 < s < 1 for s in stab)  # fractional: the comparison above checks the batch order too
