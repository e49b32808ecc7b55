"""Training speed of genlab's models against the seed's loop and against the machine's compute limit.

    python bench/speed.py                       # the full table (about 40 minutes on the 2-core CPU)
    python bench/speed.py --quick               # smoke test: digits, 1 s per case, one round
    python bench/speed.py --models seed-vae --batch-sizes 128 --modes fp32,bf16 --repeats 5
    python bench/speed.py --device cuda --modes fp32,bf16,fp16,compile     # the same table on a GPU

Cases: every model (seed-vae, seed-gan, conv-vae, dcgan) x batch size (128, 512) x mode
(fp32; bf16 = ``--precision bf16``; compile = ``--compile`` in fp32; bf16+compile; fp16 on CUDA only),
plus the seed's own DataLoader loop (bench/seed_loop.py, fp32, CPU only) for seed-vae and
seed-gan at each batch size. Each case runs in its own process (its peak memory is its own) on
Fashion-MNIST, ``torch.set_num_threads(threads)``, through genlab's Trainer as `genlab train`
runs it: a few steps to warm up (torch.compile compiles here; its seconds are reported apart),
then ``--seconds`` of training time on full batches (drop_last), timed by the Trainer (the
per-epoch evaluation is not training time); then
sampling (the model's ``sample``, batch 1,000, in the case's mode). Rounds are interleaved so
that a slow spell of a shared machine hits every case; the median is reported.

Compute limit = measured matmul rate (1024^3 fp32, and bf16, same threads) / training FLOPs per
image (torch.utils.flop_counter.FlopCounterMode over one eager fp32 training step: every matmul
and convolution of the forward and backward passes of all the step's updates, 2 FLOPs per
multiply-add). It bounds what any implementation of the same arithmetic can reach on this machine.

Writes bench/results/speed.json (``--quick``: bench/out/speed-quick.json) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
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

MODELS = ("seed-vae", "seed-gan", "conv-vae", "dcgan")
MODES = {  # name -> (precision, compile)
    "fp32": ("fp32", False),
    "bf16": ("bf16", False),
    "compile": ("fp32", True),
    "bf16+compile": ("bf16", True),
    "fp16": ("fp16", False),
}
SEED_LOOP = {"seed-vae": "train_vae", "seed-gan": "train_gan"}


# ----------------------------------------------------------------------------- measurements

def matmul_gflops(threads: int, device: str, dtype_name: str, n: int = 1024, seconds: float = 1.0) -> float:
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype_name])
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for _ in range(5):
            a @ b
        reps += 5
        sync()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def train_flops_per_image(model_name: str, image_shape: tuple[int, int, int], batch: int = 128) -> float:
    """FLOPs of one eager fp32 training step (forward + backward of every update), per image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from genlab.models import Batch, build_model
    from genlab.models.registry import resolve

    preset = resolve(model_name)
    torch.manual_seed(0)
    model = build_model(preset.model, preset.model_config, image_shape)
    opts = model.configure_optimizers()
    x = torch.rand(batch, *image_shape)
    model.train_step(Batch(x), 0, opts)  # lazy state (Adam moments) out of the count
    counter = FlopCounterMode(display=False)
    with counter:
        model.train_step(Batch(x), 1, opts)
    return counter.get_total_flops() / batch


def peak_memory_mib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_genlab_case(model_name: str, batch: int, mode: str, args) -> dict:
    """One case, in this process: warm-up steps, then ``args.seconds`` of timed training, then sampling."""
    import torch

    from genlab.data import load_dataset
    from genlab.models import build_model
    from genlab.models.registry import resolve
    from genlab.training.trainer import TrainConfig, Trainer

    precision, compile_ = MODES[mode]
    ds = load_dataset(args.data, progress=False)
    preset = resolve(model_name)
    torch.manual_seed(0)
    model = build_model(preset.model, preset.model_config, ds.image_shape, ds.num_classes)
    # drop_last: every timed step is a full batch (a compiled model would compile the short last batch once)
    cfg = TrainConfig(epochs=10_000, batch_size=batch, log_every=10**9, sample_every=0, precision=precision,
                      compile=compile_, device=args.device, max_steps=args.warmup_steps, checkpoint_minutes=1e9,
                      drop_last=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, ds, cfg, tmp, progress=False)
        t = time.perf_counter()
        trainer.fit()  # warm-up: allocations, caches, and with compile the compilation
        warmup_seconds = time.perf_counter() - t
        st = trainer.state
        images0, seconds0 = st.images_seen, st.train_seconds
        cfg.max_steps, cfg.max_seconds = None, st.train_seconds + args.seconds
        trainer.fit()
        images, seconds = st.images_seen - images0, st.train_seconds - seconds0
        compile_warmup = None
        for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") == "compile_warmup" and compile_warmup is None:
                compile_warmup = rec["seconds"]
    sample_rate = sampling_rate(model, trainer.context, args)
    return {"model": model_name, "batch": batch, "mode": mode, "images": images, "seconds": seconds,
            "img_per_s": images / seconds, "warmup_seconds": warmup_seconds, "compile_warmup_seconds": compile_warmup,
            "sample_img_per_s": sample_rate, "peak_mib": peak_memory_mib(args.device)}


