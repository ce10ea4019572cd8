"""FSDP2 for the probe: every block, then the root, fully sharded over a 1-D mesh of all processes.

torch's own ``fully_shard`` does the work (on CPU with gloo too, torch ≥ 2.6); this only chooses
what to shard (the architecture table's blocks), so per-layer parameter gradients are per-block
sharded ``DTensor``s whose full norms ``metrics.grad_norms.param_grad_norm`` reassembles."""

from __future__ import annotations

import torch

from ..devices import init_processes, launched_world_size
from ..errors import ConfigError
from .architectures import get_blocks, hf_model


def fsdp_shard(model: torch.nn.Module, device: str = "cpu") -> torch.nn.Module:
    """Shard ``model`` in place across the processes torchrun started; returns it."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if launched_world_size() < 2:
        raise ConfigError(
            "FSDP needs several processes: start with torchrun --nproc-per-node N -m inflora diagnose --fsdp …"
        )
    state = init_processes(device)
    model.to(state.device)
    mesh = init_device_mesh(state.device.type, (dist.get_world_size(),))
    for block in get_blocks(hf_model(model)):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
