"""Tests of genlab.eval: metric closed forms, the evaluator, calibration, IWAE, run evaluation."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from genlab.data import load_dataset
from genlab.errors import GenlabError
from genlab.eval import (calibrate, evaluate_npz, evaluate_run, fid_from_features, fingerprint, format_calibration,
                         format_table, frechet_distance, get_evaluator, inception_score, kid_from_features, prdc,
                         vae_likelihood)
from genlab.eval.evaluator import evaluator_cache_root


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluators")


@pytest.fixture(scope="module")
def evaluator(digits, cache):
    return get_evaluator(digits, progress=False, cache_dir=cache)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    import genlab

    out = tmp_path_factory.mktemp("runs") / "vae"
    torch.manual_seed(0)
    return genlab.train("seed-vae", "digits", out=out, epochs=5, progress=False, device="cpu")


# ----------------------------------------------------------------------------- closed forms

def test_frechet_distance_closed_form():
    d = 4
    # N(0, a I) vs N(m, b I): |m|^2 + d (a + b - 2 sqrt(ab))
    m = np.array([1.0, -2.0, 0.5, 0.0])
    assert frechet_distance(np.zeros(d), 4 * np.eye(d), m, 9 * np.eye(d)) == pytest.approx(
        (m ** 2).sum() + d * (4 + 9 - 2 * 6), rel=1e-9)
    # equal (non-diagonal) covariances: only the mean term remains
    a = np.random.default_rng(0).normal(size=(d, d))
    cov = a @ a.T + np.eye(d)
    assert frechet_distance(np.ones(d), cov, np.zeros(d), cov) == pytest.approx(d, abs=1e-6)


def test_fid_torchmetrics_matches_closed_form_and_self_is_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 16, generator=g)
    y = torch.randn(3000, 16, generator=g) * 1.5 + 0.3
    assert abs(fid_from_features(x, x)) < 1e-3
    want = frechet_distance(x.mean(0).numpy(), np.cov(x.numpy(), rowvar=False),
                            y.mean(0).numpy(), np.cov(y.numpy(), rowvar=False))
    got = fid_from_features(x, y)
    assert got == pytest.approx(want, rel=1e-4)
    # population value: 16 * 0.3^2 + 16 * (1 + 2.25 - 2 * 1.5) = 1.44 + 4 = 5.44
    assert got == pytest.approx(5.44, rel=0.1)


def test_kid_identical_and_shifted():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 16, generator=g)
    y = torch.randn(2000, 16, generator=g)
    # torchmetrics draws the real and fake subsets independently; for identical sets they share points,
    # which biases the estimate slightly below 0, far below any real difference
    same, same_std, _ = kid_from_features(x, x, subsets=50, subset_size=500)
    iid, iid_std, _ = kid_from_features(x, y, subsets=50, subset_size=500)
    shifted, s_std, size = kid_from_features(x, y + 0.5, subsets=50, subset_size=500)
    assert size == 500
    assert abs(same) < 0.02 and abs(iid) < 4 * iid_std / math.sqrt(50) + 1e-6
    assert shifted > 0.1 and shifted > 20 * abs(same) and shifted > 10 * abs(iid) and shifted > 5 * s_std
    # the full set against itself: the unbiased estimator is slightly negative (it assumes independent sets)
    full, _, _ = kid_from_features(x, x, subsets=1, subset_size=2000)
    assert -0.02 < full <= 0


def test_inception_score_extremes():
    k = 10
    assert inception_score(torch.full((100, k), 1.0 / k)) == pytest.approx(1.0, abs=1e-9)
    one_hot = torch.eye(k).repeat(7, 1)
    assert inception_score(one_hot) == pytest.approx(float(k), rel=1e-9)
    assert inception_score(torch.eye(k)[[3] * 50]) == pytest.approx(1.0, abs=1e-9)  # one class only


def test_prdc_identical_and_single_point():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(1500, 8, generator=g)
    same = prdc(real, real.clone())
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert 0.9 < same["density"] < 1.5
    other = prdc(real, torch.randn(1500, 8, generator=g))
    assert 0.6 < other["precision"] < 1.0 and 0.6 < other["recall"] < 1.0 and 0.85 < other["coverage"] <= 1.0
    single = prdc(real, real[:1].repeat(1500, 1))
    assert single["recall"] <= 1 / 1500 + 1e-9  # only the copied point itself can be reached
    assert single["coverage"] < 0.02 and single["precision"] == 1.0


# ----------------------------------------------------------------------------- evaluator

def test_evaluator_accuracy_cache_and_fingerprint(digits, evaluator, cache, monkeypatch):
    assert evaluator.trained_now
    assert evaluator.info["test_accuracy"] >= 0.97
    folder = cache / evaluator.fingerprint
    assert (folder / "weights.safetensors").is_file() and (folder / "evaluator.json").is_file()
    mtime = (folder / "weights.safetensors").stat().st_mtime_ns
    again = get_evaluator(digits, progress=False, cache_dir=cache, train_if_missing=False)
    assert not again.trained_now and again.fingerprint == evaluator.fingerprint
    assert (folder / "weights.safetensors").stat().st_mtime_ns == mtime
    x = digits.test.images[:64]
    assert torch.allclose(again.features(x), evaluator.features(x), atol=1e-5)
    assert evaluator.features(x).shape == (64, 128) and evaluator.logits(x).shape == (64, 10)
    # any change to the data changes the fingerprint, and then nothing is cached for it
    images = digits.test.images.clone()
    images[0, 0, 0, 0] ^= 1
    changed = dataclasses.replace(digits, test=dataclasses.replace(digits.test, images=images))
    assert fingerprint(changed) != evaluator.fingerprint
    with pytest.raises(GenlabError, match="no evaluator is cached"):
        get_evaluator(changed, progress=False, cache_dir=cache, train_if_missing=False)
    monkeypatch.setenv("GENLAB_CACHE", str(cache.parent / "gc"))
    assert evaluator_cache_root() == cache.parent / "gc" / "evaluators"


def test_a_retrained_evaluator_of_the_same_data_is_told_apart_by_its_weights(digits, evaluator, cache, tmp_path):
    """Same fingerprint (data + architecture), other weights - as the same training on another CPU gives:
    the reference features cached for the old network are not reused, and results name the weights."""
    import shutil

    from genlab.eval.evaluator import load_evaluator, save_evaluator

    folder = tmp_path / evaluator.fingerprint
    shutil.copytree(cache / evaluator.fingerprint, folder)
    first = load_evaluator(folder)
    old_feats, _ = first.split_features(digits, "test")
    assert (folder / "features-test.safetensors").is_file() and len(first.weights_sha256) == 64
    assert first.weights_sha256 == evaluator.weights_sha256 == evaluator.info["weights_sha256"]
    with torch.no_grad():  # "retrain": one weight moves
        next(first.net.parameters()).view(-1)[0] += 0.5
    retrained = type(first)(first.net, dict(first.info))
    assert retrained.fingerprint == first.fingerprint and retrained.weights_sha256 != first.weights_sha256
    save_evaluator(retrained, folder)
    again = load_evaluator(folder)
    assert again.weights_sha256 == retrained.weights_sha256 == again.info["weights_sha256"]
    new_feats, _ = again.split_features(digits, "test")  # recomputed: the file held the old network's
    assert not torch.allclose(new_feats, old_feats, atol=1e-4)
    assert torch.allclose(new_feats, again.features(digits.test.images), atol=1e-5)
    # weights that are not the ones evaluator.json records: refused, with what to do
    info = json.loads((folder / "evaluator.json").read_text())
    info["weights_sha256"] = first.weights_sha256
    (folder / "evaluator.json").write_text(json.dumps(info))
    with pytest.raises(GenlabError, match="not the ones its evaluator.json records.*delete that folder"):
        load_evaluator(folder)


def test_calibration_ordering_on_digits(digits, evaluator, cache):
    rows = calibrate(digits, evaluator, seed=0)
    assert (cache / evaluator.fingerprint / "features-train.safetensors").is_file()  # reference features cached
    by = {r["name"]: r["metrics"] for r in rows}
    fid = {k: v["fid"] for k, v in by.items()}
    # on 8x8 digits a sigma = 1 px blur is as destructive as noise (measured ~equal), so only vs real here
    assert fid["real-train"] < fid["blurred-train"] / 10 and fid["real-train"] < fid["uniform-noise"] / 10
    assert fid["real-train"] < fid["half-classes"] < fid["single-image"]
    assert fid["real-train"] < 5.0
    assert by["real-train"]["kid"] < by["half-classes"]["kid"] < by["single-image"]["kid"]
    assert by["single-image"]["recall"] < 0.01 and by["single-image"]["coverage"] < 0.05
    # real vs real: the k=5 coverage / precision / recall of two samples of one distribution are high
    assert by["real-train"]["coverage"] > 0.9 and by["real-train"]["precision"] > 0.9
    assert by["real-train"]["recall"] > 0.85
    assert by["real-train"]["classes_covered"] == 10 and by["half-classes"]["classes_covered"] == 5
    assert by["single-image"]["classes_covered"] == 1 and by["single-image"]["inception_score"] < 1.01
    assert by["real-train"]["inception_score"] > 6
    # training images are their own nearest training image: fully "memorised"; noise is not
    assert by["real-train"]["memorization"]["fraction_closer_than_test_p1"] == 1.0
    assert by["uniform-noise"]["memorization"]["fraction_closer_than_test_p1"] < 0.05
    table = format_calibration(rows)
    assert "single-image" in table and "FID" in table


# ----------------------------------------------------------------------------- likelihood

def test_iwae_bounds_and_batching(vae_run, digits):
    model = vae_run.model.eval()
    x = digits.test.images
    k50 = vae_likelihood(model, x, k=50, seed=0)
    assert k50["likelihood"].startswith("bce-on-grey") and k50["bits_per_dim"] is None
    assert k50["nll_iwae"] <= k50["neg_elbo"] + 0.05
    # the model's own single-sample ELBO (independent noise) agrees with ours
    assert model.evaluate(x, generator=torch.Generator().manual_seed(3))["test_elbo"] == pytest.approx(
        k50["elbo"], abs=1.0)
    k5 = vae_likelihood(model, x, k=5, seed=1)
    k500 = vae_likelihood(model, x, k=500, seed=2, batch_images=64, max_rows=4096)
    assert k500["nll_iwae"] <= k5["nll_iwae"] + 0.1
    assert k500["nll_iwae"] <= k50["nll_iwae"] + 0.1
    # batching does not change the estimate beyond Monte Carlo noise
    k500b = vae_likelihood(model, x, k=500, seed=5, batch_images=7, max_rows=700)
    assert k500b["nll_iwae"] == pytest.approx(k500["nll_iwae"], abs=0.3)
    # and the batched log-weights equal the per-image computation
    xb = x[:12].float() / 255
    eps = torch.randn(30, 12, model.config.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = model.log_weights(xb, noise=eps)
        single = torch.cat([model.log_weights(xb[i:i + 1], noise=eps[:, i:i + 1]) for i in range(12)], 1)
    assert torch.allclose(batched, single, rtol=1e-5, atol=1e-3)
    binar = vae_likelihood(model, x, k=50, binarize=True, seed=0)
    assert binar["binarized"] and binar["bits_per_dim"] == pytest.approx(binar["nll_iwae"] / (64 * math.log(2)))
    assert binar["nll_iwae"] <= binar["neg_elbo"] + 0.05


# ----------------------------------------------------------------------------- run / npz

def test_evaluate_run_and_npz(vae_run, digits, cache, tmp_path):
    result = evaluate_run(vae_run.run_dir, n_samples=1000, seed=0, likelihood_k=20, progress=False, cache_dir=cache)
    written = json.loads((vae_run.run_dir / "eval.json").read_text())
    p = written["protocol"]
    assert "not Inception" in p["feature_space"] and "digits" in p["feature_space"]
    assert p["n_samples"] == 1000 and p["reference"] == "test" and p["reference_size"] == len(digits.test)
    assert p["evaluator_fingerprint"] == fingerprint(digits) and p["seed"] == 0
    assert written["metrics"]["fid"] == pytest.approx(result["metrics"]["fid"])
    assert written["likelihood"]["k"] == 20 and written["likelihood"]["nll_iwae"] > 0
    assert 0 <= written["metrics"]["precision"] <= 1
    text = format_table(result)
    assert "FID" in text and "not Inception" in text and "IWAE" in text
    # the same seed gives the same numbers
    again = evaluate_run(vae_run.run_dir, n_samples=1000, seed=0, progress=False, cache_dir=cache, write=False)
    assert again["metrics"]["fid"] == pytest.approx(result["metrics"]["fid"], rel=1e-6)

    good = tmp_path / "good.npz"
    np.savez(good, images=digits.train.images[:500].numpy())
    res = evaluate_npz(good, "digits", progress=False, cache_dir=cache)
    assert res["protocol"]["n_samples"] == 500 and res["metrics"]["fid"] < 10
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((10, 1, 28, 28), np.float32))
    with pytest.raises(GenlabError, match=r"\(10, 1, 28, 28\).*\(N, 1, 8, 8\)"):
        evaluate_npz(bad, "digits", progress=False, cache_dir=cache)


# ----------------------------------------------------------------------------- Fashion-MNIST, CLI

def _fashion_subset(n_train: int, n_test: int):
    from genlab.data import Dataset, ImageSplit

    fm = load_dataset("fashion-mnist", progress=False)  # CI installs Debian's dataset-fashion-mnist: no skip
    return Dataset("fashion-mnist-subset", ImageSplit(fm.train.images[:n_train], fm.train.labels[:n_train]),
                   ImageSplit(fm.test.images[:n_test], fm.test.labels[:n_test]), fm.num_classes, fm.class_names,
                   fm.origin)


def test_calibration_ordering_on_fashion_mnist(tmp_path):
    ds = _fashion_subset(12_000, 2_000)
    ev = get_evaluator(ds, progress=False, cache_dir=tmp_path, epochs=2)
    assert ev.accuracy(ds.test) > 0.8  # 2 epochs on 12k images: a sanity check, not the 92 % target
    rows = {r["name"]: r["metrics"] for r in calibrate(ds, ev, n=2_000)}
    fid = {k: v["fid"] for k, v in rows.items()}
    assert fid["real-train"] < fid["blurred-train"] < fid["uniform-noise"], fid
    assert fid["real-train"] < fid["half-classes"] and fid["real-train"] < fid["single-image"], fid
    assert fid["real-train"] * 10 < fid["blurred-train"], fid
    assert rows["single-image"]["recall"] < 0.01
    assert 0.9 < rows["real-train"]["coverage"] <= 1.0  # ~0.97 for k = 5 (Naeem et al. 2020)
    assert rows["real-train"]["classes_covered"] == 10 and rows["half-classes"]["classes_covered"] <= 6


def test_cli_eval_scores_a_run_and_calibrates(vae_run, digits, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
           "GENLAB_CACHE": str(tmp_path / "cache")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "genlab", *map(str, a)], env=env, capture_output=True,
                                    text=True, timeout=600)
    r = run("eval", vae_run.run_dir, "-n", "500", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "FID" in r.stdout and "eval.json" in r.stdout
    saved = json.loads((vae_run.run_dir / "eval.json").read_text())
    assert saved["protocol"]["n_samples"] == 500
    # the evaluator that scored it is the one of the run's data: its fingerprint, recomputed here, names the
    # evaluator the command trained into its cache
    fp = saved["protocol"]["evaluator_fingerprint"]
    assert fp == fingerprint(digits) and (tmp_path / "cache" / "evaluators" / fp / "weights.safetensors").is_file()
    r = run("eval", "--calibrate", "--data", "digits", "-n", "300", "--no-progress")
    assert r.returncode == 0, r.stderr
    for name in ("real-train", "uniform-noise", "blurred-train", "half-classes", "single-image"):
        assert name in r.stdout
    r = run("eval", "--samples", tmp_path / "missing.npz", "--data", "digits")
    assert r.returncode == 2 and "missing.npz" in r.stderr and "Traceback" not in r.stderr
    r = run("eval", vae_run.run_dir, "--features", "inception")
    assert r.returncode == 2 and "weights" in r.stderr  # never downloads: a clear message instead


def test_a_damaged_evaluator_cache_is_retrained_with_a_message(digits, evaluator, cache, tmp_path, capsys):
    """The cache is derived data: a torn weights file or an edited evaluator.json is replaced (with a line
    on stderr saying why) instead of failing every later evaluation until deleted by hand."""
    import shutil

    from genlab.eval.evaluator import EvaluatorCacheError, load_evaluator

    folder = tmp_path / evaluator.fingerprint
    shutil.copytree(cache / evaluator.fingerprint, folder)
    good_json = (folder / "evaluator.json").read_bytes()
    for name, damage in [("evaluator.json", b"\xff\xfe not utf-8"), ("evaluator.json", b"[1, 2]"),
                         ("evaluator.json", good_json.replace(b'"image_shape"', b'"image_shap"')),
                         ("weights.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}")]:
        (folder / name).write_bytes(damage)
        with pytest.raises(EvaluatorCacheError, match=f"the cached evaluator in {folder} is unreadable"):
            load_evaluator(folder)
        with pytest.raises(GenlabError, match="delete that folder and it will be retrained"):
            get_evaluator(digits, progress=False, cache_dir=tmp_path, train_if_missing=False)
        shutil.copy(cache / evaluator.fingerprint / name, folder / name)
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # torn by a full disk
    capsys.readouterr()
    ev = get_evaluator(digits, progress=False, cache_dir=tmp_path)
    err = capsys.readouterr().err
    assert ev.trained_now and f"the cached evaluator in {folder} is unreadable" in err and "retraining it" in err
    again = get_evaluator(digits, progress=False, cache_dir=tmp_path, train_if_missing=False)
    assert not again.trained_now and again.weights_sha256 == ev.weights_sha256
    x = digits.test.images[:32]
    assert torch.allclose(again.features(x), ev.features(x), atol=1e-5)
