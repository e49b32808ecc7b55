"""Every preset under one protocol on one machine: the figures and grids of docs/presets.md.

    python bench/presets.py                          # every preset, seed 0 (about 2 hours on a 2-core CPU)
    python bench/presets.py --presets dcgan,sngan --seeds 0,1,2
    python bench/presets.py --quick                  # smoke test: digits, 20 steps a preset, bench/out only

The protocol: ``genlab train PRESET --data fashion-mnist --seed S`` with the preset's default budget,
then ``genlab eval RUN --likelihood-k 100`` (10,000 samples against the 10,000 test images in the
feature space of genlab's evaluator; for a VAE also the test ELBO and the IWAE NLL with k = 100),
plus the evaluator's calibration rows (``genlab eval --calibrate``) once. Each preset and seed is
trained in its own process; the run folders stay under bench/out/presets/.

The default budgets are counted in epochs, so the scores do not depend on what else the machine
was doing; the training minutes do (they are the Trainer's training time, recorded as measured).

Results go to bench/results/presets.json, one record per preset and seed, each naming the CPU,
torch, date and evaluator weights; a record already there for the same preset, seed and CPU model
is kept, so an interrupted measurement continues where it stopped. Each preset's seed-0 run then
draws docs/gallery/presets/PRESET.png with ``genlab sample RUN -n 64`` (``--per-class 8`` for a
conditional model: one row per class), as the gallery's grids are drawn.
scripts/gen_presets_doc.py turns the file into the tables of docs/presets.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's genlab, whatever is installed

from genlab.fileio import atomic_write_json, read_jsonl  # noqa: E402
from genlab.models import PRESETS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "presets.json"
GRIDS = ROOT / "docs" / "gallery" / "presets"


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it, with its core count and whether it has AVX-512."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            info.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine()
    flags = f" {info.get('flags', '')} "
    avx = "AVX-512" if " avx512f " in flags else ("AVX2, no AVX-512" if " avx2 " in flags else "no AVX2")
    family = f", family {info['cpu family']} model {info['model']}" if "cpu family" in info else ""
    return f"{os.cpu_count()}-core {model}{family} ({avx})"


def genlab(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "genlab", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-3000:]}")
    return proc


def train_and_eval(preset: str, seed: int, data: str, out: Path, extra: list[str], n: int, k: int) -> dict:
    run = out / f"{preset}-s{seed}"
    last = run / "checkpoints" / "last.safetensors"
    finished = (run / "eval.json").exists()
    if not finished:
        if last.exists():  # an interrupted measurement: continue the same run
            genlab("train", "--resume", str(run), "--no-progress")
        else:
            genlab("train", preset, "--data", data, "--seed", str(seed), "--out", str(run), "--overwrite",
                   "--no-progress", *extra)
        genlab("eval", str(run), "-n", str(n), "--likelihood-k", str(k), "--no-progress")
    log = read_jsonl(run / "metrics.jsonl")
    ends = [r for r in log if r.get("event") == "epoch_end"]
    ev = json.loads((run / "eval.json").read_text())
    m, lk = ev["metrics"], ev.get("likelihood") or {}
    images = max((r.get("images", 0) for r in log), default=0)
    seconds = max((r.get("time", 0.0) for r in log), default=0.0)
    record = {
        "preset": preset, "seed": seed, "data": data,
        "epochs": ends[-1]["epoch"] if ends else None, "images": images,
        "train_minutes": round(seconds / 60, 2), "img_per_s": round(images / seconds, 1) if seconds else None,
        "fid": m["fid"], "kid": m["kid"], "precision": m["precision"], "recall": m["recall"],
        "coverage": m["coverage"], "classes": m["classes_covered"], "num_classes": m["num_classes"],
        "memorization": m.get("memorization", {}).get("fraction_closer_than_test_p1"),
        "elbo": lk.get("elbo"), "nll": lk.get("nll_iwae"), "nll_k": lk.get("k") if lk.get("nll_iwae") is not None else None,
        "likelihood": lk.get("likelihood"),
        "evaluator_weights": ev["protocol"]["evaluator_weights_sha256"][:12],
    }
    return record


def draw_grid(preset: str, run: Path) -> str | None:
    """docs/gallery/presets/PRESET.png from the run's last checkpoint (64 samples at noise seed 0, or 8 per
    class for a conditional model); its path relative to docs/, or None when the run is not there."""
    if not (run / "checkpoints" / "last.safetensors").exists():
        return None
    import genlab
    per_class = ["--per-class", "8"] if genlab.load(run).conditional else ["-n", "64"]
    GRIDS.mkdir(parents=True, exist_ok=True)
    genlab("sample", str(run), *per_class, "--seed", "0", "-o", str(GRIDS / f"{preset}.png"))
    return f"gallery/presets/{preset}.png"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated (default: every preset)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("-n", type=int, default=10_000, help="samples scored (default 10000)")
    ap.add_argument("--likelihood-k", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="digits, 20 steps, 500 samples; writes only bench/out")
    args = ap.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        ap.error(f"unknown preset(s) {', '.join(unknown)}; genlab has {', '.join(PRESETS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = ROOT / "bench" / "out" / ("presets-quick" if args.quick else "presets")
    out.mkdir(parents=True, exist_ok=True)
    extra, data, n, k = [], args.data, args.n, args.likelihood_k
    if args.quick:
        extra, data, n, k = ["--max-steps", "20"], "digits", 500, 5
    results_path = out / "presets.json" if args.quick else RESULTS

    import torch
    machine = {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "python": platform.python_version()}
    results = json.loads(results_path.read_text()) if results_path.exists() else {"records": []}
    if "calibration" not in results or results.get("machine", {}).get("cpu") != machine["cpu"]:
        proc = genlab("eval", "--calibrate", "--data", data, "-n", str(n), "--json", "--no-progress")
        results["calibration"] = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("["):])[0]
    results["machine"] = machine
    results["protocol"] = (f"genlab train PRESET --data {data} --seed S (default budget); "
                           f"genlab eval RUN -n {n} --likelihood-k {k}")
    for preset in presets:
        for seed in seeds:
            done = [r for r in results["records"] if r["preset"] == preset and r["seed"] == seed
                    and r.get("cpu") == machine["cpu"]]
            if done:
                print(f"{preset} seed {seed}: measured already on this CPU, kept", flush=True)
                continue
            record = train_and_eval(preset, seed, data, out, extra, n, k)
            record.update(cpu=machine["cpu"], torch=machine["torch"], date=_dt.date.today().isoformat())
            results["records"] = [r for r in results["records"] if not (r["preset"] == preset and r["seed"] == seed)]
            results["records"].append(record)
            atomic_write_json(results_path, results)
            print(f"{preset} seed {seed}: FID {record['fid']:.2f}, recall {record['recall']:.3f}, "
                  f"{record['classes']} classes, {record['train_minutes']} min"
                  + (f", NLL {record['nll']:.2f}" if record["nll"] is not None else ""), flush=True)
    if not args.quick:
        for preset in presets:
            grid = draw_grid(preset, out / f"{preset}-s0")
            if grid:
                results.setdefault("grids", {})[preset] = grid
        atomic_write_json(results_path, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
