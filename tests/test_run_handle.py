"""The run handle (``training.run.Run``: one owner of a run folder's layout) and the CLI's options that
come from the library's own tables (``--g-loss`` for every GAN, ``--precision``, ``--lr-schedule``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genlab
from genlab.cli import build_parser, main
from genlab.models.losses import GAN_LOSSES
from genlab.training.context import AUTO, PRECISIONS
from genlab.training.run import RUN_KIND, Run
from genlab.training.trainer import LR_SCHEDULES

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runhandle") / "vae"
    genlab.train("seed-vae", "digits", out=out, epochs=1, progress=False, device="cpu")
    return out


def test_the_run_handle_names_every_file_of_the_folder_the_trainer_wrote(short_run):
    run = Run(short_run)
    assert run.config_path == short_run / "config.json" and run.config_path.is_file()
    assert run.checkpoint_path == short_run / "checkpoints" / "last.safetensors" and run.has_checkpoint()
    assert RUN_KIND.marker == "config.json" and short_run / RUN_KIND.safe_result == run.checkpoint_path
    assert run.metrics_path == short_run / "metrics.jsonl"
    assert run.epoch_grids() == [run.epoch_grid(1)] and run.epoch_grid(1).is_file()
    assert run.eval_path == short_run / "eval.json"
    assert run.likelihood_path == short_run / "eval.likelihood.safetensors"
    assert run.name == "seed-vae" and run.config["model"] == "mlp-vae"
    state = run.checkpoint_state()
    assert state["epoch"] == 1 and state["step"] > 1 and run.train_config().epochs == 1
    assert run.metrics()[-1]["step"] == state["step"]  # the log read back ends where the checkpoint is


def test_the_run_handle_loads_what_genlab_load_loads(short_run):
    run = Run(short_run)
    model = run.load_model()
    user = genlab.load(short_run)
    assert not model.training and not hasattr(model, "run_config")  # genlab's own code needs no attributes
    assert user.run_dir == short_run and user.run_config == run.config  # kept for users
    for (name, a), (_, b) in zip(model.state_dict().items(), user.state_dict().items()):
        assert torch.equal(a, b), name
    assert tuple(run.dataset(progress=False).image_shape) == tuple(run.config["data"]["image_shape"])


def test_a_run_without_a_checkpoint_has_no_state(tmp_path, short_run):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_bytes((short_run / "config.json").read_bytes())
    run = Run(tmp_path / "r")
    assert not run.has_checkpoint() and run.checkpoint_state() is None and run.metrics() == []


def test_eval_does_not_import_the_top_level_api():
    code = "import sys, genlab.eval, genlab.eval.report; print('genlab.api' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def _choices(command: str, option: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if option in a.option_strings).choices)


def test_option_choices_are_the_library_tables():
    assert _choices("train", "--g-loss") == tuple(GAN_LOSSES)
    assert _choices("train", "--precision") == (AUTO, *PRECISIONS)
    assert _choices("train", "--lr-schedule") == tuple(LR_SCHEDULES)


@pytest.mark.parametrize("preset, loss", [("seed-gan", "minimax"), ("dcgan", "hinge")])
def test_g_loss_sets_the_loss_of_every_gan(tmp_path, capsys, preset, loss):
    """Every GAN's config calls its loss pair ``loss``: --g-loss sets it on the MLP GAN and the conv GAN
    alike, and the trained model computes that loss (not its preset's default)."""
    out = tmp_path / preset
    assert main(["train", preset, "--g-loss", loss, "--max-steps", "1", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    assert json.loads((out / "config.json").read_text())["model_config"]["loss"] == loss
    assert genlab.load(out).loss == GAN_LOSSES[loss] != GAN_LOSSES["non-saturating"]


def test_g_loss_on_a_model_without_an_adversarial_loss_is_one_clear_error(tmp_path, capsys):
    assert main(["train", "seed-vae", "--g-loss", "hinge", "--out", str(tmp_path / "v"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "seed-vae (mlp-vae) has no adversarial loss" in err and not (tmp_path / "v").exists()