def sampling_rate(model, context, args, n: int = 1000) -> float:
    import torch

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    model.eval()
    gen = torch.Generator(device=model.device).manual_seed(0)
    with context.autocast():
        model.sample(n, generator=gen)  # warm-up (and compiles the eval-mode graphs)
        sync()
        count, t = 0, time.perf_counter()
        while time.perf_counter() - t < args.sample_seconds or count == 0:
            model.sample(n, generator=gen)
            count += n
        sync()
    return count / (time.perf_counter() - t)


def run_seed_loop_case(model_name: str, batch: int, args) -> dict:
    import numpy as np
    import seed_loop
    import torch

    from genlab.data import load_dataset

    ds = load_dataset(args.data, progress=False)
    dataset = seed_loop.ImageDataset(np.ascontiguousarray(ds.train.images.numpy()))
    torch.manual_seed(0)
    if ds.image_shape != (1, 28, 28):  # the seed's loop is written for 28 x 28 images
        raise SystemExit(f"the seed loop needs 28x28 images; {args.data} has {ds.image_shape}")
    t = time.perf_counter()
    getattr(seed_loop, SEED_LOOP[model_name])(dataset, epochs=1, batch_size=batch)
    seconds = time.perf_counter() - t
    return {"model": model_name, "batch": batch, "mode": "seed loop", "images": len(dataset), "seconds": seconds,
            "img_per_s": len(dataset) / seconds, "warmup_seconds": 0.0, "compile_warmup_seconds": None,
            "sample_img_per_s": None, "peak_mib": peak_memory_mib("cpu")}


