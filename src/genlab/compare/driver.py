"""``genlab compare``: train several models on the same data under the same budget, evaluate them
identically, and write ``<out-root>/<name>/results.json`` and ``report.html``.

Folder layout::

    compare/<name>/compare.json          what defines the comparison: data, models, budget, seed
    compare/<name>/runs/<preset>/        a run folder per preset trained here
    compare/<name>/evals/<model>.json    evaluations of reused run folders (never written into them)
    compare/<name>/results.json          format genlab-compare-1: settings, one entry per model, summary
    compare/<name>/report.html           one self-contained page (images embedded)

Running the same command again reuses what is done: a run whose checkpoint shows the budget spent is
not trained again, an interrupted one is resumed, an evaluation is redone only when the evaluator
(fingerprint or weights), sample count, seed or likelihood setting differ. A folder made for other data,
models, budget or seed is never overwritten without ``--overwrite``.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GenlabError
from ..fileio import atomic_write_bytes, atomic_write_json, remove_orphan_tmp
from ..training.lock import Claim, FolderKind, FolderLock, holds_files, is_kind, settle_leftover
from ..training.lock import replace as replace_folder
from ..training.run import Run, likelihood_file_for
from .budget import Budget, parse_budget
from .summary import nll_value, summarize

RESULTS_FORMAT = "genlab-compare-1"
SETTINGS_FORMAT = "genlab-compare-settings-1"
MAX_NAME = 80  # longer derived names become <data>-<n>models-<hash>


@dataclass
class ModelSpec:
    """One item of ``--models``: a preset to train here, or an existing run folder to reuse as it is."""

    tag: str  # the name shown in tables and the report
    source: str  # "preset" or "run"
    preset: str | None
    run_dir: Path


@dataclass
class CompareResult:
    folder: Path
    results: dict[str, Any]
    results_path: Path
    report_path: Path


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "x"


def parse_models(items: list[str]) -> list[ModelSpec]:
    """Preset names or run folders (a path to a folder holding config.json) -> specs (run_dir of presets is
    filled in later, under the comparison's folder)."""
    from ..models.registry import MODELS, PRESETS, resolve

    specs: list[ModelSpec] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            if not Run(path).config_path.is_file():
                raise GenlabError(f"--models: {item} is a folder but not a genlab run (no config.json); give a run "
                                  "folder or a preset name (see `genlab models`).")
            specs.append(ModelSpec(_safe(path.resolve().name), "run", None, path))
        elif item in PRESETS or item in MODELS:
            specs.append(ModelSpec(_safe(resolve(item).name), "preset", item, Path()))
        else:
            known = ", ".join(sorted(set(PRESETS) | set(MODELS)))
            raise GenlabError(f"--models: {item!r} is neither a preset nor a run folder. Presets and models: {known} "
                              "(see `genlab models`); a run folder is a path holding config.json.")
    if not specs:
        raise GenlabError("--models is empty; name presets and/or run folders, e.g. --models seed-vae,seed-gan.")
    seen: dict[str, ModelSpec] = {}
    for s in specs:
        if s.tag in seen:
            a, b = seen[s.tag], s
            same = (a.source == b.source == "preset") or (a.source == b.source == "run"
                                                          and a.run_dir.resolve() == b.run_dir.resolve())
            if same:
                raise GenlabError(f"--models names {s.tag} twice; give each model once.")
            raise GenlabError(f"--models: two items would both be called {s.tag!r} ({a.preset or a.run_dir}, "
                              f"{b.preset or b.run_dir}); rename one run folder.")
        seen[s.tag] = s
    return specs


def _run_data(config: dict[str, Any]) -> tuple[str, int | None, int | None]:
    d = config["data"]
    return d["spec"], d.get("image_size"), d.get("channels")


def _describe_data(spec: str, image_size: int | None, channels: int | None) -> str:
    extra = [f"--image-size {image_size}"] * (image_size is not None) + [f"--channels {channels}"] * (channels is not None)
    return " ".join([spec, *extra])


def default_name(data_name: str, specs: list[ModelSpec], budget: Budget | None, seed: int) -> str:
    """``<data>-<model>-<model>...-<budget>[-seed<S>]``: the same command gets the same folder (so it resumes)."""
    data_tag = _safe(data_name.split(":", 1)[-1].rstrip("/").split("/")[-1] if ":" in data_name else data_name)
    parts = [data_tag, *(s.tag for s in specs)]
    if budget is not None:
        parts.append(_safe(budget.text))
    if seed:
        parts.append(f"seed{seed}")
    name = "-".join(parts)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(json.dumps([str(s.preset or s.run_dir.resolve()) for s in specs]
                                     + [budget.text if budget else None, seed]).encode()).hexdigest()[:8]
    return f"{data_tag}-{len(specs)}models-{digest}"


def _settings(data: tuple[str, int | None, int | None], specs: list[ModelSpec], budget: Budget | None,
              seed: int) -> dict[str, Any]:
    """What defines a comparison folder: training data, models, budget, seed (evaluation settings may change)."""
    return {"format": SETTINGS_FORMAT, "data": {"spec": data[0], "image_size": data[1], "channels": data[2]},
            "models": [s.preset if s.source == "preset" else str(s.run_dir.resolve()) for s in specs],
            "budget": None if budget is None else budget.text, "seed": seed}


COMPARE_KIND = FolderKind("comparison folder", "compare.json", SETTINGS_FORMAT, "results.json",
                          keys=("data", "models"))
_RESERVED = re.compile(r"^\..*(\.replaced|\.discarded-\d+)$")  # what --overwrite leaves beside a folder


def comparison_folder(out_root: str | Path, name: str) -> Path:
    """``out_root/name`` for a ``name`` that is a plain folder name, so that a comparison writes (and with
    --overwrite deletes) nothing outside --out-root."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
           or (os.altsep is not None and os.altsep in name) or Path(name).is_absolute() or _RESERVED.match(name))
    if bad:
        raise GenlabError(f"--name {name!r} is not a plain folder name: the comparison folder is made directly "
                          f"inside --out-root ({out_root}), so its name may not be empty, '.' or '..', contain '/' "
                          "or '\\', or have the form of a folder kept aside by --overwrite (.NAME.replaced). Give a "
                          "name such as `fm-vaes`, and --out-root for another place.")
    return Path(out_root) / name


# the claims (lock, folder kept aside) _prepare_folder takes for the run_compare in progress
_CLAIMS: ContextVar[list[Claim] | None] = ContextVar("genlab_compare_claims", default=None)


def _holding_folder(fn: Callable[..., CompareResult]) -> Callable[..., CompareResult]:
    """``run_compare`` holds its folder's lock (taken in ``_prepare_folder``) until it returns, however it
    returns; once it has written the results, a comparison that --overwrite replaced is deleted."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> CompareResult:
        claims: list[Claim] = []
        token = _CLAIMS.set(claims)
        try:
            result = fn(*args, **kwargs)
            for claim in claims:
                claim.saved()
            return result
        finally:
            _CLAIMS.reset(token)
            for claim in claims:
                claim.release()
    return wrapper


def _prepare_folder(folder: Path, settings: dict[str, Any], overwrite: bool) -> Claim:
    """Create (an exclusive mkdir) or reuse the comparison folder, lock it, and write its compare.json.

    A folder holding files is reused only when it is a genlab comparison (its compare.json has the
    settings format) made with the same settings; with ``overwrite`` one made with other settings (or
    the same) is replaced: moved aside and deleted once the new comparison's results are written
    (``genlab.training.lock``). Nothing is written into a folder that is not a comparison. The lock
    is held until ``run_compare`` returns (``_holding_folder``)."""
    marker = folder / "compare.json"
    if folder.is_symlink():
        raise GenlabError(f"{folder} is a symbolic link; a comparison folder is a plain folder inside --out-root. "
                          "Choose another --name.")
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise GenlabError(f"{folder} is a file, not a comparison folder; choose another --name or "
                              "--out-root.") from None
        if holds_files(folder) and not is_kind(folder, COMPARE_KIND):
            raise GenlabError(f"{folder} exists and is not a genlab comparison (no compare.json of format "
                              f"{SETTINGS_FORMAT!r}); choose another --name or --out-root.") from None
    except OSError as e:
        raise GenlabError(f"cannot create the comparison folder {folder} ({e.strerror}); choose another "
                          "--out-root.") from None
    lock = FolderLock(folder, "comparison folder").acquire()
    try:
        claim = None
        if holds_files(folder):  # (looked at again now that no other writer can change it)
            old = _read_json(marker) if is_kind(folder, COMPARE_KIND) else None
            if old is None:
                raise GenlabError(f"{folder} is not a genlab comparison (no compare.json of format "
                                  f"{SETTINGS_FORMAT!r}); choose another --name or --out-root.")
            if old != settings and not overwrite:
                diff = [k for k in settings if old.get(k) != settings[k]]
                raise GenlabError(f"{folder} holds a comparison with other {', '.join(diff)} "
                                  f"({', '.join(f'{k}: {old.get(k)}' for k in diff)}). Choose another --name, or pass "
                                  "--overwrite to delete it and start over.")
            if overwrite:
                claim = replace_folder(lock, COMPARE_KIND)
        if claim is None:
            remove_orphan_tmp(folder, recursive=False)
            claim = Claim(lock, settle_leftover(lock, COMPARE_KIND))
    except BaseException:
        lock.release()
        raise
    claims = _CLAIMS.get()
    if claims is not None:
        claims.append(claim)
    try:
        atomic_write_json(marker, settings)
    except BaseException:
        if claims is None:
            claim.release()
        raise
    return claim


# ----------------------------------------------------------------------------- training


def _training_record(state: Any) -> dict[str, Any]:
    """The checkpoint's training counters as the results report them: finite non-negative numbers, or
    absent (a checkpoint's metadata is a file like any other and may have been edited)."""
    out: dict[str, Any] = {}
    if not isinstance(state, dict):
        return out
    for key, kind in (("train_seconds", float), ("images_seen", int), ("step", int), ("epoch", int)):
        v = state.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
            out[key] = kind(v)
    return out


def _train_preset(spec: ModelSpec, data: tuple[str, int | None, int | None], data_dir: str | None, budget: Budget,
                  seed: int, device: str, progress: bool, log: Callable[[str], None]) -> None:
    """Train (or resume, or leave alone when its budget is spent) the run of a preset."""
    from ..api import resume, train
    from ..models.registry import resolve
    from ..training.trainer import TrainConfig

    batch_size = TrainConfig(**resolve(spec.preset).train).batch_size
    overrides = budget.train_overrides(batch_size)
    run = Run(spec.run_dir)
    state = run.checkpoint_state()
    if state is not None:
        if budget.is_spent(state, run.config["train"]):
            log(f"== {spec.tag}: trained ({budget.describe()}), reusing {spec.run_dir}")
            return
        log(f"== {spec.tag}: resuming {spec.run_dir} at step {state['step']} ({budget.describe()})")
        result = resume(spec.run_dir, epochs=overrides["epochs"], max_steps=overrides.get("max_steps"),
                        max_seconds=overrides.get("max_seconds"), device=device, progress=progress)
    else:
        # a folder without checkpoint is a start that died before its first save: nothing to keep
        log(f"== {spec.tag}: training on {data[0]} ({budget.describe()}, seed {seed}) -> {spec.run_dir}")
        result = train(spec.preset, data[0], out=spec.run_dir, seed=seed, data_dir=data_dir, image_size=data[1],
                       channels=data[2], device=device, progress=progress, overwrite=spec.run_dir.exists(),
                       **overrides)
    if result.status == "interrupted":
        log(f"stopped while training {spec.tag} (checkpoint saved); run the same command again to continue.")
        raise KeyboardInterrupt
    st = result.state
    log(f"   {spec.tag}: {st.step} steps, {st.images_seen:,} images, {st.train_seconds:.1f} s of training")


# ----------------------------------------------------------------------------- evaluation


def _usable(ev: Any, evaluator_id: tuple[str, str], samples: int, seed: int,
            likelihood_k: int | None, has_likelihood: bool, path: Path | None = None) -> bool:
    """Whether an existing evaluation was made exactly the way this comparison evaluates: with the same
    evaluator (fingerprint and weights: ``evaluator_id``), sample count, seed and likelihood - for a model
    that ``has_likelihood`` (the VAEs; not the GANs or the VAE-GAN) with its per-image likelihoods beside
    ``path``, which the paired comparison of likelihoods reads.
    Whether its values are well-formed is checked apart, by :func:`checked_evaluation`."""
    if not isinstance(ev, dict) or ev.get("format") != "genlab-eval-1":
        return False
    p = ev.get("protocol")
    if not isinstance(p, dict):
        return False
    made_by = (p.get("evaluator_fingerprint"), p.get("evaluator_weights_sha256"))
    if (made_by != evaluator_id or p.get("n_samples") != samples or p.get("seed") != seed
            or p.get("reference") != "test"):
        return False
    lk = ev.get("likelihood")
    if lk is not None and not isinstance(lk, dict):
        return False
    if lk and not has_likelihood:  # a GAN's evaluation has no likelihood: this file was not made by genlab eval
        return False
    if lk and lk.get("binarized"):
        return False
    if has_likelihood and likelihood_k is not None and not (lk and lk.get("k") == likelihood_k
                                                         and lk.get("nll_iwae") is not None):
        return False
    if has_likelihood and path is not None:
        file = likelihood_file_for(path)
        return (bool(lk) and lk.get("per_image_file") == file.name
                and _per_image(file, lk.get("n_images")) is not None)
    return True


def bare_file_name(name: Any) -> bool:
    """Whether ``name`` (read from a JSON file) is a plain file name: no folder part, no ``..``, nothing
    that would make a path reach outside the folder it is joined to."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..")
            and not any(c in name for c in "/\\\0:") and Path(name).name == name)


# what an evaluation's values must be (eval.metrics / eval.likelihood): everything the results table,
# the summary and the report read from a reused file is a finite number of the right kind
_METRICS: dict[str, Any] = {
    "fid": float, "kid": float, "precision": float, "recall": float, "density": float, "coverage": float,
    "classes_covered": int, "num_classes": int, "class_histogram": list[int],
    "kid_std": float | None, "inception_score": float | None, "kid_subset_size": int | None,
    "kid_subsets": int | None, "prdc_k": int | None, "class_coverage_rule": str | None, "memorization": dict | None,
}
_REQUIRED_METRICS = ("fid", "kid", "precision", "recall", "density", "coverage", "classes_covered", "num_classes",
                     "class_histogram")
_MEMORIZATION: dict[str, Any] = {
    "median_sample_to_train": float, "median_test_to_train": float, "test_to_train_p1": float,
    "fraction_closer_than_test_p1": float, "space": str | None, "n_samples_checked": int | None,
    "n_test_checked": int | None,
}
_LIKELIHOOD: dict[str, Any] = {
    "units": str, "n_images": int, "k": int, "binarized": bool, "binarize_seed": int | None, "likelihood": str,
    "elbo": float, "neg_elbo": float, "nll_iwae": float | None, "nll_iwae_stderr": float | None,
    "bits_per_dim": float | None, "reference": str | None, "per_image_file": str | None,
}
_REQUIRED_LIKELIHOOD = ("units", "n_images", "k", "neg_elbo")


def _checked_block(block: Any, schema: dict[str, Any], required: tuple[str, ...], what: str) -> dict[str, Any]:
    from ..configcheck import coerce

    if not isinstance(block, dict):
        raise ValueError(f"{what} is not a JSON object")
    missing = [k for k in required if block.get(k) is None]
    if missing:
        raise ValueError(f"{what} has no {', '.join(missing)}")
    out = {}
    for key, hint in schema.items():
        if key in block:
            try:
                out[key] = coerce(block[key], hint)
            except ValueError as e:
                raise ValueError(f"{what}.{key}: {e}") from None
    return out


def checked_evaluation(ev: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """A copy of an evaluation read from a file whose metrics and likelihood hold only what genlab writes
    there, each coerced to a finite number of its kind (lists of ints for the class histogram, a bare
    file name for the per-image likelihoods); a ValueError naming the first value that is not."""
    metrics = _checked_block(ev.get("metrics"), _METRICS, _REQUIRED_METRICS, "metrics")
    k, hist = metrics["num_classes"], metrics["class_histogram"]
    if k != num_classes or len(hist) != k or any(c < 0 for c in hist) or not 0 <= metrics["classes_covered"] <= k:
        raise ValueError(f"metrics: the class counts do not fit the dataset's {num_classes} classes")
    if metrics.get("memorization") is not None:
        metrics["memorization"] = _checked_block(metrics["memorization"], _MEMORIZATION,
                                                 tuple(k for k, h in _MEMORIZATION.items() if h is float),
                                                 "metrics.memorization")
    out = {**ev, "metrics": metrics}
    if ev.get("likelihood") is not None:
        lk = _checked_block(ev["likelihood"], _LIKELIHOOD, _REQUIRED_LIKELIHOOD, "likelihood")
        if lk.get("per_image_file") is not None and not bare_file_name(lk["per_image_file"]):
            raise ValueError(f"likelihood.per_image_file {lk['per_image_file']!r} is not a plain file name")
        out["likelihood"] = lk
    return out


def _per_image(path: Path, n_images: int | None) -> dict[str, Any] | None:
    """The per-image likelihoods in ``path``, or None when the file is missing, unreadable (a torn or
    foreign file: the evaluation is then redone and the file rewritten) or of another length."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not isinstance(n_images, int) or isinstance(n_images, bool) or n_images < 1:
        return None
    try:
        if path.stat().st_size > 64 * 1024 + 16 * 8 * n_images:  # a few float64 vectors and a header, no more
            return None
        tensors = load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError):
        return None
    if "neg_elbo" not in tensors or any(t.dim() != 1 or t.numel() != n_images for t in tensors.values()):
        return None
    return tensors


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8")) if path.is_file() else None
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON: evaluated again
        return None


