"""Run folders written by an earlier genlab (tests/fixtures/behaviour/old-runs/: a small seed-vae and
seed-gan trained 18 steps on digits, stopped inside their second epoch; expected.json names the
commit that wrote them) still load, sample and evaluate to the numbers they gave then, and resume
from where they stopped. Regenerate only on the reference code: scripts/behaviour_guard.py
--write-old-runs."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_behaviour_guard

import genlab
from genlab.cli import main

guard = load_behaviour_guard()
EXPECTED = json.loads((guard.OLD_RUNS / "expected.json").read_text())
SAME_MACHINE = EXPECTED["machine"] == guard.machine()


def _copy(name: str, tmp_path: Path) -> Path:
    """A copy of the old run: the tests never write into the committed fixture."""
    run = tmp_path / name
    shutil.copytree(guard.OLD_RUNS / name, run)
    return run


def test_the_old_runs_are_the_committed_ones():
    assert set(EXPECTED["runs"]) == set(guard.OLD_RUN_ARGS) == {"seed-vae", "seed-gan"}
    for name in EXPECTED["runs"]:
        for f in guard.OLD_RUN_FILES:
            assert (guard.OLD_RUNS / name / f).is_file(), f"{name}/{f}"
        state = json.loads((guard.OLD_RUNS / name / "checkpoints" / "last.json").read_text())["state"]
        assert state["step"] == guard.OLD_RUN_STEP and state["batch_in_epoch"] == 6  # inside epoch 2


@pytest.mark.parametrize("name", ["seed-vae", "seed-gan"])
def test_old_run_loads_samples_and_evaluates_as_when_it_was_written(name, tmp_path, one_thread):
    ref = EXPECTED["runs"][name]
    out = guard.old_run_outputs(_copy(name, tmp_path))
    assert out["parameters"] == ref["parameters"]
    assert out["samples"]["shape"] == ref["samples"]["shape"] == [guard.OLD_RUN_SAMPLES, 1, 8, 8]
    change = guard.relative_change(ref["samples"], out["samples"])
    assert change <= guard.OLD_RUN_TOLERANCE, f"{name}: samples at seed 0 moved by {change:.2e} (relative)"
    assert set(out["evaluation"]) == set(ref["evaluation"])
    for key, value in ref["evaluation"].items():
        assert out["evaluation"][key] == pytest.approx(value, rel=guard.OLD_RUN_TOLERANCE), key
    if name == "seed-vae":
        assert -60 < out["evaluation"]["test_elbo"] < -30  # nats per 8x8 digit, as the run's log had it
    if SAME_MACHINE:  # the CPU and torch build that wrote them: the same bits
        assert out["samples_sha256"] == ref["samples_sha256"]
        assert out["evaluation"] == ref["evaluation"]


@pytest.mark.parametrize("name", ["seed-vae", "seed-gan"])
def test_old_run_resumes_from_its_stored_step(name, tmp_path, one_thread):
    run = _copy(name, tmp_path)
    before = {k: v.clone() for k, v in genlab.load(run).state_dict().items()}
    old_lines = (run / "metrics.jsonl").read_text().splitlines()

    assert main(["train", "--resume", str(run), "--max-steps", "24", "--no-progress"]) == 0

    state = json.loads((run / "checkpoints" / "last.json").read_text())["state"]
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (24, 2, 0)  # the end of epoch 2
    assert state["images_seen"] == 2 * 1437
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[:len(old_lines)] == old_lines  # the stored log kept as it was
    new = [json.loads(line) for line in lines[len(old_lines):]]
    assert new and all(r["step"] > guard.OLD_RUN_STEP for r in new)
    ends = [r for r in new if r.get("event") == "epoch_end"]
    assert [(r["step"], r["epoch"]) for r in ends] == [(24, 2)]
    if name == "seed-vae":
        assert -60 < ends[0]["test_elbo"] < -30
    assert (run / "samples" / "epoch-0002.png").is_file()
    after = genlab.load(run).state_dict()
    assert after.keys() == before.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # six more steps trained
