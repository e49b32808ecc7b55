"""genlab compare: budgets, the Trainer's time limit, the summary in words, and the driver end to end."""
import copy
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import genlab
from genlab.compare import format_results, parse_budget, run_compare, summarize
from genlab.compare.driver import default_name, parse_models
from genlab.data import load_dataset
from genlab.errors import GenlabError
from genlab.eval import fingerprint
from genlab.training import checkpoint as ckpt


@pytest.fixture(scope="module", autouse=True)
def evaluator_cache(tmp_path_factory):
    """One evaluator cache for the test session (the digits evaluator is trained once, in seconds)."""
    cache = tmp_path_factory.getbasetemp() / "genlab-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENLAB_CACHE", str(cache))
        yield cache


def quiet(_msg: str) -> None:
    pass


def state_of(run_dir: Path) -> dict:
    return ckpt.read_checkpoint(Path(run_dir) / "checkpoints" / "last.safetensors")[1]["state"]


# ----------------------------------------------------------------------------- budgets

@pytest.mark.parametrize("text, kind, value", [
    ("10m", "seconds", 600), ("90s", "seconds", 90), ("1h", "seconds", 3600), ("1.5h", "seconds", 5400),
    ("2min", "seconds", 120), ("5ep", "epochs", 5), ("300kimg", "images", 300_000),
    ("300000img", "images", 300_000), ("1Mimg", "images", 1_000_000)])
def test_budget_forms(text, kind, value):
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, value)


@pytest.mark.parametrize("text", ["10", "ten minutes", "0m", "5 epochs please", "1.5ep", "-3s", "0.5img", ""])
def test_a_bad_budget_names_the_accepted_forms(text):
    with pytest.raises(GenlabError, match=r"90s, 10m, 1h\), epochs \(5ep\) or images seen \(300kimg"):
        parse_budget(text)


def test_budget_train_overrides():
    assert parse_budget("300kimg").train_overrides(128)["max_steps"] == math.ceil(300_000 / 128)
    assert parse_budget("1000img").train_overrides(64)["max_steps"] == 16
    t = parse_budget("10m").train_overrides(128)
    assert t["max_seconds"] == 600 and t["epochs"] >= 1000
    assert parse_budget("5ep").train_overrides(128) == {"epochs": 5}


# ----------------------------------------------------------------------------- the Trainer's time limit

@pytest.mark.parametrize("limit, steps", [(1.0, 8), (1.5, 12)])  # inside the first epoch; at its end
def test_max_seconds_stops_with_checkpoint_and_grid_and_can_be_resumed(tmp_path, step_clock, limit, steps):
    step_clock("mlp-vae", 0.125)  # each step takes 1/8 s of training time (tests/conftest.py)
    run = tmp_path / "timed"
    res = genlab.train("seed-vae", "digits", out=run, epochs=100_000, max_seconds=limit, progress=False, device="cpu")
    assert res.status == "max_seconds"
    st = state_of(run)
    # the first step at which the time used reaches the limit ends the run (digits: 12 steps an epoch)
    assert st["train_seconds"] == limit and st["step"] == res.state.step == steps
    assert (st["epoch"], st["batch_in_epoch"]) == ((0, steps) if steps < 12 else (1, 0))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    stop = [x for x in lines if x.get("event") == "max_seconds"]
    if st["batch_in_epoch"]:  # stopped inside an epoch: a grid of the epoch in progress and a log line
        assert len(stop) == 1 and stop[0]["step"] == st["step"]
        assert (run / stop[0]["samples"]).is_file()
        assert stop[0]["samples"] == f"samples/epoch-{st['epoch'] + 1:04d}.png"
    else:  # at an epoch's end: that epoch's own grid
        assert stop == [] and (run / "samples" / f"epoch-{st['epoch']:04d}.png").is_file()
    assert json.loads((run / "config.json").read_text())["train"]["max_seconds"] == limit
    # a time-limited run that reached its limit does not train on when run again with the same limit
    again = genlab.resume(run, max_seconds=limit, progress=False)
    assert again.status == "max_seconds" and state_of(run)["step"] == st["step"]
    # ... and --resume continues it (here: to the end of the next epoch)
    done = genlab.resume(run, epochs=st["epoch"] + 1, progress=False)
    assert done.status == "completed"
    after = state_of(run)
    assert after["step"] == 12 * (st["epoch"] + 1) and after["batch_in_epoch"] == 0 and after["epoch"] == st["epoch"] + 1