def _evaluate(spec: ModelSpec, folder: Path, evaluator_id: tuple[str, str], samples: int, seed: int,
              likelihood_k: int | None, has_likelihood: bool, num_classes: int, progress: bool,
              log: Callable[[str], None]) -> tuple[dict[str, Any], Path, str | None]:
    """The evaluation of one model: reused when usable, else computed. Runs trained by the comparison keep
    it in their eval.json; reused run folders are never written into (it goes to evals/<tag>.json).

    Returns (evaluation, its file, where it was reused from: "comparison" for a file this comparison
    wrote earlier, "run folder" for the eval.json of a run folder given in --models, None when computed
    now). A reused file's values are checked (:func:`checked_evaluation`); one that fails is recomputed."""
    from ..eval.report import evaluate_run

    own = spec.source == "preset"
    run_eval = Run(spec.run_dir).eval_path
    target = run_eval if own else folder / "evals" / f"{spec.tag}.json"
    candidates = [target] if own else [target, run_eval]
    for path in candidates:
        ev = _read_json(path)
        if not _usable(ev, evaluator_id, samples, seed, likelihood_k, has_likelihood, path):
            continue
        try:
            ev = checked_evaluation(ev, num_classes)
        except ValueError as e:
            log(f"== {spec.tag}: the evaluation in {path} is malformed ({e}); evaluating again")
            continue
        log(f"== {spec.tag}: evaluation reused from {path}")
        return ev, path, ("comparison" if path == target else "run folder")
    log(f"== {spec.tag}: evaluating ({samples} samples{'' if likelihood_k is None else f', IWAE k={likelihood_k}'})")
    ev = evaluate_run(spec.run_dir, n_samples=samples, seed=seed, likelihood_k=likelihood_k, progress=progress,
                      write=own, per_image_path=likelihood_file_for(target))
    if not own:
        atomic_write_json(target, ev)
    return ev, target, None


