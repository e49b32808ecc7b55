"""Training phases a model declares as data: when each begins, which parts stay fixed, what it changes.

A model lists its phases in ``GenerativeModel.phases()`` (in training order); ``phase_at(step)`` finds
the one in force from the step and the run's budget progress (``StepContext.budget_progress``, set
by the Trainer), and the model's ``train_step`` reads what it says. The budget arithmetic lives here,
once, instead of in each network class. The VAEs' encoder refit is one: over the last part of the
run only the encoder trains, on the true ELBO (``models/vae_base.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Phase:
    """One phase of training. It begins at step ``from_step`` (0-based) or once the budget progress
    reaches ``from_progress`` (a fraction in [0, 1] of the run's budget: steps, epochs or time,
    whichever ends the run), whichever comes first (a start left None does not apply), and lasts to
    the end of the run.

    ``frozen``: names of the model's submodules that get no update in the phase (their gradients are
    dropped before the optimizer step, ``drop_frozen_grads``); ``beta``: the KL weight the phase trains
    with instead of the model's own (None: unchanged).
    """

    name: str
    from_step: int | None = None
    from_progress: float | None = None
    frozen: tuple[str, ...] = ()
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.from_step is None and self.from_progress is None:
            raise ValueError(f"phase {self.name!r} needs a start: from_step or from_progress")
        if self.from_step is not None and self.from_step < 0:
            raise ValueError(f"phase {self.name!r}: from_step is a training step (>= 0), got {self.from_step}")
        if self.from_progress is not None and not 0.0 <= self.from_progress <= 1.0:
            raise ValueError(f"phase {self.name!r}: from_progress is a fraction of the budget, in [0, 1], "
                             f"got {self.from_progress}")

    def active(self, step: int, progress: float) -> bool:
        """Whether training step ``step``, taken at budget progress ``progress``, is in this phase."""
        if self.from_step is not None and step >= self.from_step:
            return True
        return self.from_progress is not None and progress >= self.from_progress


def active_phase(phases: Sequence[Phase], step: int, progress: float) -> Phase | None:
    """The phase in force at ``step`` and ``progress``: the last of ``phases`` (declared in training
    order) that is active, or None when none is."""
    for phase in reversed(phases):
        if phase.active(step, progress):
            return phase
    return None


def drop_frozen_grads(model: nn.Module, phase: Phase | None) -> None:
    """Drop the gradients of the submodules ``phase`` freezes (none when ``phase`` is None), between the
    backward pass and the optimizer step: Adam skips a parameter without a gradient, so those weights and
    their optimizer state stay exactly as they were."""
    if phase is None:
        return
    for name in phase.frozen:
        for p in model.get_submodule(name).parameters():
            p.grad = None
