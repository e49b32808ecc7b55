"""Write docs/presets.md from genlab's registry, so that the page says what the code does.

    python scripts/gen_presets_doc.py            # rewrite docs/presets.md
    python scripts/gen_presets_doc.py --check    # exit 1 (and show the difference) if it is out of date

Every preset's name, model, one-line description, settings and default budget, and every model's
settings with their defaults, are read from ``genlab.models.PRESETS`` and ``genlab.models.MODELS``.
The measured figures are not computed here (they take hours of training): they are the current
measurements of each preset, kept in ``MEASURED`` below with the machine and evaluator weights they
were made with; their history is in docs/lab-notes/. When a preset changes, measure it again and
replace its entry, or delete the entry: a preset without one is listed as "not measured".
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's genlab, whatever is installed

from genlab.models import MODELS, PRESETS  # noqa: E402

OUT = ROOT / "docs" / "presets.md"

# The evaluator trainings the figures were scored with (one fingerprint, 970d88019e83: Fashion-MNIST and the
# evaluator's architecture; the weights differ where it was retrained on another CPU). Its calibration rows
# are the yardstick of each: FID of real training images, of real images blurred by 1 px, of uniform noise.
EVALUATORS = {
    "701fcd8f32d6": "92.53 % test accuracy; FID of real images 0.05, blurred σ = 1 px 31.18, noise 152.07",
    "77766d13b078": "92.49 % test accuracy; FID blurred σ = 1 px 30.12, noise 141.01",
}

# The current measurement of each preset on Fashion-MNIST (`genlab train PRESET --data fashion-mnist`, then
# `genlab eval RUN`: 10,000 samples against the 10,000 test images; `--likelihood-k 100` for an NLL), from
# docs/lab-notes/2026-11-gallery-tuning.md. "budget" is what was trained when it differs from the default.
# nll: IWAE NLL (k = 100) in nats per image; elbo: the test ELBO. Both are the Bernoulli (BCE on grey pixels)
# values, comparable between rows only.
EPYC_1125 = ("2026-11-25", "2-core AMD EPYC", "701fcd8f32d6")
MEASURED: dict[str, list[dict]] = {
    "seed-vae": [dict(when=EPYC_1125, fid=19.26, recall=0.090, classes=9, elbo=-244.23, nll=241.57)] + [
        # the same 14 minutes as mlp-vae-mog below, in the same `genlab compare` runs
        dict(when=("2026-12-03", "2-core AMD EPYC (Zen 2)", "77766d13b078"), fid=fid, recall=recall, classes=10,
             nll=nll, seed=seed, budget="14 minutes (137-153 epochs), fp32")
        for seed, fid, recall, nll in ((0, 13.21, 0.203, 236.03), (1, 12.28, 0.204, 235.82), (2, 12.76, 0.249, 235.23))],
    "seed-gan": [dict(when=EPYC_1125, fid=20.16, recall=0.043, classes=9)],
    "dcgan": [dict(when=("2026-12-02", "2-core AMD EPYC (Zen 5)", "701fcd8f32d6"), fid=10.25, recall=0.679,
                   classes=10, seed=0),
              dict(when=("2026-12-02", "2-core AMD EPYC (Zen 5)", "701fcd8f32d6"), fid=10.29, recall=0.708,
                   classes=10, seed=1)],
    "wgan-gp": [dict(when=("2026-12-02", "2-core AMD EPYC (Zen 4)", "701fcd8f32d6"), fid=17.25, recall=0.359,
                     classes=10)],
    "sngan": [dict(when=EPYC_1125, fid=17.70, recall=0.357, classes=10)],
    "cgan": [dict(when=EPYC_1125, fid=4.98, recall=0.503, classes=10)],
    "conv-vae": [dict(when=EPYC_1125, fid=18.92, recall=0.356, classes=9, elbo=-240.27)],
    "vae-gmm": [dict(when=EPYC_1125, fid=8.66, recall=0.443, classes=9, elbo=-244.40, nll=239.33,
                     note="mixture fitted with scikit-learn's EM then; genlab's own EM since")],
    "mlp-vae-gmm": [dict(when=("2026-12-02", "2-core AMD EPYC (Zen 5)", "701fcd8f32d6"), fid=8.13, elbo=-238.15,
                         nll=235.13, budget="5 minutes (about 50 epochs), bf16")],
    "mlp-vae-mog": [dict(when=("2026-12-03", "2-core AMD EPYC (Zen 2)", "77766d13b078"), fid=fid, recall=recall,
                         classes=10, nll=nll, seed=seed, budget="14 minutes (122-135 epochs), fp32")
                    for seed, fid, recall, nll in ((0, 6.15, 0.470, 234.36), (1, 6.06, 0.503, 234.37),
                                                   (2, 6.37, 0.462, 234.54))],
    "beta-vae": [dict(when=EPYC_1125, fid=25.91, recall=0.061, classes=7, elbo=-249.53)],
    "cvae": [dict(when=EPYC_1125, fid=15.44, recall=0.227, classes=9, elbo=-236.36,
                  note="ELBO of log p(x | y), not comparable with the unconditional rows")],
    "iwae": [dict(when=EPYC_1125, fid=21.13, recall=0.287, classes=9, elbo=-247.78)],
    "vae-gan": [dict(when=EPYC_1125, fid=18.82, recall=0.342, classes=9)],
}

# Minutes of training of each default budget, each preset alone on a 2-core AMD EPYC (Zen 5), 2026-12-02:
# minutes per epoch measured over 30 s of training, times the default epochs (docs/lab-notes).
MINUTES_PER_EPOCH = {"seed-vae": 0.06, "seed-gan": 0.05, "dcgan": 0.90, "wgan-gp": 1.07, "sngan": 0.93,
                     "cgan": 0.86, "conv-vae": 0.18, "vae-gmm": 0.22, "mlp-vae-gmm": 0.10, "beta-vae": 0.16,
                     "cvae": 0.17, "iwae": 0.67, "vae-gan": 1.06}
# Presets not in that measurement: their default budget's minutes where it was measured.
MINUTES_ELSEWHERE = {"mlp-vae-mog": "10.9 on the 2-core AMD EPYC (Zen 2) of 2026-12-03 (fp32, 9,140 img/s)"}


def value(v) -> str:
    """A setting as a reader would type it after --set."""
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v)
    return str(v)


def settings(d: dict) -> str:
    return ", ".join(f"`{k}={value(v)}`" for k, v in d.items()) or "the model's defaults"


def budget(train: dict) -> str:
    parts = [f"{train['epochs']} epochs" if "epochs" in train else "the Trainer's default epochs"]
    if "batch_size" in train:
        parts.append(f"batch {train['batch_size']}")
    for key in ("precision", "lr_schedule"):
        if key in train:
            parts.append(f"{key.replace('_', ' ')} {train[key]}")
    rest = {k: v for k, v in train.items() if k not in ("epochs", "batch_size", "precision", "lr_schedule")}
    parts += [f"{k} {value(v)}" for k, v in rest.items()]
    return ", ".join(parts)


def minutes(name: str, train: dict) -> str:
    if name in MINUTES_PER_EPOCH and "epochs" in train:
        return f"{MINUTES_PER_EPOCH[name] * train['epochs']:.1f}"
    return MINUTES_ELSEWHERE.get(name, "not measured")


def cell(text: str) -> str:
    """Text for a Markdown table cell (a bare | would end the cell)."""
    return str(text).replace("|", "\\|")


def figure(x, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def render() -> str:
    out = ["<!-- Generated by scripts/gen_presets_doc.py from genlab.models.PRESETS and MODELS: "
           "edit the script or the registry, then rerun it. -->",
           "# Presets and models", "",
           "A **preset** is a named choice of model, model settings and training budget (`genlab train PRESET`); "
           "a **model** is a class with its settings, usable by name with its defaults or with "
           "`--set FIELD=VALUE` ([concepts.md](concepts.md)). `genlab models` prints the same list. \"The seed\" is "
           "the tutorial whose VAE and GAN `seed-vae` and `seed-gan` reproduce ([seed-presets.md](seed-presets.md)).",
           "",
           "## Presets", "",
           "| preset | model | what and why | settings | default budget |",
           "|---|---|---|---|---|"]
    for name, p in PRESETS.items():
        what = f"{p.description}. *Why:* {p.why}" if p.why else p.description
        out.append(f"| `{name}` | `{p.model}` | {cell(what)} | {settings(p.model_config)} | {budget(p.train)} |")

    out += ["", "## What they give", "",
            "Fashion-MNIST, seed 0 unless a seed is given, after the default budget unless another is given; "
            "10,000 samples scored against the 10,000 test images by genlab's evaluator "
            "([evaluation.md](evaluation.md)). FIDs compare only between rows scored with the same evaluator "
            "weights, and each is read against that evaluator's own calibration rows:", ""]
    for weights, what in EVALUATORS.items():
        out.append(f"- `{weights}`: {what}.")
    out += ["", "Read a FID against those rows: 31 is as far from the data as real images blurred by one pixel, "
            "0.05 is real images themselves. NLL: the IWAE estimate with k = 100 and ELBO: the test ELBO, in nats "
            "per image (a Bernoulli likelihood of grey pixels: comparable between these rows only).", "",
            "| preset | trained | FID | recall | classes | test ELBO | NLL | measured on | evaluator | note |",
            "|---|---|---:|---:|---:|---:|---:|---|---|---|"]
    for name, p in PRESETS.items():
        rows = MEASURED.get(name)
        if not rows:
            out.append(f"| `{name}` | | | | | | | not measured | | |")
            continue
        for r in rows:
            date, cpu, weights = r["when"]
            trained = r.get("budget", "default")
            if "seed" in r:
                trained += f", seed {r['seed']}"
            out.append(f"| `{name}` | {trained} | {figure(r.get('fid'), '.2f')} | {figure(r.get('recall'), '.3f')} "
                       f"| {figure(r.get('classes'), 'd')} | {figure(r.get('elbo'), '.2f')} "
                       f"| {figure(r.get('nll'), '.2f')} | {date}, {cpu} | `{weights}` | {cell(r.get('note', ''))} |")
    out += ["", "How these were reached, and the earlier figures they replace: "
            "[lab-notes/2026-11-gallery-tuning.md](lab-notes/2026-11-gallery-tuning.md). Their pictures: "
            "[gallery.md](gallery.md).", "",
            "**Minutes of the default budget** (training time as the Trainer counts it, each preset alone on a "
            "2-core AMD EPYC (Zen 5), 2026-12-02: minutes per epoch over 30 s of training, times the default "
            "epochs; other CPUs of the same size took up to 1.7 times as long):", "",
            "| preset | min / epoch | default minutes |", "|---|---:|---:|"]
    for name, p in PRESETS.items():
        per = MINUTES_PER_EPOCH.get(name)
        out.append(f"| `{name}` | {'' if per is None else f'{per:.2f}'} | {minutes(name, p.train)} |")

    out += ["", "## Models", "",
            "Every setting of a model, with its default (`genlab train MODEL --set FIELD=VALUE`, or "
            "`genlab.train(MODEL, FIELD=VALUE)`):", ""]
    for name, entry in MODELS.items():
        fields = [f"`{f.name}={value(default(f))}`" for f in dataclasses.fields(entry.config_cls)]
        out += [f"### `{name}`", "", f"{entry.description}. Class `{entry.cls.__module__}.{entry.cls.__name__}`, "
                f"settings `{entry.config_cls.__name__}`: {', '.join(fields)}.", ""]
    return "\n".join(out).rstrip() + "\n"


def default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare with docs/presets.md; exit 1 if it differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                       str(OUT), "generated"))
            print(f"\n{OUT} is out of date: run python scripts/gen_presets_doc.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