def paired_likelihoods(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The likelihood of each VAE against the best one's, image by image on the same test images.

    Each model's mean NLL has a standard error of about 0.76 nats on Fashion-MNIST, almost all of it the
    spread between images (some garments cost far more nats than others, for every model). Scored on the
    same images, the difference of two models is far surer than those two errors suggest: the paired
    standard error is that of the mean of the per-image differences. Reads the per-image files the
    evaluations wrote; a model whose file is missing or of another length is left out."""
    values: dict[str, Any] = {}
    for m in entries:
        lk = m.get("likelihood")
        if not lk or not lk.get("per_image_file"):
            continue
        if not bare_file_name(lk["per_image_file"]):  # never a path out of the evaluation's folder
            continue
        key = "nll_iwae" if lk.get("nll_iwae") is not None else "neg_elbo"
        tensors = _per_image(Path(m["eval_file"]).parent / lk["per_image_file"], lk.get("n_images"))
        if tensors is not None and key in tensors:
            values[m["name"]] = (key, tensors[key].double())
    names = sorted(values, key=lambda n: float(values[n][1].mean()))
    if len(names) < 2:
        return []
    best = names[0]
    key, ref = values[best]
    pairs = []
    for other in names[1:]:
        okey, v = values[other]
        if okey != key or v.shape != ref.shape:
            continue
        d = v - ref
        pairs.append({"better": best, "other": other, "measure": key, "n_images": int(d.numel()),
                      "difference": float(d.mean()), "stderr": float(d.std() / math.sqrt(d.numel())),
                      "fraction_of_images_better": float((d > 0).double().mean())})
    return pairs


def _likelihood_entry(lk: dict[str, Any] | None, likelihood_k: int | None) -> dict[str, Any] | None:
    """The likelihood block as this comparison reports it: every VAE by the same estimate (IWAE with k when
    --likelihood-k is given, else the ELBO), so a reused run's extra IWAE number does not mix protocols."""
    if not lk:
        return None
    if likelihood_k is None and lk.get("nll_iwae") is not None:
        return {**lk, "k": 1, "nll_iwae": None, "nll_iwae_stderr": None}
    return dict(lk)


# ----------------------------------------------------------------------------- the command


DEFAULT_BUDGET = "5m"  # per model when presets are trained: a laptop-CPU comparison in well under an hour


@dataclass
class _Plan:
    """What a comparison does, settled before anything is written: the models, the budget (None when every
    model is a reused run), the one dataset and its settings, and how every model is evaluated."""

    specs: list[ModelSpec]
    budget: Budget | None
    dataset: Any
    data: tuple[str, int | None, int | None]  # (dataset name, --image-size, --channels) as trained
    data_dir: str | None
    seed: int
    samples: int
    likelihood_k: int | None


@_holding_folder
def run_compare(models: list[str], data: str | None = None, budget: str | None = None, *, seed: int = 0,
                samples: int = 10_000, likelihood_k: int | None = None, name: str | None = None,
                out_root: str | Path = "compare", overwrite: bool = False, data_dir: str | None = None,
                image_size: int | None = None, channels: int | None = None, device: str = "auto",
                progress: bool = True, log: Callable[[str], None] = print) -> CompareResult:
    """Train (or reuse) every model of ``models`` on the same data under the same ``budget`` and seed,
    evaluate each with the same evaluator and sample count, and write results.json and report.html."""
    from ..eval.evaluator import get_evaluator

    plan = _plan(models, data, budget, seed=seed, samples=samples, likelihood_k=likelihood_k, data_dir=data_dir,
                 image_size=image_size, channels=channels, progress=progress)
    folder = _open_folder(plan, name, out_root, overwrite, log)
    for s in plan.specs:
        if s.source == "preset":
            _train_preset(s, plan.data, plan.data_dir, plan.budget, seed, device, progress, log)
    evaluator = get_evaluator(plan.dataset, progress=progress)
    entries, loaded = _evaluate_models(plan, folder, evaluator, progress, log)
    results = _results(plan, folder, evaluator, entries)
    return _write_results(folder, results, loaded, plan.dataset, evaluator, log)


def _plan(models: list[str], data: str | None, budget: str | None, *, seed: int, samples: int,
          likelihood_k: int | None, data_dir: str | None, image_size: int | None, channels: int | None,
          progress: bool) -> _Plan:
    """Check the evaluation options, read ``--models`` and the budget (``DEFAULT_BUDGET`` when a preset is
    trained and none is given), and load the dataset; a GenlabError before any folder is made."""
    if samples < 2:
        raise GenlabError(f"--samples must be at least 2, got {samples}.")
    if likelihood_k is not None and likelihood_k < 1:
        raise GenlabError(f"--likelihood-k must be at least 1, got {likelihood_k}.")
    specs = parse_models(models)
    run_configs = {s.tag: Run(s.run_dir).config for s in specs if s.source == "run"}
    if budget is None and any(s.source == "preset" for s in specs):
        budget = DEFAULT_BUDGET
    the_budget = parse_budget(budget) if budget is not None else None
    dataset, the_data, data_dir = _comparison_data(run_configs, data, data_dir, image_size, channels, progress)
    return _Plan(specs, the_budget, dataset, the_data, data_dir, seed, samples, likelihood_k)


def _comparison_data(run_configs: dict[str, dict[str, Any]], data: str | None, data_dir: str | None,
                     image_size: int | None, channels: int | None, progress: bool) -> tuple[Any, tuple, str | None]:
    """One dataset for all: --data, else the reused runs' own (the first one's, with its --data-dir unless
    one is given); every reused run must have been trained on it. Returns (dataset, (name, image_size,
    channels), data_dir)."""
    from ..data import load_dataset

    if data is None and run_configs:
        first = next(iter(run_configs.values()))
        data, image_size, channels = _run_data(first)
        data_dir = data_dir or first["data"].get("data_dir")
    dataset = load_dataset(data or "digits", data_dir=data_dir, image_size=image_size, channels=channels,
                           progress=progress)
    the_data = (dataset.name, image_size, channels)
    for tag, config in run_configs.items():
        if _run_data(config) != the_data or list(config["data"]["image_shape"]) != list(dataset.image_shape):
            raise GenlabError(f"the models are on different datasets: run {tag} was trained on "
                              f"{_describe_data(*_run_data(config))}, the comparison is on {_describe_data(*the_data)}. "
                              "Compare runs of the same data (or pass the matching --data).")
    return dataset, the_data, data_dir


def _open_folder(plan: _Plan, name: str | None, out_root: str | Path, overwrite: bool,
                 log: Callable[[str], None]) -> Path:
    """Make (or reuse, or with ``overwrite`` replace) the comparison folder and place each preset's run
    folder inside it, under runs/<tag>."""
    folder = comparison_folder(out_root, default_name(plan.dataset.name, plan.specs, plan.budget, plan.seed)
                               if name is None else name)
    inside = [s for s in plan.specs if s.source == "run" and folder.resolve() in s.run_dir.resolve().parents]
    if inside and overwrite:
        raise GenlabError(f"--overwrite would delete {folder}, which holds the run {inside[0].run_dir} given in "
                          "--models; choose another --name.")
    _prepare_folder(folder, _settings(plan.data, plan.specs, plan.budget, plan.seed), overwrite)
    for s in plan.specs:
        if s.source == "preset":
            s.run_dir = folder / "runs" / s.tag
    log(f"comparison folder: {folder}")
    return folder


def _evaluate_models(plan: _Plan, folder: Path, evaluator: Any, progress: bool,
                     log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate every model alike (:func:`_evaluate`). Returns each model's entry of results.json and the
    loaded models by tag, which the report draws its pictures with."""
    entries, loaded = [], {}
    for s in plan.specs:
        run = Run(s.run_dir)
        model = run.load_model()
        loaded[s.tag] = model
        ev, ev_path, reused_from = _evaluate(s, folder, (evaluator.fingerprint, evaluator.weights_sha256),
                                             plan.samples, plan.seed, plan.likelihood_k, model.has_likelihood,
                                             plan.dataset.num_classes, progress, log)
        entries.append(_model_entry(s, run, model, ev, ev_path, reused_from, plan.likelihood_k))
    return entries, loaded


def _model_entry(s: ModelSpec, run: Run, model: Any, ev: dict[str, Any], ev_path: Path, reused_from: str | None,
                 likelihood_k: int | None) -> dict[str, Any]:
    """One model's entry of results.json: where it comes from, its size, its training counters (from its
    checkpoint), its metrics and likelihood, and where its evaluation was read or written."""
    state = _training_record(run.checkpoint_state())
    secs, images = state.get("train_seconds"), state.get("images_seen")
    return {
        "name": s.tag, "source": s.source, "preset": s.preset, "run_dir": str(s.run_dir),
        "model": run.config.get("model"), "family": model.family,
        "conditional": model.conditional, "latent_dim": model.latent_dim,
        "parameters": model.parameter_count(), "seed": run.config["train"].get("seed"),
        "train_seconds": secs, "images_seen": images, "steps": state.get("step"),
        "epochs_completed": state.get("epoch"),
        "img_per_s": (images / secs) if secs and images else None,
        "metrics": ev["metrics"], "likelihood": _likelihood_entry(ev.get("likelihood"), likelihood_k),
        "eval_file": str(ev_path),
        "evaluation": {"reused": reused_from is not None, "reused_from": reused_from},
    }


def _results(plan: _Plan, folder: Path, evaluator: Any, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json (format genlab-compare-1): the settings every model was trained and evaluated under, the
    models' entries, the paired likelihood comparison and the summary's sentences."""
    dataset, (_, image_size, channels) = plan.dataset, plan.data
    budget_info = None if plan.budget is None else plan.budget.as_dict()
    results = {
        "format": RESULTS_FORMAT,
        "name": folder.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"data": dataset.name, "image_size": image_size, "channels": channels,
                     "image_shape": list(dataset.image_shape), "num_classes": dataset.num_classes,
                     "class_names": dataset.class_names, "budget": budget_info, "seed": plan.seed,
                     "samples": plan.samples, "likelihood_k": plan.likelihood_k, "reference": "test",
                     "evaluator_fingerprint": evaluator.fingerprint,
                     "evaluator_weights_sha256": evaluator.weights_sha256,
                     "evaluator_test_accuracy": evaluator.info.get("test_accuracy"),
                     "feature_space": evaluator.describe()},
        "models": entries,
    }
    results["paired_likelihood"] = paired_likelihoods(entries)
    results["summary"] = summarize(entries, budget_info, dataset.class_names, results["paired_likelihood"])
    return results


