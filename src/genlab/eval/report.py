"""Evaluate a run folder or an .npz of samples, write RUN/eval.json, and format results as text."""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_tensors

from ..errors import DataError, GenlabError
from ..fileio import atomic_write_bytes, atomic_write_json
from ..training.run import Run, likelihood_file_for  # noqa: F401 - likelihood_file_for: also reached from here
from .evaluator import get_evaluator
from .metrics import evaluate_images

EVAL_FORMAT = "genlab-eval-1"


@torch.no_grad()
def sample_model(model, n: int, seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
    """``n`` samples (float in [0, 1], on CPU) from a seeded CPU generator, in batches."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        out.append(model.sample(min(batch_size, n - i), generator=gen).float().cpu().clamp_(0, 1))
    return torch.cat(out)


def inception_block(samples: torch.Tensor, dataset, reference: str = "test", n_reference: int = 10_000
                    ) -> dict[str, Any]:
    """FID and KID of ``samples`` (float in [0, 1]) in Inception-v3 features against the first
    ``n_reference`` images of the dataset's ``reference`` split: the result's ``inception`` block. Needs
    torch-fidelity and the weights on disk (``eval.inception``; never downloaded)."""
    from .inception import inception_fid_kid

    split = dataset.test if reference == "test" else dataset.train
    return inception_fid_kid(samples, split.images[:n_reference].float() / 255)


def evaluate_run(run_dir: str | Path, n_samples: int = 10_000, reference: str = "test", seed: int = 0,
                 likelihood_k: int | None = None, binarize: bool = False, progress: bool = True,
                 cache_dir: str | Path | None = None, write: bool = True,
                 per_image_path: str | Path | None = None, inception: bool = False) -> dict[str, Any]:
    """Sample ``n_samples`` images from a run's model, score them against the dataset's ``reference`` split
    in the evaluator's feature space, add VAE likelihoods (ELBO always; IWAE NLL when ``likelihood_k``
    is given), write ``RUN/eval.json`` atomically and return the result.

    A VAE's per-image likelihoods go to ``per_image_path`` (safetensors; by default, when ``write``,
    ``RUN/eval.likelihood.safetensors``), named in the result's ``likelihood.per_image_file`` relative to
    the folder of the JSON beside it; written before the JSON, so a JSON that names it finds it.
    ``inception`` adds FID/KID in Inception features (:func:`inception_block`, against ``n_samples``
    reference images) as the result's ``inception`` block; it is checked to be available first."""
    from .likelihood import vae_likelihood

    if n_samples < 2:
        raise GenlabError(f"n_samples must be at least 2, got {n_samples}.")
    if inception:
        from .inception import check_inception_available

        check_inception_available()  # before minutes of work, not after
    t0 = time.perf_counter()
    run = Run(run_dir)
    model = run.load_model()
    dataset = run.dataset(progress=progress)
    evaluator = get_evaluator(dataset, progress=progress, cache_dir=cache_dir)
    t1 = time.perf_counter()
    samples = sample_model(model, n_samples, seed)
    result = evaluate_images(samples, dataset, evaluator, reference=reference, seed=seed)
    t2 = time.perf_counter()
    if model.has_likelihood:
        per_image: dict[str, torch.Tensor] = {}
        result["likelihood"] = vae_likelihood(model, dataset.test.images, k=likelihood_k or 1, binarize=binarize,
                                              seed=seed, progress=progress, labels=dataset.test.labels,
                                              per_image=per_image)
        if per_image_path is None and write:
            per_image_path = run.likelihood_path
        if per_image_path is not None:
            per_image_path = Path(per_image_path)
            atomic_write_bytes(per_image_path, save_tensors({k: v.contiguous() for k, v in per_image.items()},
                                                            metadata={"units": "nats/image", "order": "test split"}))
            result["likelihood"]["per_image_file"] = per_image_path.name
    t3 = time.perf_counter()
    config = run.config
    result["run"] = {"run_dir": str(run.folder), "model": config.get("model"), "name": config.get("name"),
                     "data": config["data"].get("spec")}
    result["format"] = EVAL_FORMAT
    result["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    result["timings_s"] = {"load_and_evaluator": round(t1 - t0, 2), "sample_metrics": round(t2 - t1, 2),
                           "likelihood": round(t3 - t2, 2)}
    if inception:
        result["inception"] = inception_block(samples, dataset, reference, n_samples)
    if write:
        atomic_write_json(run.eval_path, result)
    return result


