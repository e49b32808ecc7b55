"""Run folders and comparison folders are never lost: --overwrite deletes only genlab's own folders
(and only after the new run is safe), one writer at a time holds a folder's lock, new folders are
taken with an exclusive mkdir, and a run killed before its first checkpoint can be resumed.

Real tiny trainings on the bundled digits; a second process where concurrency needs one."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import genlab
from genlab.cli import main
from genlab.compare import run_compare
from genlab.compare import driver
from genlab.errors import GenlabError
from genlab.training import checkpoint as ckpt
from genlab.training.lock import LOCK_NAME, FolderLock, aside_of
from genlab.training.run import next_free_dir

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
TINY = ["--max-steps", "2", "--no-progress"]

# a writer that holds a folder's lock until its stdin closes (imports no torch: starts in a blink)
HOLDER = """
import sys
from genlab.training.lock import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""

# `genlab train ...` killed (SIGKILL) after it wrote config.json, before its first checkpoint
KILLED_BEFORE_FIRST_CHECKPOINT = """
import os, signal, sys
from genlab.training.trainer import Trainer
Trainer.fit = lambda self: os.kill(os.getpid(), signal.SIGKILL)
from genlab.cli import main
main(sys.argv[1:])
"""


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders): to assert a folder is untouched."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def seed_of(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["train"]["seed"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = ckpt.read_checkpoint(run / "checkpoints" / "last.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("model/")}


def genlab_cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def made_run(tmp_path_factory, one_thread):
    """A finished tiny run (seed 1); tests work on copies of it."""
    run = tmp_path_factory.mktemp("made") / "run"
    genlab.train("seed-vae", "digits", out=run, seed=1, max_steps=2, progress=False)
    return run


