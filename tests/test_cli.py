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


def help_entries(text: str, section: str, indent: int = 2) -> dict[str, str]:
    """The entries of one section of argparse's help ("options", "positional arguments"), those indented by
    ``indent`` spaces (4 for the commands, listed under COMMAND): first word of each entry (a command, or an
    option's longest spelling) -> its help text. The usage line and the examples of the epilog are other
    sections, so they cannot stand in for an entry's help."""
    lines = text.split(f"\n{section}:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    entries: dict[str, list[str]] = {}
    key = None
    for line in lines:
        depth = len(line) - len(line.lstrip())
        if depth == indent:  # an entry: its name, and its help on this line or the next ones
            names, _, rest = line.strip().partition("  ")
            key = max((n.split()[0] for n in names.split(", ")), key=len)  # "-o OUTPUT, --output OUTPUT" -> "--output"
            entries[key] = [rest.strip()]
        elif depth > indent and key is not None:  # the help of the last entry, continued
            entries[key].append(line.strip())
        else:
            key = None
    return {k: " ".join(w for w in v if w) for k, v in entries.items()}


def test_help_texts_explain_every_command():
    r = genlab("--help")
    assert r.returncode == 0
    commands = help_entries(r.stdout, "positional arguments", indent=4)
    assert {"train", "sample", "reconstruct", "eval", "compare", "datasets", "models", "demo"} <= set(commands)
    assert all(len(text.split()) >= 3 for text in commands.values()), commands  # each one explained
    assert "samples" in commands["sample"] and "list" in commands["models"]
    r = genlab("train", "--help")
    assert r.returncode == 0
    options = help_entries(r.stdout, "options")
    assert {"--data", "--epochs", "--resume", "--max-minutes", "--set", "--out", "--precision"} <= set(options)
    missing = [o for o, text in options.items() if not text]
    assert not missing, f"train options without a help text: {missing}"
    assert "fashion-mnist" in options["--data"] and "checkpoint" in options["--resume"]
    assert "minutes" in options["--max-minutes"] and "z_dim" in options["--set"]


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


# ----------------------------------------------------------------------------- bad input: one clear line

def run_main(capsys, *args):
    """``genlab ARGS`` in this process: (exit code, stdout, stderr)."""
    from genlab.cli import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clear_error(rc, err, command, expected):
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith(f"genlab {command}: error: "), err
    assert expected in lines[0], (expected, err)
    assert "Traceback" not in err


def test_bad_numeric_options_and_set_values_are_refused_before_any_work(capsys, vae_run, monkeypatch, one_thread):
    monkeypatch.setenv("GENLAB_MEMORY_LIMIT", "1G")
    cases = [
        (["train", "seed-vae", "--lr", "nan"], "--lr must be a finite number, got nan"),
        (["train", "seed-vae", "--lr", "inf"], "--lr must be a finite number, got inf"),
        (["train", "seed-vae", "--lr", "-0.1"], "--lr must be greater than 0, got -0.1"),
        (["train", "seed-vae", "--lr", "0"], "--lr must be greater than 0"),
        (["train", "seed-vae", "--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["train", "seed-vae", "--batch-size", "-5"], "--batch-size must be at least 1, got -5"),
        (["train", "seed-vae", "--max-steps", "0"], "--max-steps must be at least 1"),
        (["train", "seed-vae", "--max-minutes", "nan"], "--max-minutes must be a finite number"),
        (["train", "seed-vae", "--seed", "-1"], "--seed must be at least 0"),
        (["train", "seed-vae", "--seed", str(2 ** 64)], "at most 18446744073709551615"),
        (["train", "seed-vae", "--image-size", "0"], "--image-size must be at least 1"),
        (["train", "seed-vae", "--set", "hidden=512"], "--set hidden = 512 is not valid: expected a list of integers"),
        (["train", "seed-vae", "--set", "z_dim=abc"], "--set z_dim = 'abc' is not valid: expected an integer"),
        (["train", "seed-vae", "--set", "lr=NaN"], "--set lr = nan is not valid: expected a finite number"),
        (["train", "seed-vae", "--set", "seed=3"], "unknown setting(s) 'seed'"),
        (["train", "seed-gan", "--set", "hidden=[256]"], "--set hidden = [256] is not valid: expected an integer"),
        (["train", "seed-vae", "--set", "hidden=[1000000,1000000]", "--out", vae_run.parent / "big"],
         "would need about 29.1 TB of memory, more than the limit set by GENLAB_MEMORY_LIMIT=1G (1.0 GB)"),
        (["sample", vae_run, "-n", "0"], "-n must be at least 1, got 0"),
        (["sample", vae_run, "--truncation", "nan"], "--truncation must be a finite number"),
        (["sample", vae_run, "-n", "100000000"],
         "100,000,000 images of 1x8x8 (genlab sample) would need about 47.7 GB"),
        (["sample", vae_run, "--per-class", "1000000000"], "unconditional"),
        (["reconstruct", vae_run, "-n", "-3"], "-n must be at least 1"),
        (["interpolate", vae_run, "--steps", "1"], "--steps must be at least 2, got 1"),
        (["interpolate", vae_run, "--pairs", "0"], "--pairs must be at least 1"),
        (["interpolate", vae_run, "--steps", "1000000000"], "images of 1x8x8 (genlab interpolate)"),
        (["traverse", vae_run, "--range", "inf"], "--range must be a finite number"),
        (["traverse", vae_run, "--steps", "1"], "--steps must be at least 2"),
        (["eval", vae_run, "-n", "1"], "-n must be at least 2"),
        (["eval", vae_run, "--likelihood-k", "0"], "--likelihood-k must be at least 1"),
        (["compare", "--models", "seed-vae", "--samples", "1"], "--samples must be at least 2"),
        (["evaluator", "train", "--epochs", "0"], "--epochs must be at least 1"),
    ]
    for args, expected in cases:
        rc, out, err = run_main(capsys, *args)
        assert_clear_error(rc, err, args[0], expected)
    assert not (vae_run.parent / "big").exists()


def test_damaged_sample_files_for_eval_are_data_errors(capsys, tmp_path):
    x = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "samples.npy", x)
    np.savez_compressed(tmp_path / "good.npz", images=x)
    raw = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    for i in range(120, 600):  # inside the deflate stream of images.npy
        flipped[i] ^= 0x5A
    (tmp_path / "corrupt.npz").write_bytes(bytes(flipped))
    np.savez(tmp_path / "objects.npz", images=np.array([None, 1], dtype=object))
    cases = [("samples.npy", "samples.npy is a .npy file holding one array, not an .npz archive. Save samples"),
             ("cut.npz", "cut.npz is not a readable .npz file (File is not a zip file). Save samples"),
             ("corrupt.npz", "corrupt.npz (Error -3 while decompressing data"),
             ("objects.npz", "holds Python objects, which genlab never loads")]
    for name, expected in cases:
        rc, out, err = run_main(capsys, "eval", "--samples", tmp_path / name, "--data", "digits")
        assert_clear_error(rc, err, "eval", expected)
        assert str(tmp_path / name) in err


def test_damaged_config_json_is_one_line_naming_file_field_and_type(capsys, vae_run, tmp_path, monkeypatch):
    import json
    import shutil

    monkeypatch.setenv("GENLAB_MEMORY_LIMIT", "1G")
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    good = json.loads((run / "config.json").read_text())

    def edited(**sections):
        doc = json.loads(json.dumps(good))
        for section, values in sections.items():
            doc[section].update(values)
        return json.dumps(doc).encode()

    cases = [(b"\xff\xfe\x00{", "is not UTF-8"),
             (b"[1, 2, 3]", "not a JSON object"),
             (edited(model_config={"hidden": 512}),
              "model_config.hidden = 512 is not valid: expected a list of integers"),
             (edited(model_config={"lr": "fast"}), "model_config.lr = 'fast' is not valid: expected a number"),
             (edited(train={"batch_size": [128]}), "train.batch_size = [128] is not valid: expected an integer"),
             (edited(data={"image_shape": "1x8x8"}), "data.image_shape = '1x8x8' is not valid"),
             (edited(model_config={"hidden": [1_000_000, 1_000_000]}), "of memory, more than the limit set by GENLAB_MEMORY_LIMIT=1G (1.0 GB)")]
    for raw, expected in cases:
        (run / "config.json").write_bytes(raw)
        for command in (["sample", run, "-n", "4", "-o", tmp_path / "s.png"], ["train", "--resume", run]):
            rc, out, err = run_main(capsys, *command)
            assert_clear_error(rc, err, command[0], expected)
    assert not (tmp_path / "s.png").exists()


def test_file_system_errors_are_one_line_naming_the_file(capsys, vae_run, tmp_path, monkeypatch):
    import errno

    import genlab.fileio

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc, out, err = run_main(capsys, "sample", vae_run, "-n", "4", "-o", blocker / "grid.png")
    assert_clear_error(rc, err, "sample", f"{blocker}: a file is in the way where a folder is needed")

    def full_disk(fd):  # the disk fills while the grid is written: fsync reports it, as on NFS or ext4
        raise OSError(errno.ENOSPC, "No space left on device")

    out_file = tmp_path / "grid.png"
    monkeypatch.setattr(genlab.fileio.os, "fsync", full_disk)
    rc, out, err = run_main(capsys, "sample", vae_run, "-n", "4", "-o", out_file)
    monkeypatch.undo()
    assert_clear_error(rc, err, "sample", f"while writing {out_file}: the disk is full")
    assert list(tmp_path.iterdir()) == [blocker]  # neither the grid nor its temporary file was left


def test_a_write_cut_short_by_the_file_size_limit_is_one_line(vae_run, tmp_path):
    """A real mid-write failure in a child process: RLIMIT_FSIZE stops the .npz at 4 KB (EFBIG)."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out_file = tmp_path / "big.npz"
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, "-m", "genlab", "sample", str(vae_run), "-n", "2000", "-o", str(out_file)],
                       env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert_clear_error(r.returncode, r.stderr, "sample", "")
    assert str(out_file) in r.stderr and "ulimit -f" in r.stderr
    assert list(tmp_path.iterdir()) == []  # no torn .npz, no temporary file


def test_every_declared_command_has_a_handler_and_shares_the_data_options():
    """build_parser declares each command in its own function: none may be declared without a handler
    (or the reverse), and the commands that load a dataset take the same four options."""
    import argparse

    from genlab.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    for command in ("train", "eval", "evaluator", "compare"):
        options = {o for a in sub.choices[command]._actions for o in a.option_strings}
        assert {"--data", "--data-dir", "--image-size", "--channels"} <= options, command
    assert sub.choices["train"].get_default("data") == "digits"
    assert sub.choices["compare"].get_default("data") is None  # compare takes the reused runs' data