def _write_results(folder: Path, results: dict[str, Any], loaded: dict[str, Any], dataset: Any, evaluator: Any,
                   log: Callable[[str], None]) -> CompareResult:
    """Build the report (before anything is written, so a failure leaves the folder as it was) and write
    results.json and report.html atomically."""
    from .report import build_report

    results_path = folder / "results.json"
    report_path = folder / "report.html"
    log("== writing the report")
    html = build_report(results, loaded, dataset, evaluator)
    atomic_write_json(results_path, results)
    atomic_write_bytes(report_path, html.encode("utf-8"))
    return CompareResult(folder, results, results_path, report_path)


# ----------------------------------------------------------------------------- terminal table


def format_results(results: dict[str, Any]) -> str:
    """The results as a plain-text table (like ``genlab eval --calibrate``), with the protocol line above it."""
    from ..eval.report import text_table

    s = results["settings"]
    budget = s["budget"]["description"] if s["budget"] else "runs reused as they are"
    lines = [f"data {s['data']}; {budget}; seed {s['seed']}",
             (f"evaluator {s['evaluator_fingerprint'][:12]}, weights {s.get('evaluator_weights_sha256', '?')[:12]} "
              f"({s['feature_space']}); {s['samples']} samples per model "
             f"vs the {s['reference']} split"), ""]
    header = ["model", "family", "FID", "KID", "prec", "recall", "cover", "classes", "NLL", "train s", "img/s",
              "params"]
    body = []
    for m in results["models"]:
        mm = m["metrics"]
        nll = "n/a" if not m["likelihood"] else f"{nll_value(m['likelihood'])[0]:.1f}"
        mark = " (reused)" if (m.get("evaluation") or {}).get("reused_from") == "run folder" else ""
        body.append([m["name"] + mark, m["family"], f"{mm['fid']:.2f}", f"{mm['kid']:.4f}", f"{mm['precision']:.3f}",
                     f"{mm['recall']:.3f}", f"{mm['coverage']:.3f}", f"{mm['classes_covered']}/{mm['num_classes']}",
                     nll, "-" if m["train_seconds"] is None else f"{m['train_seconds']:.{0 if m['train_seconds'] >= 10 else 1}f}",
                     "-" if m["img_per_s"] is None else f"{m['img_per_s']:,.0f}", f"{m['parameters']:,}"])
    lines.append(text_table(header, body, left=2))
    if any(m["likelihood"] for m in results["models"]):
        k = s["likelihood_k"]
        lines.append(f"NLL: {'IWAE estimate, k=' + str(k) if k else 'negative test ELBO (an upper bound)'}, "
                     "nats/image; GANs have none.")
    if any((m.get("evaluation") or {}).get("reused_from") == "run folder" for m in results["models"]):
        lines.append("(reused): evaluation read from the eval.json of a run folder given in --models, not computed "
                     "by this comparison.")
    lines += [""] + [f"- {x}" for x in results["summary"]]
    return "\n".join(lines)