_SAVE_SAMPLES = ("Save samples with numpy.savez(path, images=samples) or `genlab sample RUN -n N -o samples.npz`.")


def save_npz_images(images: torch.Tensor, path: str | Path) -> None:
    """Write samples as the .npz that ``genlab eval --samples`` and ``npz:PATH`` data read: 'images', float32
    in [0, 1], (N, C, H, W); written whole or not at all (a full disk leaves no torn file)."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, images=images.numpy().astype(np.float32, copy=False))
    atomic_write_bytes(Path(path), buf.getbuffer())


def _load_npz_images(path: Path) -> torch.Tensor:
    """The 'images' array of a samples .npz, read with the dataset reader's checks (regular file, zip,
    each .npy header against the zip directory and the memory limit before anything is inflated)."""
    from ..data.npz import open_npz

    with open_npz(path, "sample file", _SAVE_SAMPLES) as z:
        if "images" not in z:
            raise DataError(f"{path} has no 'images' array (it has: {', '.join(z.files) or 'nothing'}). "
                            + _SAVE_SAMPLES)
        arr = z.get("images", copies=3)  # as stored, then float32 (twice while it is clipped)
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path}: 'images' has dtype {arr.dtype}; use float in [0, 1] or uint8 0..255.")
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.copy())
    arr = arr.astype(np.float32)
    if arr.size and (not np.isfinite(arr).all() or arr.min() < -1e-3 or arr.max() > 1 + 1e-3):
        raise DataError(f"{path}: float 'images' must lie in [0, 1] and be finite (found {arr.min():.3g}.."
                        f"{arr.max():.3g}); divide uint8 pixels by 255.")
    return torch.from_numpy(np.clip(arr, 0.0, 1.0))


def evaluate_npz(path: str | Path, data_spec: str, reference: str = "test", seed: int = 0,
                 data_dir: str | Path | None = None, progress: bool = True, cache_dir: str | Path | None = None,
                 out: str | Path | None = None, inception_reference: int | None = None) -> dict[str, Any]:
    """Score the samples in an .npz (key ``images``, (N, C, H, W), float in [0, 1] or uint8) against the
    dataset ``data_spec``. Writes the result to ``out`` (a .json path) if given. ``inception_reference``:
    also FID/KID in Inception features against that many reference images (:func:`inception_block`)."""
    from ..data import load_dataset

    if inception_reference is not None:
        from .inception import check_inception_available

        check_inception_available()
    path = Path(path)
    images = _load_npz_images(path)
    dataset = load_dataset(data_spec, data_dir=data_dir, progress=progress)
    want = tuple(dataset.image_shape)
    if images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise GenlabError(f"{path}: 'images' has shape {tuple(images.shape)}, but {dataset.name} images have shape "
                          f"(N, {', '.join(map(str, want))}); save samples as (N, C, H, W) = (N, "
                          f"{', '.join(map(str, want))}).")
    if images.shape[0] < 2:
        raise GenlabError(f"{path} holds {images.shape[0]} image(s); at least 2 are needed.")
    evaluator = get_evaluator(dataset, progress=progress, cache_dir=cache_dir)
    result = evaluate_images(images, dataset, evaluator, reference=reference, seed=seed)
    if inception_reference is not None:
        float_images = images.float() / 255 if images.dtype == torch.uint8 else images
        result["inception"] = inception_block(float_images, dataset, reference, inception_reference)
    result["samples"] = {"path": str(path)}
    result["format"] = EVAL_FORMAT
    if out is not None:
        atomic_write_json(Path(out), result)
    return result


# ----------------------------------------------------------------------------- text tables

_COLUMNS = [("fid", "FID", "{:.2f}"), ("kid", "KID", "{:.4f}"), ("inception_score", "IS", "{:.2f}"),
            ("precision", "prec", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("density", "density", "{:.3f}"),
            ("coverage", "cover", "{:.3f}"), ("classes_covered", "classes", "{}")]


def _fmt(v, spec: str) -> str:
    return "-" if v is None else spec.format(v)


def format_table(result: dict[str, Any]) -> str:
    """A plain-text summary of an evaluate_run / evaluate_npz / evaluate_images result."""
    p, m = result["protocol"], result["metrics"]
    lines = [f"feature space: {p['feature_space']}",
             f"evaluator {p['evaluator_fingerprint'][:12]}, weights {p.get('evaluator_weights_sha256', '?')[:12]}"
             f" (test accuracy {_fmt(p.get('evaluator_test_accuracy'), '{:.4f}')});"
             f" {p['n_samples']} samples vs {p['reference_size']} {p['reference']} images; seed {p['seed']}", ""]
    rows = [("FID", _fmt(m["fid"], "{:.3f}")),
            ("KID", f"{m['kid']:.5f} +- {m['kid_std']:.5f} (subsets of {m['kid_subset_size']})"),
            ("Inception Score (classifier)", _fmt(m["inception_score"], "{:.3f}")),
            (f"precision / recall (k={m['prdc_k']})", f"{m['precision']:.3f} / {m['recall']:.3f}"),
            ("density / coverage", f"{m['density']:.3f} / {m['coverage']:.3f}"),
            ("classes covered", f"{m['classes_covered']} of {m['num_classes']}"),
            ("predicted-class histogram", " ".join(str(c) for c in m["class_histogram"]))]
    mem = m.get("memorization")
    if mem:
        rows += [("median NN distance to train", f"samples {mem['median_sample_to_train']:.3f}, "
                                                 f"test images {mem['median_test_to_train']:.3f} ({mem['space']})"),
                 ("samples nearer than test p1", f"{mem['fraction_closer_than_test_p1']:.3f} (expect ~0.01)")]
    lk = result.get("likelihood")
    if lk:
        rows.append((f"test ELBO ({lk['units']})", f"{lk['elbo']:.3f}  [{lk['likelihood']}]"))
        if lk.get("nll_iwae") is not None:
            rows.append((f"IWAE NLL, k={lk['k']}", f"{lk['nll_iwae']:.3f} +- {lk['nll_iwae_stderr']:.3f}"))
        if lk.get("bits_per_dim") is not None:
            rows.append(("bits/dim", f"{lk['bits_per_dim']:.4f}"))
    width = max(len(r[0]) for r in rows)
    lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines)


def format_calibration(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of calibrate() rows: one line per reference image set."""
    header = ["set", "n"] + [c[1] for c in _COLUMNS] + ["memorised"]
    body = []
    for r in rows:
        m = r["metrics"]
        mem = m.get("memorization", {}).get("fraction_closer_than_test_p1")
        body.append([r["name"], str(r["n"])] + [_fmt(m.get(k), spec) for k, _, spec in _COLUMNS]
                    + [_fmt(mem, "{:.3f}")])
    return text_table(header, body)


def text_table(header: list[str], body: list[list[str]], left: int = 1) -> str:
    """Rows of cells as aligned plain text: the header, a rule of dashes, then the rows; the first
    ``left`` columns (names) aligned left, the others (numbers) right. Used by ``genlab eval --calibrate``
    and ``genlab compare``."""
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(row) for row in body])
