"""Training on many processes: torchrun launches them, PyTorch's DistributedDataParallel
keeps their models in step. This module is the seam between fastgan and torch.distributed.

    torchrun --nproc-per-node N -m fastgan train ...

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for each process; `join` sees them and starts
the process group (NCCL on CUDA, gloo on the CPU) with a bounded timeout on collectives,
$FASTGAN_DIST_TIMEOUT seconds (default 600): a rank that stops answering ends the job with
an error instead of a hang. Without torchrun, the run is one process and nothing here does
any communication.

Every rank holds the same random generator state and draws the same *global* batch (the
per-rank --batch-size times the world size), then keeps its own rows: rank r trains on rows
[r * b, (r + 1) * b). DDP averages the gradients, so N ranks compute exactly the step of one
process with the global batch (up to the order of floating-point sums).
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from inspect import signature

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from fastgan.graphs import supports_graphs

DEFAULT_TIMEOUT_S = 600  # NCCL's own default; rank 0's first evaluation may train a classifier
# DDP's documented rule for capturing its all-reduces in a CUDA graph: this many eager
# iterations first (https://pytorch.org/docs/stable/notes/cuda.html#usage-with-distributeddataparallel)
DDP_GRAPH_WARMUP = 11
# DDP's flag against a broadcast of the buffers before every forward: newer torch renamed it
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in signature(DistributedDataParallel).parameters
                  else {"broadcast_buffers": False})


class LaunchError(ValueError):
    """A launch that cannot work (too few GPUs, a bad timeout): the message says why."""


@dataclass(frozen=True)
class World:
    """This process's place among the job's processes."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False  # by torchrun: the process group exists, models train under DDP

    @property
    def is_main(self) -> bool:
        """Rank 0: the one rank that writes files and shows progress."""
        return self.rank == 0

    def shard(self, t: Tensor | None, batch_size: int) -> Tensor | None:
        """This rank's rows of a global batch of `batch_size` rows per rank."""
        if t is None or self.size == 1:
            return t
        return t[self.rank * batch_size:(self.rank + 1) * batch_size]

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` under DDP when launched (its gradients averaged over the ranks), else
        itself. Buffers are not broadcast on each forward: every rank computes the same ones."""
        if not self.launched:
            return module
        device_ids = None if next(module.parameters()).device.type == "cpu" \
            else [self.local_rank]
        return DistributedDataParallel(module, device_ids=device_ids, **NO_BUFFER_SYNC)

    def mean(self, values: dict[str, Tensor]) -> dict[str, float]:
        """Each value averaged over the ranks (the global batch's loss), as floats: one
        collective for all of them."""
        names = list(values)
        stacked = torch.stack([values[name].float() for name in names])
        if self.launched:
            dist.all_reduce(stacked)  # SUM: gloo has no AVG
            stacked /= self.size
        return dict(zip(names, stacked.tolist(), strict=True))

    def rank0_then_all(self, fn):
        """fn() on rank 0 and its outcome on every rank: its value (pickled) returned on all
        of them, or its input error raised on all of them, so that no rank waits for one
        that gave up. Values travel, not files: the ranks of other machines may not share
        rank 0's disk."""
        outcome = [None, None]
        if self.is_main:
            try:
                outcome[0] = fn()
            except ValueError as error:  # the CLI's input errors are ValueErrors
                outcome[1] = error
        if self.launched:
            dist.broadcast_object_list(outcome, src=0)
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]

    def barrier(self) -> None:
        if self.launched:
            dist.barrier()

    def close(self) -> None:
        if self.launched and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def timeout() -> timedelta:
    text = os.environ.get("FASTGAN_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise LaunchError(f"FASTGAN_DIST_TIMEOUT: expected a positive number of seconds, "
                         f"got {text!r}")
    return timedelta(seconds=seconds)


def ddp_graphs_problem() -> str | None:
    """None when DDP's all-reduces can be captured in a CUDA graph, else why not."""
    nccl = torch.cuda.nccl.version()
    if nccl < (2, 9, 6):
        return (f"NCCL {'.'.join(map(str, nccl))} cannot capture DDP's all-reduces in a CUDA "
                "graph (2.9.6 and later can)")
    return None


def graphed_under_ddp(device: torch.device, cuda_graphs: bool) -> bool:
    return cuda_graphs and supports_graphs(device) is None and ddp_graphs_problem() is None


def join(device: torch.device, cuda_graphs: bool) -> tuple[World, torch.device]:
    """This process's World and training device. Under torchrun, starts the process group:
    NCCL on CUDA (one GPU per local rank), gloo on the CPU. With `cuda_graphs`, iterations
    on CUDA will be CUDA graphs, and DDP's capture rules want NCCL's async error handling
    off."""
    if not launched_by_torchrun():
        return World(), device
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                  int(os.environ["LOCAL_RANK"]), launched=True)
    wait = timeout()
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise LaunchError(f"--device cuda: local rank {world.local_rank} needs GPU "
                             f"{world.local_rank}, but this machine has "
                             f"{torch.cuda.device_count()}; lower --nproc-per-node")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        if graphed_under_ddp(device, cuda_graphs):
            for name in ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING"):
                os.environ[name] = "0"
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=wait,
                            device_id=device if device.type == "cuda" else None)
    return world, device
