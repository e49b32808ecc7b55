"""Renamed model settings (models.registry.RENAMED_SETTINGS): a run folder written under a setting's old
name (the MLP GAN's ``g_loss``, now ``loss`` as in every GAN) loads and resumes with the value it stored;
a config.json holding both names, and the old name given now, are refused naming the new one."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from conftest import load_behaviour_guard

import genlab
from genlab.cli import main
from genlab.errors import GenlabError, RunError
from genlab.models.losses import GAN_LOSSES
from genlab.models.registry import MODELS, RENAMED_SETTINGS

guard = load_behaviour_guard()


def _old_gan_run(tmp_path: Path, **model_config) -> Path:
    """A copy of the committed seed-gan run (stored with ``g_loss``), its model settings changed by
    ``model_config``; the committed fixture is never written."""
    run = tmp_path / "seed-gan"
    shutil.copytree(guard.OLD_RUNS / "seed-gan", run)
    config = json.loads((run / "config.json").read_text())
    config["model_config"].update(model_config)
    (run / "config.json").write_text(json.dumps(config, indent=2))
    return run


def test_every_renamed_setting_is_a_field_under_its_new_name_only():
    for model, renames in RENAMED_SETTINGS.items():
        fields = {f.name for f in dataclasses.fields(MODELS[model].config_cls)}
        for old, new in renames.items():
            assert new in fields and old not in fields, (model, old, new)


def test_the_committed_old_gan_run_stores_g_loss():
    """The fixture this file relies on was written before the rename."""
    stored = json.loads((guard.OLD_RUNS / "seed-gan" / "config.json").read_text())["model_config"]
    assert "g_loss" in stored and "loss" not in stored


def test_a_stored_g_loss_is_read_as_loss_and_the_resumed_run_stores_loss(tmp_path, one_thread):
    # a loss other than the default: the stored value is read, not the field's default
    run = _old_gan_run(tmp_path, g_loss="least-squares")
    model = genlab.load(run)
    assert model.config.loss == "least-squares"
    assert model.loss == GAN_LOSSES["least-squares"] != GAN_LOSSES["non-saturating"]

    result = genlab.resume(run, max_steps=guard.OLD_RUN_STEP + 2, progress=False)
    assert result.status == "max_steps" and result.state.step == guard.OLD_RUN_STEP + 2
    stored = json.loads((run / "config.json").read_text())["model_config"]
    assert stored["loss"] == "least-squares" and "g_loss" not in stored  # written back under the one name
    assert genlab.load(run).config.loss == "least-squares"


def test_a_stored_config_with_both_names_is_refused(tmp_path, capsys):
    run = _old_gan_run(tmp_path, loss="hinge")  # beside the stored g_loss = non-saturating
    with pytest.raises(RunError, match=r"holds both 'g_loss' and 'loss'.*keep only 'loss'") as e:
        genlab.load(run)
    assert str(run / "config.json") in str(e.value)
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png")]) == 2
    assert "holds both 'g_loss' and 'loss'" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()


def test_the_old_name_given_now_is_refused_naming_the_new(tmp_path, capsys):
    """Only stored runs are read under the old name: a setting given now has one name."""
    out = tmp_path / "g"
    assert main(["train", "seed-gan", "--set", "g_loss=hinge", "--max-steps", "1", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "g_loss: this setting is now called 'loss'; write loss=hinge instead." in err
    assert not out.exists()
    with pytest.raises(GenlabError, match="now called 'loss'"):
        genlab.train("seed-gan", out=tmp_path / "h", max_steps=1, progress=False, g_loss="hinge")
    assert not (tmp_path / "h").exists()
