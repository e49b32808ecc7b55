"""The window of steps between two lines of metrics.jsonl: the losses summed on the device (read
back once per line, so a step never waits for the device) and the images trained on, for img/s."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch


class LogLine(NamedTuple):
    """One line for metrics.jsonl (``record``) and the names of the losses in it (``losses``)."""

    record: dict[str, Any]
    losses: list[str]

    def progress_text(self) -> str:
        """The line as the progress bar shows it: the mean losses, then img/s where it was measured."""
        r = self.record
        return "  ".join(f"{k} {r[k]:.4g}" for k in self.losses) + (
            f"  {r['img_per_s']:,.0f} img/s" if "img_per_s" in r else "")


class MetricsWindow:
    """The steps since the last log line. ``sums`` (a loss name -> its sum over the window, a device
    tensor) is what the Trainer checks for finiteness: a non-finite loss stays non-finite in the sum."""

    def __init__(self) -> None:
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0  # steps in the window
        self.images = 0  # images trained on in its timed steps
        self.start = now  # when its timing began

    def add(self, logs: dict[str, torch.Tensor], images: int, timed: bool = True) -> None:
        """One step's losses (detached scalar tensors) and its ``images``. A step that is not ``timed``
        (a torch.compile warm-up) counts in the means but not in img/s: the timing restarts after it."""
        for k, v in logs.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1
        if timed:
            self.images += images
        else:
            self.start = time.perf_counter()

    def flush(self, position: dict[str, Any], extra: dict[str, Any],
              mean_across: Callable[[torch.Tensor], torch.Tensor] | None = None) -> LogLine | None:
        """The window's log line, then an empty window; None if no step was taken since the last line.
        The record is ``position`` (step, epoch, ...), img/s, ``extra`` and the mean of each loss over
        the window (over every process's window when ``mean_across`` averages a tensor across them)."""
        if self.count == 0:
            return None
        now = time.perf_counter()
        record = dict(position)
        if self.images:
            record["img_per_s"] = round(self.images / max(now - self.start, 1e-9), 1)
        record.update(extra)
        totals = torch.stack([v.detach().double().reshape(()) for v in self.sums.values()])  # one read-back
        if mean_across is not None:
            totals = mean_across(totals)
        record.update({k: total / self.count for k, total in zip(self.sums, totals.tolist())})
        line = LogLine(record, list(self.sums))
        self._reset(now)
        return line
