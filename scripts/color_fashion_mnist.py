"""Write Colour Fashion-MNIST: a 32x32 RGB image set made from Fashion-MNIST, as an .npz for `--data npz:`.

No 32x32 RGB dataset (CIFAR-10, SVHN) can be downloaded on the project's machines, so the zoo's
presets are checked on 32x32 RGB images made from real ones: every Fashion-MNIST image is resized
to 32x32 (Pillow's LANCZOS, as `--image-size 32` does) and its grey level m in [0, 1] blends a
foreground colour over a background colour, x = m * fg + (1 - m) * bg. The foreground has a random
hue, saturation in [0.55, 1] and value in [0.7, 1]; the background a random hue, saturation in
[0, 0.6] and value in [0.05, 0.35]. A model must learn the shapes, which colours occur and that
they are joint per image (one garment colour, one background). Labels stay the 10 garment classes,
so the evaluator (a classifier of them) judges shapes; colour is judged by looking at the grids.

    python scripts/color_fashion_mnist.py runs/color-fashion-mnist-32.npz
    genlab train dcgan --data npz:runs/color-fashion-mnist-32.npz
"""
from __future__ import annotations

import argparse
import colorsys
import io
from pathlib import Path

import numpy as np

from genlab.data import load_dataset
from genlab.fileio import atomic_write_bytes


def _colours(rng: np.random.Generator, n: int, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    hsv = np.stack([rng.uniform(0, 1, n), rng.uniform(*sat, n), rng.uniform(*val, n)], 1)
    return np.array([colorsys.hsv_to_rgb(*c) for c in hsv], dtype=np.float32)  # (n, 3) in [0, 1]


def colourize(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 1, H, W) uint8 grey -> (N, 3, H, W) uint8 RGB, one foreground and one background colour per image."""
    n = len(grey)
    fg = _colours(rng, n, (0.55, 1.0), (0.7, 1.0))[:, :, None, None]
    bg = _colours(rng, n, (0.0, 0.6), (0.05, 0.35))[:, :, None, None]
    m = grey.astype(np.float32) / 255.0
    return np.rint((m * fg + (1.0 - m) * bg) * 255.0).astype(np.uint8)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the .npz to write")
    p.add_argument("--size", type=int, default=32, help="pixels per side (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the colours (default 0)")
    p.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST IDX files")
    args = p.parse_args(argv)
    ds = load_dataset("fashion-mnist", data_dir=args.data_dir, image_size=args.size, progress=False)
    rng = np.random.default_rng(args.seed)
    train = colourize(ds.train.images.numpy(), rng)
    test = colourize(ds.test.images.numpy(), rng)

    buf = io.BytesIO()
    np.savez(buf, images=train, labels=ds.train.labels.numpy(), test_images=test,
             test_labels=ds.test.labels.numpy(), class_names=np.array(ds.class_names))
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}: {len(train)} + {len(test)} RGB images of {args.size}x{args.size}")


if __name__ == "__main__":
    main()
