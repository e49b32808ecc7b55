"""Evaluation speed: 10,000 samples end to end, and the IWAE NLL of seed-vae.

    python bench/eval_speed.py [--data fashion-mnist] [--threads 2] [--k 1000] [--run RUN]

1. Sample metrics: features of 10,000 samples through the (cached) evaluator, then FID, KID,
   IS, precision/recall/density/coverage, class histogram and the memorisation check against
   the 10,000-image test split — the work of `genlab eval` once the evaluator exists (its
   one-time training is reported separately).
2. IWAE NLL with k importance samples on all 10,000 test images for a seed-vae run
   (trained here for 10 epochs if --run is not given).
Writes bench/results/eval_speed.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--run", help="a seed-vae run folder (default: train one, 10 epochs)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import genlab
    from genlab.data import load_dataset
    from genlab.eval import evaluate_images, get_evaluator, vae_likelihood

    ds = load_dataset(args.data, progress=False)
    t = time.perf_counter()
    ev = get_evaluator(ds, progress=False)
    t_evaluator = time.perf_counter() - t
    trained = getattr(ev, "trained_now", False)

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or genlab.train("seed-vae", args.data, out=Path(tmp) / "vae", progress=False).run_dir
        model = genlab.load(run)
        samples = model.sample(args.n, generator=torch.Generator().manual_seed(0))
        evaluate_images(samples[:500], ds, ev)  # warm the evaluator's cached split features
        t = time.perf_counter()
        result = evaluate_images(samples, ds, ev)
        t_metrics = time.perf_counter() - t
        t = time.perf_counter()
        lik = vae_likelihood(model, ds.test.images, k=args.k, progress=False)
        t_iwae = time.perf_counter() - t

    out = {"data": args.data, "threads": args.threads, "n_samples": args.n,
           "command": "python bench/eval_speed.py " + " ".join(sys.argv[1:]),
           "evaluator_seconds": t_evaluator, "evaluator_trained_now": trained,
           "sample_metrics_seconds": t_metrics, "metrics": result["metrics"],
           "iwae_k": args.k, "iwae_images": len(ds.test), "iwae_seconds": t_iwae, "likelihood": lik}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "eval_speed.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"evaluator: {t_evaluator:.1f} s ({'trained now' if trained else 'from cache'})")
    print(f"sample metrics, {args.n} samples end to end: {t_metrics:.1f} s")
    print(f"IWAE NLL k={args.k} on {len(ds.test)} test images: {t_iwae:.1f} s")
    print(json.dumps({k: v for k, v in lik.items() if not isinstance(v, dict)}, default=str))


if __name__ == "__main__":
    main()
