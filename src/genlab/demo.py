"""`genlab demo`: the seed document's two models on the bundled digits, in under a minute."""
from __future__ import annotations

import time
from pathlib import Path

from .api import train
from .viz.grid import paired_rows, save_grid

# 8x8 digits: 1,437 training images, so an epoch is only 12 steps; both models get more
# epochs than the seed's 10 to reach recognisable samples (the seed's setting is `genlab
# train seed-vae`, exactly).
DEMO_EPOCHS = {"seed-vae": 100, "seed-gan": 150}


def run_demo(out: Path, progress: bool = True) -> dict[str, Path]:
    out = Path(out)
    results = {}
    start = time.perf_counter()
    for preset, epochs in DEMO_EPOCHS.items():
        print(f"== training {preset} on digits ({epochs} epochs) -> {out / preset}")
        # replaces the run an earlier demo left there, and nothing else: a folder of that name that is
        # not a genlab run (or is the working directory) is refused, never deleted
        res = train(preset, "digits", out=out / preset, epochs=epochs, progress=progress, overwrite=True)
        results[preset] = res
    vae = results["seed-vae"].model
    from .data import load_dataset

    test = load_dataset("digits").test.images[:32].float().div(255)
    recon = vae.reconstruct(test.to(vae.device)).cpu()
    recon_path = save_grid(paired_rows(test, recon), out / "seed-vae" / "reconstructions.png", nrow=8)
    seconds = time.perf_counter() - start
    print(f"\ndone in {seconds:.0f} s. Look at:")
    for preset, res in results.items():
        print(f"  {preset:<9} samples         {res.samples}   (one grid per epoch in {res.run_dir / 'samples'})")
    print(f"  seed-vae  reconstructions {recon_path}   (rows: originals, then their reconstructions)")
    print(f"  metrics of every step:    {out}/*/metrics.jsonl")
    print(f"next: `genlab sample {out / 'seed-gan'} -n 64 -o grid.png`, "
          f"`genlab train seed-vae --data fashion-mnist`, `genlab --help`")
    return {p: r.run_dir for p, r in results.items()}
