"""Training throughput: the seed's DataLoader loop vs `genlab train`, side by side, same data.

    python bench/throughput.py [--epochs 1] [--threads 2] [--data fashion-mnist]

Each case runs in its own process, ``--repeats`` times interleaved (median reported), (so peak memory is its own) on the 60,000 training images,
batch 128, ``torch.set_num_threads(threads)``. Prints a Markdown table and writes
bench/results/throughput.json. The compute limit is the measured fp32 matmul rate divided by
the model's training FLOPs per image (multiply-adds x 2, backward = 2 x forward).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))


def matmul_gflops(threads: int, n: int = 1024, reps: int = 30) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def linear_macs(module) -> int:
    import torch

    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))


def train_flops_per_image(case: str) -> float:
    """FLOPs of one training image: forward 2*MACs, backward 2x forward."""
    from genlab.models import build_model

    if case.endswith("vae"):
        return 3 * 2 * linear_macs(build_model("mlp-vae", {}, (1, 28, 28)))
    gan = build_model("mlp-gan", {}, (1, 28, 28))
    g, d = linear_macs(gan.generator), linear_macs(gan.discriminator)
    # D step: G fwd + D fwd on real and fake + D bwd (2x);  G step: G fwd + D fwd + D bwd to the
    # input only (~1x) + G bwd (2x)
    return 2 * ((g + 2 * d + 4 * d) + (g + d + d + 2 * g))


def run_case(case: str, data: str, epochs: int, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from genlab.data import load_dataset

    ds = load_dataset(data, progress=False)
    n = len(ds.train) * epochs
    if case.startswith("seed-loop"):
        import seed_loop

        images = ds.train.images.numpy()
        dataset = seed_loop.ImageDataset(np.ascontiguousarray(images))
        t = time.perf_counter()
        (seed_loop.train_vae if case.endswith("vae") else seed_loop.train_gan)(dataset, epochs=epochs)
        seconds = time.perf_counter() - t
    else:
        import genlab

        with tempfile.TemporaryDirectory() as tmp:
            res = genlab.train("seed-vae" if case.endswith("vae") else "seed-gan", data, out=Path(tmp) / "run",
                               epochs=epochs, batch_size=128, progress=False, device="cpu")
            seconds = res.state.train_seconds
    return {"case": case, "images": n, "seconds": seconds, "img_per_s": n / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all cases; the median is reported")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.data, args.epochs, args.threads)))
        return
    cases = ("seed-loop-vae", "genlab-seed-vae", "seed-loop-gan", "genlab-seed-gan")
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    for round_ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every case
        for case in cases:
            out = subprocess.run([sys.executable, __file__, "--case", case, "--epochs", str(args.epochs),
                                  "--threads", str(args.threads), "--data", args.data],
                                 check=True, capture_output=True, text=True).stdout
            runs[case].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {round_ + 1}: {case}: {runs[case][-1]['img_per_s']:.0f} img/s", file=sys.stderr)
    rows = []
    for case in cases:
        rates = sorted(r["img_per_s"] for r in runs[case])
        rows.append({"case": case, "img_per_s": statistics.median(rates), "img_per_s_runs": rates,
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in runs[case])})
    gflops = matmul_gflops(args.threads)
    for r in rows:
        flops = train_flops_per_image(r["case"])
        r["train_mflops_per_image"] = flops / 1e6
        r["compute_limit_img_per_s"] = gflops * 1e9 / flops
        r["fraction_of_limit"] = r["img_per_s"] / r["compute_limit_img_per_s"]
    base = {r["case"].split("-")[-1]: r["img_per_s"] for r in rows if r["case"].startswith("seed-loop")}
    for r in rows:
        r["speedup_vs_seed_loop"] = r["img_per_s"] / base[r["case"].split("-")[-1]]
    result = {"data": args.data, "epochs": args.epochs, "threads": args.threads, "batch_size": 128,
              "repeats": args.repeats, "command": "python bench/throughput.py " + " ".join(sys.argv[1:]),
              "matmul_gflops_fp32": gflops, "machine": platform.processor() or platform.machine(), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"fp32 matmul (1024^3, {args.threads} threads): {gflops:.1f} GFLOP/s\n")
    print("| case | img/s (median) | vs seed loop | MFLOP/img | compute limit img/s | of limit | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['img_per_s']:,.0f} | {r['speedup_vs_seed_loop']:.2f}x | "
              f"{r['train_mflops_per_image']:.2f} | {r['compute_limit_img_per_s']:,.0f} | "
              f"{100 * r['fraction_of_limit']:.0f}% | {r['peak_rss_mib']:,.0f} |")


if __name__ == "__main__":
    main()
