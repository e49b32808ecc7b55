"""Training budgets for ``genlab compare``: wall-clock training time, epochs, or images seen.

    10m, 90s, 1h, 1.5h   training time per model (the Trainer's ``max_seconds``)
    5ep                  epochs per model
    300kimg, 300000img   images seen per model (``max_steps = ceil(images / batch_size)``)
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import GenlabError

FORMS = "a training time (90s, 10m, 1h), epochs (5ep) or images seen (300kimg, 300000img)"
# A time budget is the binding limit: the run is given this many epochs so that they never are.
EPOCHS_UNDER_TIME_BUDGET = 1_000_000

_TIME_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_IMAGE_UNITS = {"": 1, "k": 1_000, "m": 1_000_000}


@dataclass(frozen=True)
class Budget:
    """How much training each model gets: ``kind`` is "seconds", "epochs" or "images"."""

    text: str
    kind: str
    value: float

    def describe(self) -> str:
        if self.kind == "seconds":
            return f"{self.text} of training time per model"
        if self.kind == "epochs":
            return f"{int(self.value)} epoch{'s' if self.value != 1 else ''} per model"
        return f"{int(self.value):,} training images seen per model"

    def train_overrides(self, batch_size: int) -> dict[str, Any]:
        """Keyword arguments of ``genlab.train`` that impose this budget on a preset with ``batch_size``."""
        if self.kind == "seconds":
            return {"epochs": EPOCHS_UNDER_TIME_BUDGET, "max_seconds": float(self.value)}
        if self.kind == "epochs":
            return {"epochs": int(self.value)}
        return {"epochs": EPOCHS_UNDER_TIME_BUDGET, "max_steps": math.ceil(self.value / batch_size)}

    def is_spent(self, state: dict[str, Any], train: dict[str, Any]) -> bool:
        """Whether a run whose checkpoint state is ``state`` (and config.json ``train`` block) has
        used up this budget: the Trainer would not train another step."""
        if self.kind == "seconds":
            return state["train_seconds"] >= self.value
        if self.kind == "epochs":
            return state["epoch"] >= self.value
        return state["step"] >= math.ceil(self.value / train["batch_size"])

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "kind": self.kind, "value": self.value, "description": self.describe()}


def parse_budget(text: str) -> Budget:
    """``10m`` / ``90s`` / ``1h`` (training time), ``5ep`` (epochs), ``300kimg`` / ``300000img`` (images)."""
    t = str(text).strip().lower().replace("_", "")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)", t)
    if m:
        seconds = float(m.group(1)) * _TIME_UNITS[m.group(2)]
        if seconds > 0:
            return Budget(text.strip(), "seconds", seconds)
    m = re.fullmatch(r"(\d+)\s*ep(?:ochs?)?", t)
    if m and int(m.group(1)) > 0:
        return Budget(text.strip(), "epochs", int(m.group(1)))
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(k|m|)img", t)
    if m:
        images = float(m.group(1)) * _IMAGE_UNITS[m.group(2)]
        if images >= 1 and images == int(images):
            return Budget(text.strip(), "images", int(images))
    raise GenlabError(f"cannot read the budget {text!r}: give {FORMS}, greater than zero.")