def run_case(spec: dict, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if spec["mode"] == "seed loop":
        return run_seed_loop_case(spec["model"], spec["batch"], args)
    return run_genlab_case(spec["model"], spec["batch"], spec["mode"], args)


# ----------------------------------------------------------------------------- the table

def child_command(spec: dict, args) -> list[str]:
    return [sys.executable, __file__, "--case", json.dumps(spec), "--data", args.data, "--threads", str(args.threads),
            "--seconds", str(args.seconds), "--sample-seconds", str(args.sample_seconds), "--device", args.device,
            "--warmup-steps", str(args.warmup_steps)]


def case_env(args) -> dict[str, str]:
    """The cases' environment. OMP_WAIT_POLICY matters on a small CPU: PASSIVE puts idle OpenMP threads
    to sleep after every parallel region, and waking them costs tens of microseconds per op, which at
    batch 128 slows seed-vae by a third; it is right only when another busy process shares the cores."""
    env = dict(os.environ)
    if args.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch-sizes", default="128,512")
    ap.add_argument("--modes", default="fp32,bf16,compile", help=f"comma-separated, of: {', '.join(MODES)}")
    ap.add_argument("--no-seed-loop", action="store_true", help="skip the seed loop's baseline rows")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15.0, help="timed training per case (after the warm-up)")
    ap.add_argument("--sample-seconds", type=float, default=3.0)
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds over all cases; the median is reported")
    ap.add_argument("--omp-wait-policy", choices=("inherit", "ACTIVE", "PASSIVE"), default="inherit",
                    help="OMP_WAIT_POLICY of the cases: 'inherit' (default) keeps this shell's (unset: the OpenMP "
                         "runtime's default, what `genlab train` gets); PASSIVE only when sharing the cores")
    ap.add_argument("--quick", action="store_true", help="smoke test: digits, 1 s per case, one round, batch 128")
    ap.add_argument("--out", help="results JSON (default bench/results/speed.json; --quick: bench/out/speed-quick.json)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case), args)))
        return
    if args.quick:
        args.data, args.seconds, args.sample_seconds, args.repeats, args.warmup_steps = "digits", 1.0, 0.3, 1, 2
        if args.batch_sizes == "128,512":
            args.batch_sizes = "128"
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if "fp16" in modes and not args.device.startswith("cuda"):
        ap.error("fp16 trains on CUDA GPUs only (use bf16 on CPU)")
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    specs = []
    for model in models:
        for batch in batches:
            if model in SEED_LOOP and not args.no_seed_loop and args.device == "cpu" and args.data != "digits":
                specs.append({"model": model, "batch": batch, "mode": "seed loop"})
            specs += [{"model": model, "batch": batch, "mode": mode} for mode in modes]

    runs: dict[str, list[dict]] = {json.dumps(s): [] for s in specs}
    for round_ in range(args.repeats):
        for spec in specs:
            out = subprocess.run(child_command(spec, args), capture_output=True, text=True, check=False,
                                 env=case_env(args))
            if out.returncode != 0:
                sys.exit(f"case {spec} failed:\n{out.stderr[-4000:]}")
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            runs[json.dumps(spec)].append(rec)
            print(f"round {round_ + 1}: {spec['model']} batch {spec['batch']} {spec['mode']}: "
                  f"{rec['img_per_s']:,.0f} img/s", file=sys.stderr, flush=True)

    import torch

    from genlab.data import load_dataset

    image_shape = tuple(load_dataset(args.data, progress=False).image_shape)
    rates = {p: matmul_gflops(args.threads, args.device, p) for p in ("fp32", "bf16")}
    flops = {m: train_flops_per_image(m, image_shape) for m in models}
    rows = []
    for spec in specs:
        recs = runs[json.dumps(spec)]
        rate = statistics.median(r["img_per_s"] for r in recs)
        row = {**spec, "img_per_s": rate, "img_per_s_runs": sorted(r["img_per_s"] for r in recs),
               "train_mflops_per_image": flops[spec["model"]] / 1e6,
               "fp32_limit_img_per_s": rates["fp32"] * 1e9 / flops[spec["model"]],
               "sample_img_per_s": statistics.median(r["sample_img_per_s"] for r in recs)
               if recs[0]["sample_img_per_s"] is not None else None,
               "compile_warmup_seconds": statistics.median(r["compile_warmup_seconds"] for r in recs)
               if recs[0]["compile_warmup_seconds"] is not None else None,
               "peak_mib": max(r["peak_mib"] for r in recs)}
        row["of_fp32_limit"] = rate / row["fp32_limit_img_per_s"]
        rows.append(row)
    base = {(r["model"], r["batch"]): r["img_per_s"] for r in rows if r["mode"] == "seed loop"}
    for r in rows:
        b = base.get((r["model"], r["batch"]))
        r["vs_seed_loop"] = r["img_per_s"] / b if b else None

    result = {"command": "python bench/speed.py " + " ".join(sys.argv[1:]), "data": args.data, "device": args.device,
              "threads": args.threads,
              "omp_wait_policy": case_env(args).get("OMP_WAIT_POLICY", "unset"), "seconds_per_case": args.seconds, "repeats": args.repeats,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "matmul_gflops": rates, "rows": rows}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    out = Path(args.out) if args.out else (HERE / "out" / "speed-quick.json" if args.quick
                                           else HERE / "results" / "speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nOMP_WAIT_POLICY {result['omp_wait_policy']}; matmul 1024^3 on {args.device}, {args.threads} threads: fp32 {rates['fp32']:.1f} GFLOP/s, "
          f"bf16 {rates['bf16']:.1f} GFLOP/s; {args.repeats} round(s), median; results in {out}\n")
    print("| model | batch | mode | train img/s | vs seed loop | MFLOP/img | fp32 limit img/s | of limit "
          "| compile warm-up s | sample img/s | peak MiB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        def fmt(v, spec):
            return "" if v is None else format(v, spec)
        print(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['img_per_s']:,.0f} | "
              f"{fmt(r['vs_seed_loop'], '.2f')}{'x' if r['vs_seed_loop'] else ''} | {r['train_mflops_per_image']:.2f} | "
              f"{r['fp32_limit_img_per_s']:,.0f} | {100 * r['of_fp32_limit']:.0f}% | "
              f"{fmt(r['compile_warmup_seconds'], '.1f')} | {fmt(r['sample_img_per_s'], ',.0f')} | "
              f"{r['peak_mib']:,.0f} |")


if __name__ == "__main__":
    main()