@pytest.fixture
def run(made_run, tmp_path):
    copy = tmp_path / "runs" / "R"
    shutil.copytree(made_run, copy)
    return copy


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the lock of a folder: ``holder(folder) -> Popen``."""
    procs = []

    def start(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=ENV, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- --overwrite


@pytest.mark.parametrize("content", [
    None,  # a project folder with no config.json at all
    b'{"format": "some-other-tool-1", "train": {}}',
    b"not json",
    b'["genlab-run-1"]',
    b'{"format": "genlab-compare-settings-1", "data": {}, "models": []}',
    b'{"format": "genlab-run-1"}',  # a forged one: genlab writes the model, its config, training and data
])
def test_overwrite_refuses_a_folder_that_is_not_a_genlab_run(tmp_path, capsys, content, one_thread):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('my work')\n")
    (project / "notes.txt").write_text("months of notes\n")
    if content is not None:
        (project / "config.json").write_bytes(content)
    before = tree(project)
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", project, "--overwrite", *TINY)
    assert rc == 2
    assert err.startswith("genlab train: error: refusing to --overwrite") and str(project) in err
    assert "not a genlab run folder" in err and "Traceback" not in err and err.count("\n") == 1
    assert tree(project) == before  # not even a lock file was written into it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # nothing moved aside


def test_the_demo_replaces_only_its_own_runs(tmp_path, capsys, one_thread):
    from genlab.demo import run_demo

    mine = tmp_path / "seed-vae"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a run")
    with pytest.raises(GenlabError, match="refusing to --overwrite .*seed-vae: it is not a genlab run folder"):
        run_demo(tmp_path, progress=False)
    assert (mine / "notes.txt").read_text() == "not a run" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_overwrite_refuses_the_working_directory_and_its_ancestors(run, capsys, monkeypatch, one_thread):
    before = tree(run)
    monkeypatch.chdir(run)
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", ".", "--overwrite", *TINY)
    assert rc == 2 and "refusing to --overwrite ." in err and "the working directory" in err
    monkeypatch.chdir(run / "checkpoints")
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", "..", "--overwrite", *TINY)
    assert rc == 2 and "holds the working directory" in err
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", run.parent.parent, "--overwrite", *TINY)
    assert rc == 2 and "holds the working directory" in err
    link = run.parent / "link"
    link.symlink_to(run, target_is_directory=True)
    monkeypatch.chdir(run.parent)
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", "link", "--overwrite", *TINY)
    assert rc == 2 and "symbolic link" in err
    assert tree(run) == before and seed_of(run) == 1


def test_overwrite_refuses_home_and_root(made_run, tmp_path, capsys, monkeypatch, one_thread):
    home = tmp_path / "home"
    shutil.copytree(made_run, home)  # even a home folder that is a run folder
    (home / "thesis.tex").write_text("\\section{}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    before = tree(home)
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", home, "--overwrite", *TINY)
    assert rc == 2 and "it is the home folder" in err
    assert tree(home) == before
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", "/", "--overwrite", *TINY)
    assert rc == 2 and "refusing to --overwrite /: it is the root of the file system" in err


def test_overwrite_replaces_a_real_run_and_the_old_one_is_gone(run, capsys, one_thread):
    old_weights = weights(run)
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", run, "--overwrite", "--seed", "2", "--max-steps", "3",
                         "--no-progress")
    assert rc == 0, err
    assert f"moved the old run folder to {aside_of(run)}" in err and f"deleted {aside_of(run)}" in err
    assert seed_of(run) == 2
    assert any(not torch.equal(old_weights[k], v) for k, v in weights(run).items())
    assert sorted(p.name for p in run.parent.iterdir()) == ["R"]  # the old run deleted, nothing left beside it
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3]  # the new run's lines only (the old one stopped at step 2)


def test_a_run_killed_before_its_first_checkpoint_resumes_from_scratch_and_the_replaced_run_waits(
        run, tmp_path, capsys, one_thread):
    # the reference: a run that was never interrupted
    fresh = genlab.train("seed-vae", "digits", out=tmp_path / "fresh", seed=3, max_steps=5, progress=False)
    old = tree(run)
    # `--overwrite` of a real run, killed after it wrote its config.json, before its first checkpoint
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_FIRST_CHECKPOINT, "train", "seed-vae", "--out",
                             str(run), "--overwrite", "--seed", "3", "--max-steps", "5", "--no-progress"],
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    aside = aside_of(run)
    assert {k: v for k, v in tree(aside).items() if k != LOCK_NAME} == {k: v for k, v in old.items() if k != LOCK_NAME}
    assert seed_of(run) == 3 and not (run / "checkpoints").exists()
    # the two messages no longer point at each other: a new --out says --resume, and --resume works
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", run, *TINY)
    assert rc == 2 and "--resume" in err
    rc, err = genlab_cli(capsys, "train", "--resume", run, "--max-steps", "5", "--no-progress")
    assert rc == 0, err
    assert "has no checkpoint yet" in err and "from the start" in err
    assert f"{aside} holds the run folder that an earlier --overwrite replaced; it is kept until" in err
    assert f"deleted {aside}" in err and not aside.exists()
    # from scratch means exactly what a fresh start with the same settings gives
    assert weights(run).keys() == weights(fresh.run_dir).keys()
    assert all(torch.equal(v, weights(fresh.run_dir)[k]) for k, v in weights(run).items())


def test_a_second_overwrite_of_a_never_saved_run_keeps_the_run_aside(run, one_thread):
    from genlab.api import _claim_run_dir

    old = tree(run)
    claim = _claim_run_dir(run, "x", "runs", overwrite=True)  # a replacement that died before config.json
    claim.release()
    shutil.copy(aside_of(run) / "config.json", run / "config.json")  # ... or after it, never saving
    half_deleted = run.parent / f".R.discarded-{dead_pid()}"  # a deletion of such a run, killed midway
    (half_deleted / "samples").mkdir(parents=True)
    claim = _claim_run_dir(run, "x", "runs", overwrite=True)
    try:
        assert not half_deleted.exists()
        assert not any(p.name != LOCK_NAME for p in run.iterdir())  # the never-saved one is what went
        kept = {k: v for k, v in tree(aside_of(run)).items() if k != LOCK_NAME}
        assert kept == {k: v for k, v in old.items() if k != LOCK_NAME}
        assert claim.aside == aside_of(run)
    finally:
        claim.release()


# ----------------------------------------------------------------------------- one writer at a time


def test_a_second_writer_is_refused_while_a_real_training_runs(run, capsys, one_thread):
    live = run.parent / "live"
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "train", "seed-vae", "--epochs", "5000", "--seed", "7",
                             "--out", str(live), "--no-progress"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        lock_file, ckpt_file = live / LOCK_NAME, live / "checkpoints" / "last.safetensors"
        while time.time() < deadline and not (ckpt_file.exists() and str(proc.pid) in
                                              (lock_file.read_text() if lock_file.exists() else "")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        config = (live / "config.json").read_bytes()
        for args in (["seed-vae", "--out", live, "--overwrite", "--seed", "8", *TINY],
                     ["--resume", live, "--max-steps", "1", "--no-progress"]):
            rc, err = genlab_cli(capsys, "train", *args)
            assert rc == 2 and err.count("\n") == 1, err
            assert f"the run folder {live} is in use: pid {proc.pid} on host" in err and "genlab train" in err
        assert genlab.load(live).sample(2).shape == (2, 1, 8, 8)  # readers are not blocked
        assert (live / "config.json").read_bytes() == config and not aside_of(live).exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seed_of(live) == 7
    assert ckpt.read_checkpoint(live / "checkpoints" / "last.safetensors")[1]["state"]["step"] > 0
    steps = [json.loads(x)["step"] for x in (live / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # one writer's lines, in order
    assert (live / LOCK_NAME).read_text() == ""  # released on exit


def test_a_locked_run_refuses_resume_then_a_killed_holder_is_taken_over(run, capsys, holder, one_thread):
    proc = holder(run)
    before = tree(run)
    rc, err = genlab_cli(capsys, "train", "--resume", run, "--max-steps", "3", "--no-progress")
    assert rc == 2 and f"the run folder {run} is in use: pid {proc.pid}" in err
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", run, *TINY)  # without --overwrite: named too
    assert rc == 2 and f"pid {proc.pid}" in err
    assert tree(run) == before
    proc.kill()  # kill -9: the kernel drops the lock, the holder's record stays behind
    proc.wait()
    rc, err = genlab_cli(capsys, "train", "--resume", run, "--max-steps", "3", "--no-progress")
    assert rc == 0, err
    assert f"{run}: taking over the lock left by pid {proc.pid}" in err and "no longer running" in err
    assert ckpt.read_checkpoint(run / "checkpoints" / "last.safetensors")[1]["state"]["step"] == 3


def test_a_stale_record_without_a_kernel_lock_is_taken_over(run, capsys, one_thread):
    pid = dead_pid()
    (run / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "since": "then",
                                             "command": "genlab train"}))
    rc, err = genlab_cli(capsys, "train", "--resume", run, "--max-steps", "3", "--no-progress")
    assert rc == 0 and f"taking over the lock left by pid {pid}" in err


def test_the_lock_says_who_holds_it_and_is_released(tmp_path):
    lock = FolderLock(tmp_path).acquire()
    record = json.loads((tmp_path / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"] and record["since"] and record["command"]
    with pytest.raises(GenlabError, match=f"{tmp_path} is in use: pid {os.getpid()}"):
        FolderLock(tmp_path).acquire()  # a second open file: refused even in the same process
    lock.release()
    with FolderLock(tmp_path):
        pass
    assert (tmp_path / LOCK_NAME).read_text() == ""


def test_new_run_folders_are_taken_with_an_exclusive_mkdir(tmp_path):
    base = tmp_path / "runs" / "seed-vae-digits"
    got = [next_free_dir(base) for _ in range(3)]  # no folder handed out twice, even before anything is in it
    assert [p.name for p in got] == ["seed-vae-digits", "seed-vae-digits-2", "seed-vae-digits-3"]
    assert all(p.is_dir() for p in got)


# ----------------------------------------------------------------------------- leftovers


def test_orphaned_temporary_files_are_removed_and_live_ones_kept(run, capsys, one_thread):
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead = dead_pid()
        orphans = [run / "checkpoints" / f".last.safetensors.tmp-{dead}", run / f".metrics.jsonl.tmp-{dead}"]
        kept = [run / f".eval.json.tmp-{live.pid}", run / "notes.tmp-1"]  # a live writer's; not a temp name
        for p in orphans + kept:
            p.write_bytes(b"half a file")
        rc, err = genlab_cli(capsys, "train", "--resume", run, "--max-steps", "3", "--no-progress")
        assert rc == 0, err
        assert "removed 2 unfinished temporary file(s)" in err
        assert not any(p.exists() for p in orphans) and all(p.read_bytes() == b"half a file" for p in kept)
    finally:
        live.kill()
        live.wait()


def test_a_start_killed_before_config_json_can_be_started_again(tmp_path, capsys, one_thread):
    run = tmp_path / "R"
    run.mkdir()
    (run / f".config.json.tmp-{dead_pid()}").write_text('{"format": "genlab-ru')  # torn by the kill
    rc, err = genlab_cli(capsys, "train", "--resume", run, "--no-progress")
    assert rc == 2 and "holds no run yet" in err and f"--out {run}" in err
    rc, err = genlab_cli(capsys, "train", "seed-vae", "--out", run, *TINY)
    assert rc == 0, err
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "checkpoints", "config.json", "metrics.jsonl"]


# ----------------------------------------------------------------------------- comparisons

FAKE_SETTINGS = {"format": driver.SETTINGS_FORMAT, "data": {"spec": "digits"}, "models": ["seed-vae"], "budget": "1ep",
                 "seed": 0}


@pytest.mark.parametrize("name", ["../x", "..", ".", "", "/tmp/elsewhere", "a/b", "a\\b", ".c.replaced"])
def test_compare_names_outside_out_root_are_refused(tmp_path, name, one_thread):
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "compare.json").write_text(json.dumps(FAKE_SETTINGS))
    (outside / "results.json").write_text("{}")
    before = tree(tmp_path)
    with pytest.raises(GenlabError, match="--name .* is not a plain folder name"):
        run_compare(["seed-vae"], "digits", "1ep", name=name, out_root=tmp_path / "root", overwrite=True,
                    progress=False, log=lambda m: None)
    assert tree(tmp_path) == before  # not even --out-root was created


def test_compare_overwrite_moves_the_old_comparison_aside_until_its_results_exist(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "root" / "cmp"
    (folder / "runs" / "seed-vae").mkdir(parents=True)
    old_settings = {**FAKE_SETTINGS, "budget": "1ep"}
    (folder / "compare.json").write_text(json.dumps(old_settings))
    (folder / "results.json").write_text("{}")
    new_settings = {**FAKE_SETTINGS, "budget": "2ep"}
    with pytest.raises(GenlabError, match="other budget"):
        driver._prepare_folder(folder, new_settings, overwrite=False)
    claim = driver._prepare_folder(folder, new_settings, overwrite=True)
    try:
        aside = aside_of(folder)
        assert json.loads((aside / "compare.json").read_text()) == old_settings and (aside / "runs").is_dir()
        assert json.loads((folder / "compare.json").read_text()) == new_settings
        with pytest.raises(GenlabError, match="comparison folder .* is in use"):
            driver._prepare_folder(folder, new_settings, overwrite=False)  # locked meanwhile
        claim.saved()  # run_compare calls it once results.json is written
        assert not aside.exists()
    finally:
        claim.release()
    monkeypatch.chdir(folder)
    with pytest.raises(GenlabError, match="working directory"):
        driver._prepare_folder(folder, old_settings, overwrite=True)
    assert json.loads((folder / "compare.json").read_text()) == new_settings


def test_compare_refuses_a_locked_or_foreign_folder(tmp_path, holder, one_thread):
    folder = tmp_path / "root" / "cmp"
    folder.mkdir(parents=True)
    (folder / "compare.json").write_text("{not json")
    with pytest.raises(GenlabError, match="not a genlab comparison"):
        run_compare(["seed-vae"], "digits", "1ep", name="cmp", out_root=tmp_path / "root", overwrite=True,
                    progress=False, log=lambda m: None)
    assert (folder / "compare.json").read_text() == "{not json" and not (folder / LOCK_NAME).exists()
    (folder / "compare.json").write_text(json.dumps(FAKE_SETTINGS))
    proc = holder(folder)
    with pytest.raises(GenlabError, match=f"comparison folder {folder} is in use: pid {proc.pid}"):
        run_compare(["seed-vae"], "digits", "1ep", name="cmp", out_root=tmp_path / "root", overwrite=True,
                    progress=False, log=lambda m: None)
    assert json.loads((folder / "compare.json").read_text()) == FAKE_SETTINGS
