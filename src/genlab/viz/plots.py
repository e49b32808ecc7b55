"""Training curves from a run's metrics.jsonl, drawn with matplotlib (Agg backend, PNG bytes).

matplotlib is imported inside the functions that draw, so ``import genlab`` and training stay fast.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..fileio import read_jsonl

# Fields of a metrics.jsonl line that are bookkeeping, not curves.
_NOT_CURVES = {"step", "epoch", "images", "time", "img_per_s", "event", "samples"}
MAX_PANELS = 8


def read_metrics(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(step lines, epoch_end lines) of RUN/metrics.jsonl; empty lists when there is no log."""
    path = Path(run_dir) / "metrics.jsonl"
    steps, epochs = [], []
    for rec in read_jsonl(path):  # a torn last line (a kill, a full disk) is skipped
        if "event" not in rec:
            steps.append(rec)
        elif rec["event"] == "epoch_end":
            epochs.append(rec)
    return steps, epochs


def _series(records: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """name -> (epochs, values) for every numeric, non-constant field of ``records``."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records:
        for k, v in rec.items():
            if k in _NOT_CURVES or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            xs, ys = out.setdefault(k, ([], []))
            xs.append(float(rec["epoch"]))
            ys.append(float(v))
    return {k: v for k, v in out.items() if len(set(v[1])) > 1}


def loss_curves_png(run_dir: str | Path, title: str = "", dpi: int = 80) -> bytes | None:
    """One small panel per logged training quantity (losses, KL, D(x) ...) against epochs, plus the
    held-out per-epoch values (e.g. test ELBO) as dots; PNG bytes, or None when nothing was logged."""
    steps, epochs = read_metrics(run_dir)
    panels = [(k, xy, False) for k, xy in _series(steps).items()]
    panels += [(f"{k} (held out)", xy, True) for k, xy in _series(epochs).items()]
    panels = panels[:MAX_PANELS]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, (xs, ys), held_out) in zip(axes.flat, panels):
        if held_out:
            ax.plot(xs, ys, "o-", color="tab:orange", markersize=3, linewidth=1)
        else:
            ax.plot(xs, ys, color="tab:blue", linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
