"""The comparison as one self-contained HTML page: every picture a base64 PNG data URI, CSS inline,
no scripts, fonts or links to fetch, so it reads the same offline, attached to a mail or archived.

Layout: the settings, the results table, the summary in words, how to read the numbers, then one
section per model: samples at fixed noise, (VAEs) originals beside reconstructions, a latent
interpolation strip, training curves, samples over training time, and the nearest-training-image check.
"""
from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..models.base import as_float_images
from ..training.run import Run
from ..viz import latent
from ..viz.grid import image_grid, paired_rows
from ..viz.plots import loss_curves_png
from .summary import nll_value

GRID_SAMPLES = 64  # images in the fixed-noise grid
RECONSTRUCTIONS = 16
INTERPOLATION_PAIRS = 3
INTERPOLATION_STEPS = 8
PROGRESS_GRIDS = 8  # at most this many per-epoch grids in the "over training time" strip
NEAREST_POOL = 256  # samples searched for the ones nearest to a training image
NEAREST_SHOWN = 8

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.7em;margin:0 0 4px} h2{font-size:1.3em;margin:36px 0 10px;border-bottom:2px solid #dde1e8;
padding-bottom:4px} h3{font-size:1.02em;margin:18px 0 6px}
.meta{color:#5a6275;font-size:.92em;margin:0 0 18px}
table{border-collapse:collapse;background:#fff;font-size:.92em;box-shadow:0 1px 3px #0001}
th,td{padding:6px 10px;border-bottom:1px solid #e6e9ef;text-align:right;white-space:nowrap}
th{background:#eef1f6;font-weight:600} td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}
td.best{font-weight:700;color:#0b6b3a}
ul.summary li{margin:4px 0}
.note{background:#fff;border-left:4px solid #7b93c9;padding:8px 16px;font-size:.9em;color:#333b4d}
section.model{background:#fff;margin:28px 0;padding:4px 22px 18px;box-shadow:0 1px 3px #0001;border-radius:6px}
section.model h2{border:none;margin-top:16px}
.tag{font-size:.65em;font-weight:500;color:#fff;background:#6b7a99;border-radius:4px;padding:2px 7px;
vertical-align:middle} .tag.vae{background:#3a7d5c} .tag.gan{background:#a0522d}
.figs{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
figure{margin:0} figcaption{font-size:.84em;color:#4d5568;max-width:430px;margin-top:4px}
img{max-width:100%;image-rendering:pixelated;border:1px solid #e1e4ea;background:#fff}
img.plot{image-rendering:auto}
.strip{display:flex;flex-wrap:wrap;gap:8px} .strip figure{width:124px} .strip img{width:124px}
.strip figcaption{text-align:center}
nav a{margin-right:14px}
"""


def esc(value: Any) -> str:
    """Any value as HTML text: every name, number and string from results.json, a run folder or the
    data goes through this (a reused file may hold markup)."""
    return html.escape(str(value), quote=True)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} src="{data_uri(png)}" alt="{html.escape(alt, quote=True)}">'


def _figure(png: bytes, alt: str, caption: str, cls: str = "") -> str:
    return f"<figure>{_img(png, alt, cls)}<figcaption>{caption}</figcaption></figure>"


def _grid_png(images: torch.Tensor, nrow: int) -> bytes:
    return png_bytes(image_grid(images, nrow=nrow))


# ----------------------------------------------------------------------------- figures per model


def _samples_figure(model, name: str, seed: int) -> tuple[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = model.sample(GRID_SAMPLES, generator=gen).float().cpu().clamp(0, 1)
    noise = ("the same N(0, I) draw for every model with the same latent size" if latent.standard_normal_prior(model)
             else "drawn from this model's learned prior")
    what = "; a conditional model cycles through the classes" if model.conditional else ""
    fig = _figure(_grid_png(images, 8), f"{GRID_SAMPLES} samples of {name}",
                  f"{GRID_SAMPLES} samples at fixed noise (seed {esc(seed)}, {noise}){what}.")
    return fig, images


def _reconstruction_figure(model, dataset) -> str:
    split = latent.image_split(dataset)
    x = as_float_images(split.images[:RECONSTRUCTIONS].clone())
    y = None if split.labels is None else split.labels[:RECONSTRUCTIONS]
    recon = model.reconstruct(x.to(model.device), y.to(model.device) if (y is not None and model.conditional)
                              else None).float().cpu()
    return _figure(_grid_png(paired_rows(x, recon), 8), "test images and their reconstructions",
                   f"The first {RECONSTRUCTIONS} test images (rows 1 and 3) and their reconstructions from the "
                   "posterior mean (rows 2 and 4).")


def _interpolation_figure(model, dataset, seed: int) -> str:
    ends = latent.interpolation_endpoints(model, dataset, INTERPOLATION_PAIRS, torch.Generator().manual_seed(seed))
    what = ("between the posterior means of random test images, shown at both ends (first and last column: "
            "the originals)" if ends.ends is not None else "between random noise vectors from the prior")
    images, per_row = latent.interpolation_images(model, ends.z0, ends.z1, INTERPOLATION_STEPS, ("slerp",),
                                                  labels=ends.labels, ends=ends.ends)
    return _figure(_grid_png(images, per_row), "latent interpolations",
                   f"Spherical interpolation (slerp) in {INTERPOLATION_STEPS} steps {what}; one row per pair.")


def _curves_figure(run: Run) -> str:
    png = loss_curves_png(run.folder, title=f"{run.name}: training curves")
    if png is None:
        return "<p>No training curves: this run's metrics.jsonl holds no logged steps.</p>"
    return _figure(png, "training curves", "Training quantities against epochs, as logged (averages over "
                   "50 steps); orange dots: held-out values at the end of each epoch.", cls="plot")


def _progress_strip(run_dir: Path, epochs_completed: int | None) -> str:
    grids = Run(run_dir).epoch_grids()
    if not grids:
        return "<p>No per-epoch sample grids in this run.</p>"
    n, m = len(grids), min(len(grids), PROGRESS_GRIDS)
    keep = sorted({round(k * (n - 1) / (m - 1)) for k in range(m)}) if m > 1 else [0]  # evenly spaced, ends kept
    cells = []
    for k in keep:
        path = grids[k]
        epoch = int(re.sub(r"\D", "", path.stem) or 0)
        label = f"epoch {epoch}"
        if epochs_completed is not None and epoch > epochs_completed:
            label += " (partial: stopped at the budget)"
        cells.append(_figure(path.read_bytes(), f"samples after {label}", esc(label)))
    return (f'<div class="strip">{"".join(cells)}</div><p class="meta">Samples at the run\'s fixed noise during '
            f"training ({len(keep)} of {n} per-epoch grids).</p>")


@torch.no_grad()
def _nearest_figure(model, dataset, evaluator, metrics: dict[str, Any], seed: int) -> str:
    gen = torch.Generator().manual_seed(seed + 1)
    pool = model.sample(NEAREST_POOL, generator=gen).float().cpu().clamp(0, 1)
    feats = evaluator.features(pool)
    train_feats, _ = evaluator.split_features(dataset, "train")
    d = torch.cdist(feats.float(), train_feats.float())
    dist, idx = d.min(1)
    order = dist.argsort()[:NEAREST_SHOWN]
    samples = pool[order]
    nearest = as_float_images(dataset.train.images[idx[order]].clone())
    mem = metrics.get("memorization") or {}
    ds = ", ".join(f"{v:.2f}" for v in dist[order].tolist())
    ref = ""
    if mem:
        ref = esc(f" For scale: the median distance of test images to their nearest training image is "
                  f"{mem['median_test_to_train']:.2f}, and 1% of test images are nearer than "
                  f"{mem['test_to_train_p1']:.2f} (samples nearer than that: "
                  f"{100 * mem['fraction_closer_than_test_p1']:.1f}% in the evaluation, about 1% expected).")
    return _figure(_grid_png(paired_rows(samples, nearest, per_row=NEAREST_SHOWN), NEAREST_SHOWN),
                   "samples nearest to a training image, above their nearest training images",
                   f"Nearest-training-image check: the {NEAREST_SHOWN} of {NEAREST_POOL} samples nearest to any "
                   f"training image (top row) above that training image (bottom row), by L2 distance in the "
                   f"evaluator's feature space ({ds}).{ref} A copying model would show near-identical pairs.")


def _reused_from(entry: dict[str, Any]) -> str | None:
    ev = entry.get("evaluation")
    return ev.get("reused_from") if isinstance(ev, dict) and ev.get("reused") else None


def _evaluation_note(entry: dict[str, Any]) -> str:
    """Where this model's numbers come from, when they were read from a file instead of computed now."""
    where = _reused_from(entry)
    if where is None:
        return ""
    if where == "run folder":
        return (f'<p class="meta reused">Evaluation <b>reused</b> from <code>{esc(entry.get("eval_file"))}</code>, '
                "a file in the run folder given in --models, not computed by this comparison: its numbers are only "
                "as trustworthy as that file (delete it, or the comparison folder's evals/, to recompute).</p>")
    return (f'<p class="meta reused">Evaluation reused from <code>{esc(entry.get("eval_file"))}</code>, written by an '
            "earlier run of this comparison.</p>")


def model_section(entry: dict[str, Any], model, dataset, evaluator, seed: int) -> str:
    """One model's section: heading, figures, and the figure captions that say how each was made."""
    run = Run(entry["run_dir"])
    run_dir = run.folder
    name = esc(entry["name"])
    family = str(entry["family"])
    samples_fig, _ = _samples_figure(model, run.name, seed)
    parts = [(f'<section class="model" id="model-{name}"><h2>{name} <span class="tag {esc(family)}">'
             f'{esc(family.upper())}</span></h2>'),
             (f'<p class="meta">model {esc(entry["model"])}, {esc(format(entry["parameters"], ","))} parameters, '
             f'latent size {esc(entry["latent_dim"])}; run folder <code>{esc(run_dir)}</code>'
             f'{"" if entry["source"] == "preset" else " (reused as it was)"}.</p>'),
             _evaluation_note(entry),
             "<h3>Samples</h3>", f'<div class="figs">{samples_fig}']
    if model.encodes:
        parts.append(_reconstruction_figure(model, dataset))
    parts.append("</div><h3>Latent interpolation</h3>")
    parts.append(_interpolation_figure(model, dataset, seed))
    parts.append("<h3>Training curves</h3>")
    parts.append(_curves_figure(run))
    parts.append("<h3>Samples over training time</h3>")
    parts.append(_progress_strip(run_dir, entry.get("epochs_completed")))
    parts.append("<h3>Nearest training images</h3>")
    parts.append(_nearest_figure(model, dataset, evaluator, entry["metrics"], seed))
    parts.append("</section>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- the page


_COLUMNS = [  # key, header, format, better ("min", "max" or None)
    ("fid", "FID", "{:.2f}", "min"), ("kid", "KID", "{:.4f}", "min"), ("precision", "precision", "{:.3f}", "max"),
    ("recall", "recall", "{:.3f}", "max"), ("coverage", "coverage", "{:.3f}", "max"),
]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def results_table(results: dict[str, Any]) -> str:
    models = results["models"]
    best = {}
    for key, _, _, better in _COLUMNS:
        values = [m["metrics"][key] for m in models]
        best[key] = (min if better == "min" else max)(values)
    nlls = [nll_value(m["likelihood"])[0] for m in models if m["likelihood"]]
    head = "".join(f"<th>{h}</th>" for h in ["model", "family", "FID &darr;", "KID &darr;", "precision &uarr;",
                                              "recall &uarr;", "coverage &uarr;", "classes", "NLL &darr;",
                                              "training time", "images/s", "parameters"])
    rows = []
    for m in models:
        mm = m["metrics"]
        mark = ""
        if _reused_from(m):
            mark = (' <sup class="reused" title="evaluation reused from a file, not computed by this command">'
                    f'{"&dagger;" if _reused_from(m) == "run folder" else "*"}</sup>')
        cells = [f"<td>{esc(m['name'])}{mark}</td>", f"<td>{esc(str(m['family']).upper())}</td>"]
        for key, _, spec, _ in _COLUMNS:
            cls = ' class="best"' if len(models) > 1 and mm[key] == best[key] else ""
            cells.append(f"<td{cls}>{esc(spec.format(mm[key]))}</td>")
        cells.append(f"<td>{esc(mm['classes_covered'])} / {esc(mm['num_classes'])}</td>")
        if m["likelihood"]:
            v = nll_value(m["likelihood"])[0]
            cls = ' class="best"' if len(nlls) > 1 and v == min(nlls) else ""
            cells.append(f"<td{cls}>{esc(f'{v:.1f}')}</td>")
        else:
            cells.append("<td>n/a</td>")
        cells.append(f"<td>{esc(_duration(m['train_seconds']))}</td>")
        speed = "-" if m["img_per_s"] is None else f"{m['img_per_s']:,.0f}"
        cells.append(f"<td>{esc(speed)}</td>")
        cells.append(f"<td>{esc(format(m['parameters'], ','))}</td>")
        rows.append(f'<tr data-model="{esc(m["name"])}">{"".join(cells)}</tr>')
    notes = []
    if any(_reused_from(m) == "comparison" for m in models):
        notes.append("* evaluation reused from an earlier run of this comparison (same evaluator, samples and seed).")
    if any(_reused_from(m) == "run folder" for m in models):
        notes.append("&dagger; evaluation reused from the eval.json of a run folder given in --models, not computed "
                     "by this comparison: its numbers are only as trustworthy as that file.")
    foot = "".join(f'<p class="meta reused">{n}</p>' for n in notes)
    return f'<table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{foot}'


def how_to_read(results: dict[str, Any]) -> str:
    s = results["settings"]
    k = s["likelihood_k"]
    nll = (f"the importance-weighted estimate with k = {k} (Burda et al. 2015)" if k else
           "the negative test ELBO, an upper bound on the NLL (pass --likelihood-k for the IWAE estimate)")
    acc = s.get("evaluator_test_accuracy")
    acc_text = "" if acc is None else f", test accuracy {acc:.3f}"
    return (
        '<div class="note"><h3>How to read these numbers</h3><ul>'
        "<li><b>FID</b> and <b>KID</b>: distance between samples and real test images; lower is better, 0 is "
        "indistinguishable. Differences of a few percent are within noise.</li>"
        "<li><b>Precision</b> (fidelity): the share of samples that look like some real image. <b>Recall</b> and "
        "<b>coverage</b> (diversity): how much of the real data the samples reach (Kynk&auml;&auml;nniemi et al. "
        "2019; Naeem et al. 2020, k = 5). High precision with low coverage means good pictures of few kinds.</li>"
        "<li><b>Classes</b>: classes the evaluator sees in at least a quarter of their fair share of samples.</li>"
        f"<li><b>NLL</b> (nats per image; VAEs only, GANs define no density): {esc(nll)}.</li>"
        f"<li>All scores are computed in the feature space of genlab's evaluator, a CNN classifier trained on this "
        f"dataset (fingerprint <code>{esc(str(s['evaluator_fingerprint'])[:16])}</code>, weights "
        f"<code>{esc(str(s.get('evaluator_weights_sha256', '?'))[:16])}</code>{esc(acc_text)}), not "
        f"Inception: they compare only with results of the same fingerprint and weights. "
        f"{esc(format(s['samples'], ','))} samples per model against the {esc(s['reference'])} split, seed {esc(s['seed'])}.</li></ul></div>")


def build_report(results: dict[str, Any], models: dict[str, Any], dataset, evaluator) -> str:
    """The whole page for ``results`` (results.json content); ``models`` maps entry names to loaded models."""
    s = results["settings"]
    budget = s["budget"]["description"] if s["budget"] else "runs reused as they were trained"
    title = f"genlab compare: {results['name']}"
    nav = " ".join(f'<a href="#model-{esc(m["name"])}">{esc(m["name"])}</a>' for m in results["models"])
    sections = [model_section(m, models[m["name"]], dataset, evaluator, s["seed"]) for m in results["models"]]
    summary = "".join(f"<li>{esc(x)}</li>" for x in results["summary"])
    shape = "&times;".join(esc(v) for v in s["image_shape"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>{esc(title)}</h1>
<p class="meta">data <b>{esc(s['data'])}</b> ({shape}, {esc(s['num_classes'])} classes); {esc(budget)};
seed {esc(s['seed'])}; {esc(format(s['samples'], ','))} samples per model; created {esc(results['created'])}</p>
<h2>Results</h2>
{results_table(results)}
<h2>What differs</h2>
<ul class="summary" id="summary">{summary}</ul>
{how_to_read(results)}
<h2>Models</h2>
<nav>{nav}</nav>
{chr(10).join(sections)}
<p class="meta">Made by genlab. Everything is in this file; it needs no network.</p>
</main></body></html>
"""
