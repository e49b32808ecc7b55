"""The Trainer's ``StepContext``: training precision and several processes, behind one object.

A model's ``train_step`` runs its forward passes under ``ctx.autocast()``, calls
``ctx.backward(loss, name)`` and ``ctx.step(optimizer, name)`` and draws its noise with
``ctx.randn`` (see ``genlab.models.base.StepContext``). What that means here:

precision  "fp32": plain float32, the exact arithmetic of ``loss.backward(); opt.step()``.
           "bf16": forward passes under ``torch.autocast(dtype=bfloat16)`` (CPU or GPU): matmuls
           and convolutions in bfloat16, losses in float32 (``losses.fp32``), weights, gradients
           and optimizer states in float32. bfloat16 has float32's exponent range, so no loss
           scaling.
           "auto": bf16 where the device computes it natively (``fast_bf16``), else fp32.
           "fp16": float16 autocast on a CUDA GPU with a ``GradScaler`` per optimizer name
           (generator and discriminator scale their losses apart), whose state is checkpointed.
processes  under torchrun each process weights a mean loss by its share of the global batch,
           and ``step`` sums the gradients across processes before the update, so N processes
           with B/N images each compute the gradient of one process with B images. Noise for
           the images of a batch is drawn for the whole global batch from the (identically
           seeded) global stream, and each process keeps the rows of its own images: a run in N
           processes sees the same noise per image as a single process.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..errors import GenlabError
from ..models.base import StepContext
from . import distributed
from .distributed import DistInfo

PRECISIONS = ("fp32", "bf16", "fp16")
AUTO = "auto"  # bf16 where the device computes it natively (fast_bf16), else fp32; resolved before training
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matmuls natively, so that bf16 autocast is faster than
    float32: CUDA GPUs of compute capability 8.0 (Ampere) and later; x86 CPUs with AVX-512 BF16 or
    AMX (read from /proc/cpuinfo, Linux). Elsewhere bf16 is emulated, and on a CPU that is slower
    than float32 by an order of magnitude or more (measured: 210 against 4,150 img/s for
    mlp-vae-gmm on a Zen 3 EPYC)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision to train in: ``precision`` itself, or for "auto" bf16 where ``fast_bf16`` and
    fp32 elsewhere."""
    if precision == AUTO:
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def check_precision(precision: str, device: torch.device) -> None:
    """A clear error for a precision this device cannot train in."""
    precision = resolve_precision(precision, device)
    if precision not in PRECISIONS:
        raise GenlabError(f"unknown precision {precision!r}; choose one of: {AUTO}, {', '.join(PRECISIONS)}.")
    if precision == "fp16" and device.type != "cuda":
        raise GenlabError(f"--precision fp16 needs a CUDA GPU (this run is on {device.type}); "
                          "use --precision bf16 on CPU.")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GenlabError("this GPU has no bfloat16 support; use --precision fp16 (with loss scaling) or fp32.")


class TrainingContext(StepContext):
    """Autocast, loss scaling and gradient averaging across processes for one training run."""

    def __init__(self, precision: str, device: torch.device, dist: DistInfo | None = None):
        device = torch.device(device)
        precision = resolve_precision(precision, device)
        check_precision(precision, device)
        self.precision = precision
        self.device = device
        self.dist = dist or DistInfo()
        self.dtype = _DTYPES.get(precision)
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self._stepped: set[str] = set()
        self.local_n = self.global_n = 0

    # -- the step's batch --------------------------------------------------------------------
    def begin_step(self, local_n: int, global_n: int) -> None:
        """This process has ``local_n`` of the step's ``global_n`` images."""
        self.local_n, self.global_n = int(local_n), int(global_n)

    def end_step(self) -> None:
        """After train_step: each GradScaler that stepped adapts its scale (once per step)."""
        for name in self._stepped:
            self.scalers[name].update()
        self._stepped.clear()

    # -- precision -----------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self, name: str) -> torch.amp.GradScaler | None:
        """The GradScaler of optimizer ``name`` under fp16 (made on first use), else None."""
        if self.precision != "fp16":
            return None
        if name not in self.scalers:
            self.scalers[name] = torch.amp.GradScaler(self.device.type)
        return self.scalers[name]

    def scaler_states(self) -> dict[str, dict]:
        """JSON-able state of every GradScaler (saved in checkpoints)."""
        return {name: s.state_dict() for name, s in self.scalers.items()}

    def load_scaler_states(self, states: dict[str, dict]) -> None:
        """Restore the loss scales of a checkpoint (ignored unless training in fp16)."""
        for name, state in states.items():
            scaler = self.scaler(name)
            if scaler is not None:
                scaler.load_state_dict(state)

    # -- gradients and updates ---------------------------------------------------------------
    def scale(self, loss: Tensor, name: str = "default", reduction: str = "mean") -> Tensor:
        loss = super().scale(loss, name, reduction)
        if self.dist.active and reduction == "mean" and self.global_n:
            loss = loss * (self.local_n / self.global_n)  # this process's share of the batch mean
        scaler = self.scaler(name)
        return loss if scaler is None else scaler.scale(loss)

    def step(self, optimizer: torch.optim.Optimizer, name: str = "default") -> None:
        if self.dist.active:
            distributed.all_reduce_gradients(optimizer)
        scaler = self.scaler(name)
        if scaler is None:
            optimizer.step()
        else:  # unscales, skips the update if a gradient is inf/NaN (the same in every process)
            scaler.step(optimizer)
            self._stepped.add(name)

    # -- noise ---------------------------------------------------------------------------------
    def _global_draw(self, draw, shape: tuple[int, ...], device, batch_dim: int) -> Tensor:
        if not self.dist.active or shape[batch_dim] != self.local_n or not self.global_n:
            return draw(shape, device=device)
        full = list(shape)
        full[batch_dim] = self.global_n
        rows = [slice(None)] * len(shape)
        rows[batch_dim] = slice(self.dist.rank, None, self.dist.world_size)  # BatchIterator's share
        return draw(tuple(full), device=device)[tuple(rows)].contiguous()

    def randn(self, *shape: int, device: torch.device | None = None, batch_dim: int = 0) -> Tensor:
        return self._global_draw(torch.randn, shape, device, batch_dim)

    def rand(self, *shape: int, device: torch.device | None = None, batch_dim: int = 0) -> Tensor:
        return self._global_draw(torch.rand, shape, device, batch_dim)

    def bernoulli(self, p: Tensor) -> Tensor:
        if not self.dist.active:
            return torch.bernoulli(p)
        u = self.rand(*p.shape, device=p.device)
        return (u < p).to(p.dtype)
