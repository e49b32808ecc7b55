"""Several processes under torchrun: PyTorch's own process group, nothing home-made.

``torchrun --nproc-per-node N -m genlab train ...`` starts N copies of the same command with
RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT in their environment. ``setup`` joins them
into one process group (gloo on CPU, NCCL on CUDA, one GPU per process: cuda:LOCAL_RANK);
everything below is a no-op in a single process.

How the Trainer uses it (data parallelism, the arithmetic of DistributedDataParallel):

- every process holds the whole model and the whole dataset; each takes a disjoint share of
  every global batch (``BatchIterator``'s rank/world_size);
- before each optimizer step the gradients of that optimizer's parameters are summed across
  processes (one flat all-reduce per optimizer, ``all_reduce_gradients``), each process having
  weighted its loss by its share of the batch (``TrainingContext.scale``). DDP's module wrapper
  does not fit genlab's models: they update two or three networks per step with their own
  optimizers, freeze the discriminator for the generator's step, and take gradients with
  ``torch.autograd.grad`` (VAE-GAN, the gradient penalties), which DDP's hooks do not see;
- rank 0 alone writes (config, metrics, samples, checkpoints) and evaluates; every collective
  is reached by every process in the same order (decisions to stop are taken together).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import GenlabError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands among the processes of a run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _dist():
    import torch.distributed as dist

    return dist


def current() -> DistInfo:
    """This process's place in the initialized process group (a single process when there is none)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        dist = _dist()
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise GenlabError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; launch with torchrun.") from None


def setup(device: str) -> tuple[DistInfo, str]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) and return this process's
    place and its device: ``device`` as given in a single process; under torchrun "auto"/"cuda"
    become cuda:LOCAL_RANK when CUDA is there (NCCL), else cpu (gloo)."""
    world = launched_world_size()
    if world <= 1:
        return current(), device
    if not torch.distributed.is_available():
        raise GenlabError("this PyTorch build has no torch.distributed; train in a single process.")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.device(device).index is not None:
            raise GenlabError(f"--device {device}: under torchrun every process uses its own GPU, cuda:LOCAL_RANK; "
                              "pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES.")
        if local_rank >= torch.cuda.device_count():
            raise GenlabError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s): start at most "
                              "that many processes per node (--nproc-per-node).")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    elif kind != "cpu":
        raise GenlabError(f"--device {device}: training in several processes runs on cpu (gloo) or cuda (NCCL).")
    dist = _dist()
    if not dist.is_initialized():
        try:
            if kind == "cuda":  # device_id: NCCL binds this process's GPU now, not at the first collective
                dist.init_process_group(backend="nccl", device_id=torch.device(device))
            else:
                dist.init_process_group(backend="gloo")
        except (RuntimeError, ValueError) as e:
            raise GenlabError(f"could not join the other processes ({e}). Launch several processes with "
                              "torchrun, e.g. `torchrun --nproc-per-node 2 -m genlab train ...`.") from None
    return current(), device


def shutdown(wait: bool = True) -> None:
    """Leave the process group (end of a `genlab train` under torchrun); with ``wait``, once every
    process is done (a process whose gloo threads are torn down while a peer still works aborts)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait:
            _dist().barrier()
        _dist().destroy_process_group()


def barrier() -> None:
    if current().active:
        _dist().barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (a download, a cache to fill), then the others."""
    info = current()
    if info.active and not info.is_main:
        _dist().barrier()
    yield
    if info.active and info.is_main:
        _dist().barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` (any picklable Python value), on every process."""
    if not current().active:
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def _apply_flat(tensors: Sequence[Tensor], op) -> None:
    """Run the collective ``op`` on ``tensors`` as one flat buffer per dtype (one message, not one
    per tensor), then copy the result back (any memory layout, channels-last included)."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        t = t.view(torch.uint8) if t.dtype == torch.bool else t  # gloo and NCCL move bytes, not bools
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        op(flat)
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view(t.shape))
            offset += n


def all_reduce_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Sum the gradients of ``optimizer``'s parameters across processes. Each process's gradient is
    already weighted by its share of the batch, so the sum is the whole batch's gradient. Which
    parameters have a gradient is decided by the code path, the same in every process."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if grads:
        _apply_flat(grads, _dist().all_reduce)


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Every process gets rank ``src``'s parameters and buffers (the start of training, as DDP does)."""
    tensors = [t for t in module.state_dict(keep_vars=True).values() if t.numel()]
    _apply_flat([t.data if isinstance(t, nn.Parameter) else t for t in tensors],
                lambda flat: _dist().broadcast(flat, src))


def any_true(flags: Sequence[bool], device: torch.device) -> list[bool]:
    """For each flag: is it set in any process? (One small all-reduce: stop requests, limits, NaNs.)"""
    t = torch.tensor([float(f) for f in flags], device=device)
    _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def mean_across(values: Tensor) -> Tensor:
    """The mean over processes of a float tensor (logged losses)."""
    values = values.clone()
    _dist().all_reduce(values)
    return values / current().world_size