def test_cli_train_max_minutes(tmp_path, capsys, step_clock):
    from genlab.cli import main

    step_clock("mlp-gan", 0.125)  # --max-minutes 0.01 is 0.6 s: reached in the 5th step of 1/8 s
    run = tmp_path / "g"
    assert main(["train", "seed-gan", "--epochs", "100000", "--max-minutes", "0.01", "--out", str(run),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "stopped at the time limit" in out and f"genlab train --resume {run}" in out
    st = state_of(run)
    assert st["step"] == 5 and st["train_seconds"] == 0.625


# ----------------------------------------------------------------------------- summary in words

def entry(name, family, fid, kid, precision, recall, coverage, classes=10, memo=0.01, likelihood=None,
          seconds=100.0, images=100_000):
    hist = [100] * classes + [0] * (10 - classes)
    return {"name": name, "family": family, "train_seconds": seconds, "images_seen": images,
            "likelihood": likelihood,
            "metrics": {"fid": fid, "kid": kid, "precision": precision, "recall": recall, "coverage": coverage,
                        "classes_covered": classes, "num_classes": 10, "class_histogram": hist,
                        "memorization": {"fraction_closer_than_test_p1": memo}}}


VAE_LK = {"units": "nats/image", "elbo": -240.3, "neg_elbo": 240.3, "k": 1, "nll_iwae": None}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def pair():
    return [entry("conv-vae", "vae", 17.1, 0.23, 0.64, 0.50, 0.26, likelihood=VAE_LK),
            entry("dcgan", "gan", 11.14, 0.15, 0.74, 0.44, 0.21)]


def test_summary_reports_the_best_fid_and_the_fidelity_diversity_trade_off():
    text = summarize(pair())
    assert text[0] == "dcgan has the lowest FID (11.14); conv-vae's is 54% higher (17.10)."
    trade = [s for s in text if "closer to real images" in s]
    assert trade == [("Samples of the GAN dcgan are closer to real images (precision 0.74 vs 0.64), but the VAE "
                      "conv-vae covers more of the data (coverage 0.26 vs 0.21, recall 0.50 vs 0.44).")]
    assert any("conv-vae 240.3 (-ELBO" in s and "dcgan is a GAN and defines no density" in s for s in text)
    assert "Every model draws all 10 classes (by the evaluator's predicted labels)." in text
    assert any(s.startswith("No model shows signs of copying") for s in text)
    assert not any("KID ranks" in s for s in text)


def test_summary_changes_when_the_numbers_change():
    models = pair()
    models[1]["metrics"].update(coverage=0.40, recall=0.60)  # the GAN now also covers more
    text = summarize(models)
    assert any(s.startswith("The GAN dcgan beats the VAE conv-vae on both fidelity (precision 0.74 vs 0.64) and "
                            "diversity (coverage 0.40 vs 0.26") for s in text)
    models[0]["metrics"].update(precision=0.89, coverage=0.49, recall=0.37)  # the VAE ahead on both:
    assert any(s.startswith("The VAE conv-vae beats the GAN dcgan on both fidelity (precision 0.89 vs 0.74) and "
                            "diversity (coverage 0.49 vs 0.40; recall points the other way: 0.37 vs 0.60)")
               for s in summarize(models))  # its figures first, although the GAN is the sentence's first model
    models[0]["metrics"].update(precision=0.64, coverage=0.26, recall=0.50)
    models[1]["metrics"].update(coverage=0.21, recall=0.60)  # recall disagrees with coverage: said so
    assert any(s.endswith("covers more of the data (coverage 0.26 vs 0.21; recall points the other way: 0.50 vs "
                          "0.60).") for s in summarize(models))
    models[1]["metrics"].update(precision=0.66, coverage=0.27)  # within the thresholds: alike
    assert any("are alike in fidelity" in s for s in summarize(models))
    models[1]["metrics"]["fid"] = 17.5  # within 5 % of 17.1: no winner on FID
    text = summarize(models)
    assert text[0].startswith("conv-vae, dcgan are within 5% of each other on FID (17.10 vs 17.50)")
    three = [*models, entry("seed-gan", "gan", 30.0, 0.5, 0.5, 0.3, 0.2)]
    assert summarize(three)[1] == "The lowest FID is 17.10; seed-gan's is 75% higher (30.00)."
    models[1]["metrics"]["fid"] = 40.0
    assert summarize(models)[0] == "conv-vae has the lowest FID (17.10); dcgan's is 2.3x as high (40.00)."


def test_summary_flags_class_gaps_memorisation_kid_disagreement_and_speed():
    models = pair()
    models[1]["metrics"].update(classes_covered=7, class_histogram=[300, 2, 300, 300, 1, 300, 300, 0, 300, 300])
    models[0]["metrics"]["memorization"]["fraction_closer_than_test_p1"] = 0.12
    models[0]["metrics"]["kid"] = 0.10  # KID prefers the VAE while FID prefers the GAN
    models[1].update(images_seen=900_000)
    text = summarize(models, budget={"kind": "seconds", "text": "10m", "description": "10m of training time"},
                     class_names=CLASSES)
    assert "dcgan draws only 7 of 10 classes (by the evaluator's predicted labels); rare or missing: Trouser, " \
           "Coat, Sneaker." in text
    assert any(s.startswith("conv-vae: 12.0% of samples are nearer to a training image") for s in text)
    assert any(s.startswith("KID ranks conv-vae first (0.1000 vs dcgan's 0.1500)") for s in text)
    assert "In the same 10m of training, dcgan saw 9.0x as many images as conv-vae (900,000 vs 100,000)." in text
    epochs = summarize(pair(), budget={"kind": "epochs", "text": "5ep", "description": "5 epochs per model"})
    assert not any("training time of" in s for s in epochs)
    slow = pair()
    slow[1]["train_seconds"] = 450.0
    assert ("For the same 5 epochs per model, dcgan needed 4.5x the training time of conv-vae (450 s vs 100 s)."
            in summarize(slow, budget={"kind": "epochs", "text": "5ep", "description": "5 epochs per model"}))
    slow[0]["train_seconds"], slow[1]["train_seconds"] = 0.46, 2.6  # short runs keep their digits
    assert any(s.endswith("(2.6 s vs 0.46 s).") for s in summarize(slow, budget={"kind": "epochs", "text": "5ep",
                                                                                 "description": "5 epochs"}))


def test_summary_with_gans_only_and_with_one_model():
    gans = [entry("seed-gan", "gan", 30.0, 0.5, 0.5, 0.3, 0.2), entry("dcgan", "gan", 11.0, 0.1, 0.7, 0.4, 0.3)]
    text = summarize(gans)
    assert text[0].startswith("dcgan has the lowest FID (11.00)")
    assert any(s.startswith("dcgan beats seed-gan on both fidelity") for s in text)
    assert any(s.startswith("No likelihoods to compare: seed-gan, dcgan are GANs and define no density") for s in text)
    one = summarize([gans[0]])
    assert one[0].startswith("Only one model, seed-gan: FID 30.00") and len(one) == 3
    iwae = copy.deepcopy(pair())
    iwae[0]["likelihood"] = {**VAE_LK, "k": 5000, "nll_iwae": 231.25}
    assert any("conv-vae 231.2 (IWAE NLL, k=5000)" in s for s in summarize(iwae))


# ----------------------------------------------------------------------------- the driver

def test_models_and_names_are_checked(tmp_path):
    with pytest.raises(GenlabError, match="'nonesuch' is neither a preset nor a run folder"):
        parse_models(["seed-vae", "nonesuch"])
    with pytest.raises(GenlabError, match="names seed-vae twice"):
        parse_models(["seed-vae", "seed-vae"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenlabError, match="not a genlab run"):
        parse_models([str(tmp_path / "empty")])
    specs = parse_models(["seed-vae", "seed-gan"])
    assert default_name("fashion-mnist", specs, parse_budget("10m"), 0) == "fashion-mnist-seed-vae-seed-gan-10m"
    assert default_name("digits", specs, parse_budget("5ep"), 3) == "digits-seed-vae-seed-gan-5ep-seed3"
    with pytest.raises(GenlabError, match="cannot read the budget"):
        run_compare(["seed-vae"], "digits", "soon", out_root=tmp_path, log=quiet)


def test_presets_without_a_budget_get_the_default_budget(tmp_path, monkeypatch):
    from genlab.compare import driver

    assert parse_budget(driver.DEFAULT_BUDGET).as_dict()["kind"] == "seconds"
    monkeypatch.setattr(driver, "DEFAULT_BUDGET", "1ep")  # the real default is minutes of training
    res = run_compare(["seed-vae"], "digits", None, samples=100, out_root=tmp_path, progress=False, log=quiet)
    assert res.results["settings"]["budget"]["value"] == 1 and res.results["models"][0]["epochs_completed"] == 1


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    res = run_compare(["seed-vae", "seed-gan"], "digits", "3ep", samples=300, out_root=root, progress=False, log=quiet)
    return root, res


def test_compare_writes_results_and_a_self_contained_report(compared):
    root, res = compared
    assert res.folder == root / "digits-seed-vae-seed-gan-3ep"
    results = json.loads(res.results_path.read_text())
    assert results["format"] == "genlab-compare-1"
    s = results["settings"]
    assert (s["data"], s["seed"], s["samples"], s["budget"]["kind"], s["budget"]["value"]) == ("digits", 0, 300,
                                                                                              "epochs", 3)
    assert s["evaluator_fingerprint"] == fingerprint(load_dataset("digits"))  # recomputed from the data
    names = [m["name"] for m in results["models"]]
    assert names == ["seed-vae", "seed-gan"]
    vae, gan = results["models"]
    for m in (vae, gan):
        assert set(m["metrics"]) >= {"fid", "kid", "precision", "recall", "coverage", "classes_covered"}
        assert m["epochs_completed"] == 3 and m["steps"] == 36 and m["seed"] == 0
        assert m["train_seconds"] > 0 and m["img_per_s"] > 0 and m["parameters"] > 0
        assert Path(m["run_dir"]) == res.folder / "runs" / m["name"]
        ev = json.loads((Path(m["run_dir"]) / "eval.json").read_text())
        assert ev["protocol"]["n_samples"] == 300 and ev["protocol"]["evaluator_fingerprint"] == s["evaluator_fingerprint"]
    assert vae["likelihood"]["neg_elbo"] > 0 and gan["likelihood"] is None
    assert results["summary"] and results["summary"] == summarize(results["models"], s["budget"], s["class_names"])
    page = res.report_path.read_text()
    assert page.count('<tr data-model="') == 2 and "n/a" in page
    assert "src=\"http" not in page and "<script" not in page and "<link" not in page
    srcs = [x for x in page.split('src="')[1:]]
    assert len(srcs) >= 10 and all(x.startswith("data:image/png;base64,") for x in srcs)
    text = format_results(results)
    assert "seed-vae" in text and "seed-gan" in text and "n/a" in text and "FID" in text


def test_the_same_command_again_reuses_runs_and_evaluations(compared):
    root, res = compared
    ckpt_file = res.folder / "runs" / "seed-vae" / "checkpoints" / "last.safetensors"
    before = ckpt_file.stat().st_mtime_ns
    log = []
    again = run_compare(["seed-vae", "seed-gan"], "digits", "3ep", samples=300, out_root=root, progress=False,
                        log=log.append)
    assert ckpt_file.stat().st_mtime_ns == before
    assert any("seed-vae: trained (3 epochs per model), reusing" in x for x in log)
    assert sum("evaluation reused" in x for x in log) == 2
    assert [m["metrics"]["fid"] for m in again.results["models"]] == [m["metrics"]["fid"] for m in res.results["models"]]
    # other settings for the same folder: refused, then replaced with --overwrite
    with pytest.raises(GenlabError, match="other budget.*--name.*--overwrite"):
        run_compare(["seed-vae", "seed-gan"], "digits", "4ep", samples=300, out_root=root,
                    name="digits-seed-vae-seed-gan-3ep", progress=False, log=quiet)


def test_evaluations_made_with_other_evaluator_weights_are_redone(compared, tmp_path, monkeypatch):
    import torch

    from genlab.eval.evaluator import evaluator_cache_root, load_evaluator, save_evaluator

    _, res = compared
    root = tmp_path / "compare"  # a copy: the module's comparison keeps its evaluations
    shutil.copytree(res.folder, root / res.folder.name)
    fp = res.results["settings"]["evaluator_fingerprint"]
    cache = tmp_path / "cache"
    shutil.copytree(evaluator_cache_root() / fp, cache / "evaluators" / fp)
    monkeypatch.setenv("GENLAB_CACHE", str(cache))
    ev = load_evaluator(cache / "evaluators" / fp)
    assert res.results["settings"]["evaluator_weights_sha256"] == ev.weights_sha256
    with torch.no_grad():  # the same data and architecture, trained elsewhere: other weights
        next(ev.net.parameters()).view(-1)[0] += 0.5
    save_evaluator(type(ev)(ev.net, dict(ev.info)), cache / "evaluators" / fp)
    log = []
    again = run_compare(["seed-vae", "seed-gan"], "digits", "3ep", samples=300, out_root=root, progress=False,
                        log=log.append)
    assert sum("evaluation reused" in x for x in log) == 0 and sum(": evaluating" in x for x in log) == 2
    s = again.results["settings"]
    assert s["evaluator_fingerprint"] == fp and s["evaluator_weights_sha256"] != res.results["settings"][
        "evaluator_weights_sha256"]
    assert all(m["metrics"]["fid"] != n["metrics"]["fid"] for m, n in zip(again.results["models"],
                                                                      res.results["models"]))


def test_reused_run_folders_are_never_written_into(compared, tmp_path):
    _, res = compared
    reused = tmp_path / "my-vae"
    shutil.copytree(res.folder / "runs" / "seed-vae", reused)
    (reused / "eval.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in reused.rglob("*")}
    log = []
    out = run_compare([str(reused), "seed-gan"], None, "3ep", samples=300, out_root=tmp_path / "c", progress=False,
                      log=log.append)
    assert {p: p.stat().st_mtime_ns for p in reused.rglob("*")} == before  # nothing written, nothing new
    assert (out.folder / "evals" / "my-vae.json").is_file()
    assert [m["name"] for m in out.results["models"]] == ["my-vae", "seed-gan"]
    assert out.results["models"][0]["source"] == "run"


def test_time_and_image_budgets(tmp_path, step_clock):
    out = run_compare(["seed-gan"], "digits", "1000img", samples=200, out_root=tmp_path, progress=False, log=quiet)
    m = out.results["models"][0]
    assert m["steps"] == math.ceil(1000 / 128) and m["images_seen"] >= 1000
    step_clock("mlp-vae", 0.125)  # each step takes 1/8 s of training time (tests/conftest.py)
    out = run_compare(["seed-vae"], "digits", "2s", samples=200, out_root=tmp_path, progress=False, log=quiet)
    st = state_of(out.folder / "runs" / "seed-vae")
    assert st["train_seconds"] == 2.0 and st["step"] == 16  # the time budget ended the run at 2 s: 16 steps
    log = []
    run_compare(["seed-vae"], "digits", "2s", samples=200, out_root=tmp_path, progress=False, log=log.append)
    assert any("trained (2s of training time per model), reusing" in x for x in log)
    assert state_of(out.folder / "runs" / "seed-vae")["step"] == st["step"]


def test_models_on_different_datasets_are_refused(tmp_path, compared):
    _, res = compared
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "blobs.npz", images=rng.integers(0, 256, (200, 8, 8), dtype=np.uint8),
             labels=rng.integers(0, 2, 200))
    other = genlab.train("seed-vae", f"npz:{tmp_path / 'blobs.npz'}", out=tmp_path / "blob-vae", epochs=1,
                         progress=False, device="cpu")
    # without --data the first run's data is the comparison's
    with pytest.raises(GenlabError, match="different datasets: run seed-gan was trained on digits, the comparison "
                                          "is on npz:.*blobs.npz"):
        run_compare([str(other.run_dir), str(res.folder / "runs" / "seed-gan")], None, None, samples=100,
                    out_root=tmp_path / "c", progress=False, log=quiet)
    with pytest.raises(GenlabError, match="different datasets: run blob-vae was trained on npz:.*blobs.npz, the "
                                          "comparison is on digits"):
        run_compare([str(other.run_dir)], "digits", None, out_root=tmp_path / "c", progress=False, log=quiet)


def test_the_progress_strip_spans_training_from_first_to_last_epoch(tmp_path):
    from genlab.compare.report import PROGRESS_GRIDS, _progress_strip

    (tmp_path / "samples").mkdir()
    for e in range(1, 21):
        Image.new("L", (4, 4), e).save(tmp_path / "samples" / f"epoch-{e:04d}.png")
    page = _progress_strip(tmp_path, epochs_completed=19)
    shown = [int(x) for x in re.findall(r'alt="samples after epoch (\d+)', page)]
    assert len(shown) == PROGRESS_GRIDS and shown[0] == 1 and shown[-1] == 20 and shown == sorted(set(shown))
    assert "epoch 20 (partial: stopped at the budget)" in page and "epoch 1<" in page


def test_vae_likelihoods_are_compared_image_by_image(compared, tmp_path):
    """Two VAEs scored on the same test images: the difference of their mean NLLs, with the standard error of
    the per-image differences, from the per-image files each evaluation writes beside its JSON."""
    from safetensors.torch import load_file

    _, res = compared
    brief = genlab.train("seed-vae", "digits", out=tmp_path / "brief-vae", epochs=1, progress=False, device="cpu")
    three = tmp_path / "three-vae"
    shutil.copytree(res.folder / "runs" / "seed-vae", three)
    out = run_compare([str(three), str(brief.run_dir)], None, None, samples=300, likelihood_k=4,
                      out_root=tmp_path / "c", progress=False, log=quiet)
    models = {m["name"]: m for m in out.results["models"]}
    per = {}
    for name, m in models.items():
        lk = m["likelihood"]
        assert lk["per_image_file"] == f"{name}.likelihood.safetensors"
        t = load_file(str(Path(m["eval_file"]).parent / lk["per_image_file"]))
        assert set(t) == {"nll_iwae", "neg_elbo"} and t["nll_iwae"].shape == (lk["n_images"],)
        assert float(t["nll_iwae"].mean()) == pytest.approx(lk["nll_iwae"], rel=1e-12)
        assert float(t["neg_elbo"].mean()) == pytest.approx(lk["neg_elbo"], rel=1e-12)
        per[name] = t["nll_iwae"]
    # three epochs beat one: the paired entry names the better model first, and its numbers are the per-image ones
    [pair] = out.results["paired_likelihood"]
    assert (pair["better"], pair["other"], pair["measure"]) == ("three-vae", "brief-vae", "nll_iwae")
    d = per["brief-vae"] - per["three-vae"]
    assert pair["difference"] == pytest.approx(float(d.mean()), rel=1e-12) and pair["difference"] > 0
    assert pair["stderr"] == pytest.approx(float(d.std() / math.sqrt(d.numel())), rel=1e-12)
    assert pair["fraction_of_images_better"] == pytest.approx(float((d > 0).double().mean()))
    # hard digits are hard for both models, so pairing is surer than the two means' own errors combined
    unpaired = math.hypot(*(m["likelihood"]["nll_iwae_stderr"] for m in models.values()))
    assert pair["stderr"] < unpaired
    assert any(s.startswith("Paired on the same ") and "three-vae's IWAE NLL is" in s for s in out.results["summary"])


def test_an_old_vae_evaluation_without_per_image_likelihoods_is_redone(compared, tmp_path):
    from safetensors.torch import load_file

    _, res = compared
    root = tmp_path / "compare"
    shutil.copytree(res.folder, root / res.folder.name)
    own = root / res.folder.name / "runs" / "seed-vae"
    file = own / "eval.likelihood.safetensors"
    good = file.read_bytes()
    good_values = load_file(str(file))
    for damage in (None, good[: len(good) // 2]):  # deleted (an old evaluation), then torn in half
        if damage is None:
            file.unlink()
        else:
            file.write_bytes(damage)
        log = []
        again = run_compare(["seed-vae", "seed-gan"], "digits", "3ep", samples=300, out_root=root, progress=False,
                            log=log.append)
        assert any("seed-vae: evaluating" in x for x in log) and any("seed-gan: evaluation reused" in x for x in log)
        rewritten = load_file(str(file))  # rewritten, the same numbers: the evaluation is deterministic
        assert set(rewritten) == set(good_values)
        assert all(bool((rewritten[k] == v).all()) for k, v in good_values.items())
        assert again.results["models"][0]["metrics"]["fid"] == res.results["models"][0]["metrics"]["fid"]


# ----------------------------------------------------------------------------- hostile and damaged files

def test_a_forged_eval_json_in_a_reused_run_folder_is_recomputed_escaped_and_reuse_is_marked(compared, tmp_path):
    """A run folder given in --models carries its own eval.json. One with markup and a string for FID is
    recomputed; one with well-typed numbers cannot be told from a real one, so it is reused but marked."""
    _, res = compared
    vae, gan = tmp_path / "my-vae", tmp_path / "my-gan"
    shutil.copytree(res.folder / "runs" / "seed-vae", vae)
    shutil.copytree(res.folder / "runs" / "seed-gan", gan)
    forged = json.loads((vae / "eval.json").read_text())
    forged["metrics"]["fid"] = "<script>alert('fid')</script>"
    forged["metrics"]["classes_covered"] = "<script>alert('classes')</script>"
    (vae / "eval.json").write_text(json.dumps(forged))
    fake = json.loads((gan / "eval.json").read_text())
    fake["metrics"]["fid"] = 0.001  # a flattering number of the right type
    fake["metrics"]["num_classes"] = 10.0  # a float with an integral value: coerced to 10
    (gan / "eval.json").write_text(json.dumps(fake))
    before = {p: p.read_bytes() for p in [*vae.rglob("*"), *gan.rglob("*")] if p.is_file()}
    log = []
    out = run_compare([str(vae), str(gan)], None, None, samples=300, out_root=tmp_path / "c", progress=False,
                      log=log.append)
    assert any("my-vae: the evaluation in" in x and "malformed (metrics.fid: expected a number" in x for x in log)
    assert any(x == f"== my-gan: evaluation reused from {gan / 'eval.json'}" for x in log)
    v, g = out.results["models"]
    assert v["metrics"]["fid"] == res.results["models"][0]["metrics"]["fid"]  # recomputed: the true value
    assert v["metrics"]["classes_covered"] == res.results["models"][0]["metrics"]["classes_covered"]
    assert v["evaluation"] == {"reused": False, "reused_from": None}
    assert g["metrics"]["fid"] == 0.001 and type(g["metrics"]["num_classes"]) is int
    assert g["evaluation"] == {"reused": True, "reused_from": "run folder"}
    saved = json.loads(out.results_path.read_text())
    assert [m["evaluation"]["reused"] for m in saved["models"]] == [False, True]
    page = out.report_path.read_text()
    assert "<script" not in page and "alert(" not in page
    row = re.search(r'<tr data-model="my-gan">(.*?)</tr>', page).group(1)
    assert "&dagger;" in row and "0.00" in row
    assert "&dagger; evaluation reused from the eval.json of a run folder" in page
    assert f"Evaluation <b>reused</b> from <code>{gan / 'eval.json'}</code>" in page
    assert "my-gan (reused)" in format_results(out.results) and "my-vae (reused)" not in format_results(out.results)
    assert {p: p.read_bytes() for p in [*vae.rglob("*"), *gan.rglob("*")] if p.is_file()} == before  # untouched


def test_likelihood_file_names_from_json_must_be_bare_names(compared, tmp_path):
    from genlab.compare.driver import bare_file_name, paired_likelihoods

    for name in ("eval.likelihood.safetensors", "my-vae.likelihood.safetensors"):
        assert bare_file_name(name)
    for name in ("../eval.likelihood.safetensors", "/etc/passwd", "a/b", "..", ".", "", "a\\b", "x\0y", 3, None,
                 ["eval.json"]):
        assert not bare_file_name(name), name
    _, res = compared
    run = res.folder / "runs" / "seed-vae"
    entry = json.loads(json.dumps(res.results["models"][0]))
    other = {**entry, "name": "other", "eval_file": str(tmp_path / "deeper" / "eval.json")}
    assert paired_likelihoods([entry, {**other, "eval_file": entry["eval_file"]}])  # bare names: read and paired
    # a name that climbs out of the evaluation's folder is not followed, even when it reaches the real file
    other["likelihood"] = {**entry["likelihood"], "per_image_file": f"../{run.name}/eval.likelihood.safetensors"}
    other["eval_file"] = str(run.parent / "x" / "eval.json")
    assert paired_likelihoods([entry, other]) == []
    # a comparison's own evaluation naming another file is redone, not read
    root = tmp_path / "compare"
    shutil.copytree(res.folder, root / res.folder.name)
    own = root / res.folder.name / "runs" / "seed-vae" / "eval.json"
    ev = json.loads(own.read_text())
    ev["likelihood"]["per_image_file"] = "../seed-gan/eval.json"
    own.write_text(json.dumps(ev))
    log = []
    run_compare(["seed-vae", "seed-gan"], "digits", "3ep", samples=300, out_root=root, progress=False, log=log.append)
    assert any("seed-vae: evaluating" in x for x in log)
    assert json.loads(own.read_text())["likelihood"]["per_image_file"] == "eval.likelihood.safetensors"


def test_the_two_class_cells_of_the_results_table_are_escaped():
    from genlab.compare.report import results_table

    m = entry("m<i>", "gan", 10.0, 0.01, 0.5, 0.5, 0.5)
    m.update(name="m<i>", train_seconds=None, img_per_s=None, parameters=1000)
    m["metrics"].update(classes_covered="<script>a()</script>", num_classes="<img src=x onerror=b()>")
    page = results_table({"models": [m]})
    assert "<script" not in page and "<img" not in page and "m<i>" not in page
    assert "&lt;script&gt;a()&lt;/script&gt; / &lt;img src=x onerror=b()&gt;" in page


def test_a_corrupt_compare_json_is_a_clear_error(compared, tmp_path):
    _, res = compared
    root = tmp_path / "compare"
    shutil.copytree(res.folder, root / res.folder.name)
    marker = root / res.folder.name / "compare.json"
    for damage in (b"\x00\xff{", b"[]", b'{"format": "genlab-compare-settings-1"'):
        marker.write_bytes(damage)
        with pytest.raises(GenlabError, match=r"is not a genlab comparison \(no compare\.json of format"):
            run_compare(["seed-vae", "seed-gan"], "digits", "3ep", samples=300, out_root=root, progress=False,
                        log=quiet)
        assert (root / res.folder.name / "runs" / "seed-vae" / "checkpoints" / "last.safetensors").is_file()
