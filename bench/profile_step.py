"""Where a training step's time goes: matmuls/convolutions, other kernels, and the host.

    python bench/profile_step.py                                  # the four models, batch 128 and 512, fp32 and bf16
    python bench/profile_step.py --models seed-vae --batch-sizes 128 --modes fp32

For each case: the model's own ``train_step`` (through the same StepContext the Trainer uses) on
Fashion-MNIST batches, a few steps of warm-up, then ``--steps`` steps under ``torch.profiler``.
The self time of every ATen operator is put in one of three bins:

  compute    matrix products and convolutions (addmm, mm, bmm, convolution and their backward):
             bounded by the machine's multiply-add rate;
  memory     every other kernel: element-wise ops, reductions, the fused Adam update, copies, the
             uint8 -> float conversion: each reads and writes its tensors once, so bounded by memory
             bandwidth (they do a few FLOPs per byte);
  host       the wall time of the steps not spent inside any operator: Python, the dispatcher,
             autograd's bookkeeping, waking the OpenMP threads.

The bin with the largest share is what limits the figure. Writes bench/results/profile.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

def is_compute(name: str) -> bool:
    """Matrix products (mm, addmm, bmm, ...) and convolutions (forward, backward, oneDNN's)."""
    op = name.split("::")[-1]
    return "mm" in op or "conv" in op or op in ("linear", "matmul")


def profile_case(model_name: str, batch: int, mode: str, steps: int, threads: int, data: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from genlab.data import load_dataset
    from genlab.models import Batch, build_model
    from genlab.models.registry import resolve
    from genlab.training.context import TrainingContext

    torch.set_num_threads(threads)
    ds = load_dataset(data, progress=False)
    preset = resolve(model_name)
    torch.manual_seed(0)
    model = build_model(preset.model, preset.model_config, ds.image_shape, ds.num_classes)
    ctx = TrainingContext(mode, torch.device("cpu"))
    model.step_context = ctx
    opts = model.configure_optimizers()
    images, labels = ds.train.images, ds.train.labels
    n = images.shape[0] // batch

    def step(i: int) -> None:
        j = (i % n) * batch
        x = images[j:j + batch].float().div_(255.0)
        y = labels[j:j + batch] if labels is not None else None
        ctx.begin_step(batch, batch)
        logs = model.train_step(Batch(x, y), i, opts)
        ctx.end_step()
        return logs

    for i in range(5):
        step(i)
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    plain = time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        profiled = time.perf_counter() - t
    compute = memory = 0.0
    top: dict[str, float] = {}
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        us = ev.self_cpu_time_total
        if is_compute(ev.key):
            compute += us
        else:
            memory += us
        top[ev.key] = us
    compute, memory = compute / 1e6, memory / 1e6
    host = max(profiled - compute - memory, 0.0)
    shares = {"compute": compute / profiled, "memory": memory / profiled, "host": host / profiled}
    return {"model": model_name, "batch": batch, "mode": mode, "steps": steps,
            "img_per_s": steps * batch / plain, "ms_per_step": 1e3 * plain / steps,
            "profiled_ms_per_step": 1e3 * profiled / steps, "shares": shares,
            "limited_by": max(shares, key=shares.get),
            "top_ops_ms_per_step": {k: round(v / 1e3 / steps, 3)
                                    for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:8]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="seed-vae,seed-gan,conv-vae,dcgan")
    ap.add_argument("--batch-sizes", default="128,512")
    ap.add_argument("--modes", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=0, help="profiled steps per case (default: about 3 s of training)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--out", default=str(HERE / "results" / "profile.json"))
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            for mode in args.modes.split(","):
                steps = args.steps or max(5, int(3.0 * {"seed-vae": 16000, "seed-gan": 16000}.get(model, 800) / batch))
                r = profile_case(model, batch, mode, steps, args.threads, args.data)
                rows.append(r)
                s = r["shares"]
                print(f"{model} batch {batch} {mode}: {r['img_per_s']:,.0f} img/s, {r['ms_per_step']:.2f} ms/step; "
                      f"compute {100 * s['compute']:.0f}%, memory {100 * s['memory']:.0f}%, host {100 * s['host']:.0f}% "
                      f"-> {r['limited_by']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "python bench/profile_step.py " + " ".join(sys.argv[1:]),
                                          "threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
