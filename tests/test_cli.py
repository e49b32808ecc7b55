"""The command line end to end, as a new user types it."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SRC = str(Path(__file__).resolve().parents[1] / "src")


def genlab(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "genlab", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "vae"
    r = genlab("train", "seed-vae", "--epochs", "2", "--out", run, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"run folder: {run}" in r.stdout
    return run


def test_train_writes_config_metrics_checkpoint_and_a_sample_grid_per_epoch(vae_run):
    for name in ("config.json", "metrics.jsonl", "checkpoints/last.safetensors", "checkpoints/last.json"):
        assert (vae_run / name).is_file(), name
    grids = sorted((vae_run / "samples").glob("epoch-*.png"))
    assert [g.name for g in grids] == ["epoch-0001.png", "epoch-0002.png"]
    img = Image.open(grids[-1])
    # 64 digits of 8x8, enlarged 4x to 32x32, 8 per row, 2 px white padding: 8 * 34 + 2
    assert img.size == (274, 274) and img.mode == "L"
    assert np.asarray(img).std() > 10  # not a blank picture


def test_sample_writes_a_png_grid_and_an_npz_of_raw_samples(vae_run, tmp_path):
    r = genlab("sample", vae_run, "-n", "16", "-o", tmp_path / "grid.png")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "grid.png").size == (4 * 34 + 2, 4 * 34 + 2)
    r = genlab("sample", vae_run, "-n", "10", "-o", tmp_path / "s.npz")
    assert r.returncode == 0, r.stderr
    x = np.load(tmp_path / "s.npz")["images"]
    assert x.shape == (10, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def test_reconstruct_writes_originals_beside_reconstructions(vae_run, tmp_path):
    r = genlab("reconstruct", vae_run, "-n", "16", "-o", tmp_path / "r.png")
    assert r.returncode == 0, r.stderr
    img = np.asarray(Image.open(tmp_path / "r.png"), dtype=np.float64)
    assert img.shape == (4 * 34 + 2, 8 * 34 + 2)  # 2 rows of originals + 2 of reconstructions
    cell = lambda row, col: img[2 + row * 34: 34 * (row + 1), 2 + col * 34: 34 * (col + 1)]
    # a reconstruction resembles its original more than another image's original
    same = np.mean([np.abs(cell(0, c) - cell(1, c)).mean() for c in range(8)])
    other = np.mean([np.abs(cell(0, c) - cell(1, (c + 1) % 8)).mean() for c in range(8)])
    assert same < other


def test_help_texts_explain_every_command():
    r = genlab("--help")
    assert r.returncode == 0
    for cmd in ("train", "sample", "reconstruct", "datasets", "models", "demo"):
        assert cmd in r.stdout
    r = genlab("train", "--help")
    assert "--resume" in r.stdout and "--g-loss" in r.stdout and "fashion-mnist" in r.stdout


def test_models_and_datasets_list_what_is_there():
    r = genlab("models")
    assert r.returncode == 0 and "seed-vae" in r.stdout and "seed-gan" in r.stdout
    r = genlab("datasets")
    assert r.returncode == 0
    assert "digits" in r.stdout and "fashion-mnist" in r.stdout and "/usr/share/datasets/fashion-mnist" in r.stdout


def test_user_errors_are_one_clear_line_not_a_traceback(tmp_path, vae_run):
    cases = [
        (["sample", tmp_path / "missing-run"], "does not exist"),
        (["train", "seed-vea"], "unknown model or preset"),
        (["train", "seed-vae", "--data", f"folder:{tmp_path / 'nope'}"], str(tmp_path / "nope")),
        (["train", "seed-vae", "--out", vae_run], "--resume"),
        (["sample", vae_run, "-o", tmp_path / "x.jpg"], ".png"),
    ]
    for args, expected in cases:
        r = genlab(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert expected in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_reconstruct_on_a_gan_says_only_vaes_reconstruct(tmp_path):
    run = tmp_path / "gan"
    assert genlab("train", "seed-gan", "--epochs", "1", "--out", run, "--no-progress").returncode == 0
    r = genlab("reconstruct", run)
    assert r.returncode == 2 and "only VAEs" in r.stderr


def test_conditional_sampling_by_label_and_one_row_per_class(tmp_path, vae_run):
    run = tmp_path / "cgan"
    r = genlab("train", "cgan", "--epochs", "1", "--out", run, "--no-progress")
    assert r.returncode == 0, r.stderr
    r = genlab("sample", run, "--per-class", "3", "-o", tmp_path / "rows.png")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "rows.png").size == (3 * 34 + 2, 10 * 34 + 2)  # 10 rows of 3
    r = genlab("sample", run, "--label", "3", "-n", "5", "-o", tmp_path / "three.npz")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "three.npz")["images"].shape == (5, 1, 8, 8)
    r = genlab("sample", run, "--label", "12")
    assert r.returncode == 2 and "between 0 and 9" in r.stderr
    r = genlab("sample", vae_run, "--label", "1")
    assert r.returncode == 2 and "unconditional" in r.stderr
