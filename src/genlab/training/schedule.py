"""The training budget and the learning-rate schedule, as pure functions of where a run stands.

A run's budget is its epochs (or ``max_steps``) and, optionally, ``max_seconds`` of training time;
``budget_progress`` says how far through it a step is, and the learning-rate schedule (and any
phase a model places at a fraction of the budget, through ``StepContext.budget_progress``) reads
that one number, so that both end together at whichever limit comes first.
"""
from __future__ import annotations

import math

import torch

from ..errors import GenlabError

LR_SCHEDULES = ("constant", "linear", "cosine")


def total_steps(epochs: int, steps_per_epoch: int, max_steps: int | None) -> int:
    """The steps a run takes in all: its epochs' steps, or ``max_steps`` if that comes first."""
    total = epochs * steps_per_epoch
    return total if max_steps is None else min(total, max_steps)


def budget_progress(step: int, total_steps: int, seconds: float, max_seconds: float | None) -> float:
    """How far through its budget a run is at ``step`` (the steps taken before this one): the larger of
    the fraction of its ``total_steps`` taken and, under a time limit (``max_seconds``), the fraction
    of that time used (``seconds`` of training time), so that the rate reaches 0 at whichever limit
    comes first."""
    progress = step / max(total_steps, 1)
    if max_seconds:
        progress = max(progress, seconds / max_seconds)
    return progress


def lr_factor(schedule: str, progress: float) -> float:
    """The learning rate as a fraction of the configured one, ``progress`` of the way through the
    training budget (0 at the start, 1 at its end): 1 throughout for "constant"; 1 - progress for
    "linear", the schedule that Li et al. 2020 ("Budgeted Training", ICLR) found best when the
    budget is known in advance; (1 + cos(pi * progress)) / 2 for "cosine" (Loshchilov & Hutter 2017,
    without restarts)."""
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - p
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "constant":
        return 1.0
    raise GenlabError(f"unknown learning-rate schedule {schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")


def set_lr_factor(optimizers: dict[str, torch.optim.Optimizer], factor: float) -> None:
    """Set every parameter group's rate to ``factor`` times its own configured rate (``initial_lr``,
    recorded when the Trainer is built and restored with the optimizer on resume)."""
    for opt in optimizers.values():
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor
