"""scripts/color_fashion_mnist.py: the 32x32 RGB set the zoo's RGB check trains on."""
import importlib.util
from pathlib import Path

import numpy as np

from genlab.data import load_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "color_fashion_mnist.py"


def _script():
    spec = importlib.util.spec_from_file_location("color_fashion_mnist", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_colourize_blends_one_foreground_over_one_background_per_image():
    mod = _script()
    grey = np.zeros((5, 1, 4, 4), np.uint8)
    grey[:, :, :2] = 255  # top half garment, bottom half background
    rgb = mod.colourize(grey, np.random.default_rng(0))
    assert rgb.shape == (5, 3, 4, 4) and rgb.dtype == np.uint8
    fg, bg = rgb[:, :, 0, 0], rgb[:, :, 3, 3]
    assert (rgb[:, :, :2] == fg[:, :, None, None]).all() and (rgb[:, :, 2:] == bg[:, :, None, None]).all()
    assert (fg.max(1) >= 0.7 * 255 - 1).all() and (bg.max(1) <= 0.35 * 255 + 1).all()  # HSV value ranges
    assert len({tuple(c) for c in fg}) == 5  # a colour of its own for every image


def test_the_script_writes_an_npz_genlab_reads_as_32x32_rgb(tmp_path):
    out = tmp_path / "cfm.npz"
    _script().main([str(out), "--size", "12"])
    ds = load_dataset(f"npz:{out}", progress=False)
    fm = load_dataset("fashion-mnist", image_size=12, progress=False)
    assert ds.image_shape == (3, 12, 12) and len(ds.train) == 60000 and len(ds.test) == 10000
    assert ds.class_names == fm.class_names and np.array_equal(ds.test.labels, fm.test.labels)
    # the garment's grey level survives as the blend weight: brighter grey, nearer the foreground colour
    x = ds.train.images[:200].float()
    spread = (x.amax(dim=(2, 3)) - x.amin(dim=(2, 3))).amax(1)
    assert (spread > 60).float().mean() > 0.95
