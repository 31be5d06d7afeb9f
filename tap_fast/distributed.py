"""torchrun / DDP plumbing: one process per device, ranks from torchrun's environment.

    torchrun --nproc_per_node=N -m tap_fast.train ...            (one node)
    torchrun --nnodes=2 --node_rank=R --rdzv-endpoint=HOST:PORT --nproc_per_node=N -m tap_fast.train ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK (and the rendezvous address); without them the run
is a single process and nothing here talks to a process group. NCCL on GPUs, gloo on CPUs.
"""
from __future__ import annotations

import gc

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # setup() created the process group, so train() destroys it

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_name: str = "auto") -> DistContext:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    device_name: auto | cpu | cuda | cuda:N. Under torchrun, "auto"/"cuda" mean cuda:LOCAL_RANK;
    cuda:N is refused when a node runs several processes (they would all take GPU N).
    """
    if not launched_by_torchrun():
        return DistContext(0, 1, 0, _single_device(device_name))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    wants_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if wants_cuda:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if device_name not in ("auto", "cuda") and local_world_size > 1:
            # every process of this node would take the same GPU (NCCL refuses, or all share one card)
            raise ValueError(f"--device {device_name} under torchrun with {local_world_size} processes per node "
                             f"would put them all on one GPU; use --device cuda (each process takes "
                             f"cuda:LOCAL_RANK) and choose the GPUs with CUDA_VISIBLE_DEVICES")
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device_name}: CUDA is not available in this process")
        index = local_rank if device_name in ("auto", "cuda") else int(device_name[5:])
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {device_name}: process {rank} (LOCAL_RANK {local_rank}) needs cuda:{index}, "
                             f"but this process sees {torch.cuda.device_count()} GPU(s); start at most that many "
                             f"processes per node (--nproc_per_node)")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns_group = not dist.is_initialized()
    if owns_group:
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **kwargs)
    return DistContext(rank, world_size, local_rank, device, owns_group)


def _single_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cleanup(graceful: bool = True) -> None:
    """Leave the process group cleanly.

    DDP objects sit in reference cycles, so without a collection they would die during interpreter
    shutdown, where gloo's worker threads releasing their tensors abort the process ("terminate
    called without an active exception"). Collect them while Python is alive, let every rank
    finish its pending collectives (barrier), then destroy the group. After an error (graceful=False)
    skip the barrier: the other ranks may be waiting in another collective.
    """
    if dist.is_initialized():
        gc.collect()
        if graceful:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum over ranks of a few floats (one small collective)."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64,
                          device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj, ctx: DistContext) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's obj on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
