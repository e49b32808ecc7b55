"""What DiffAugment (genlab.nets.augment) costs per batch, against a dcgan training step.

Times, on random 28x28 grey images (batch 64, the dcgan preset's): the full policy
"color,translation,cutout" forward, forward + backward, each operation alone (forward + backward),
and one dcgan ``train_step`` without and with ``augment`` on (its D step augments real and fake, its
G step the fakes again: three augmentations per step). Median of interleaved rounds.

    OMP_NUM_THREADS=1 python bench/augment_cost.py [--threads 1] [--rounds 7] [--size 28] [--channels 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import genlab.models.zoo  # noqa: F401  (registers the convolutional models)
from genlab.models.base import Batch, StepContext
from genlab.models.registry import build_model, resolve
from genlab.nets.augment import DiffAugment


def per_call(fn, reps: int) -> float:
    """Seconds per call of ``fn`` (after two warm-up calls)."""
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.channels, args.size, args.size)
    ctx = StepContext()
    x = torch.rand(args.batch, *shape, requires_grad=True)
    full = DiffAugment("color,translation,cutout")
    ops = {name: DiffAugment(name) for name in full.ops}

    preset = resolve("dcgan")
    models = {}
    for policy in ("", "color,translation,cutout"):
        net = build_model(preset.model, {**preset.model_config, "augment": policy}, shape).train()
        models[policy] = (net, net.configure_optimizers())
    batch = Batch(torch.rand(args.batch, *shape))

    cases = {
        "augment forward": (lambda: full(x.detach(), ctx), 200),
        "augment forward+backward": (lambda: full(x, ctx).sum().backward(), 200),
        **{f"  {name} forward+backward": (lambda a=a: a(x, ctx).sum().backward(), 200) for name, a in ops.items()},
        "dcgan train_step, augment off": (lambda: models[""][0].train_step(batch, 0, models[""][1]), 20),
        "dcgan train_step, augment on": (lambda: models["color,translation,cutout"][0].train_step(
            batch, 0, models["color,translation,cutout"][1]), 20),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (fn, reps) in cases.items():
            times[name].append(per_call(fn, reps))
    step = statistics.median(times["dcgan train_step, augment off"])
    print(f"batch {args.batch} x {shape}, {args.threads} thread(s), torch {torch.__version__}, "
          f"median of {args.rounds} rounds")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:34s} {t * 1e3:8.3f} ms   {100 * t / step:6.2f} % of a dcgan step")


if __name__ == "__main__":
    main()
