"""The report's summary in words, computed from the numbers alone.

Each sentence comes from a comparison with a threshold stated below, so the words change when the
numbers do; nothing is said that the results do not show. Inputs are the ``models`` entries of
results.json: ``name``, ``family``, ``metrics`` (an eval.json metrics block), ``likelihood`` (or None),
``train_seconds``, ``images_seen``.
"""
from __future__ import annotations

from typing import Any

FID_TIE = 0.05  # FIDs within 5 % of each other are not called different
PRECISION_GAP = 0.05  # an absolute precision difference worth a sentence (fidelity)
DIVERSITY_GAP = 0.03  # an absolute coverage difference worth a sentence (diversity)
MEMORISATION_FLAG = 0.05  # share of samples nearer to a training image than the test p1 (about 0.01 expected)
SPEED_RATIO = 2.0  # a training-speed (or images-seen) ratio worth a sentence


def _cap(label: str) -> str:
    """A sentence-initial label: "the GAN dcgan" -> "The GAN dcgan"; model names keep their spelling."""
    return "The" + label[3:] if label.startswith("the ") else label


def _seconds(x: float) -> str:
    return f"{x:.0f} s" if x >= 10 else f"{x:.2g} s"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _fid_sentences(models: list[dict[str, Any]]) -> list[str]:
    ranked = sorted(models, key=lambda m: m["metrics"]["fid"])
    best = ranked[0]
    bf = best["metrics"]["fid"]
    ties = [m for m in ranked[1:] if m["metrics"]["fid"] <= bf * (1 + FID_TIE)]
    others = [m for m in ranked[1:] if m not in ties]
    out = []
    if ties:
        names = ", ".join(m["name"] for m in [best, *ties])
        fids = " vs ".join(f"{m['metrics']['fid']:.2f}" for m in [best, *ties])
        out.append(f"{names} are within {_pct(FID_TIE)} of each other on FID ({fids}): FID does not separate "
                   "them at this sample count.")
    if others:
        rel = ", ".join(f"{m['name']}'s is {_pct(m['metrics']['fid'] / bf - 1)} higher ({m['metrics']['fid']:.2f})"
                        if m["metrics"]["fid"] < 2 * bf else
                        f"{m['name']}'s is {m['metrics']['fid'] / bf:.1f}x as high ({m['metrics']['fid']:.2f})"
                        for m in others)
        lead = f"{best['name']} has the lowest FID ({bf:.2f})" if not ties else f"the lowest FID is {bf:.2f}"
        out.append(f"{_cap(lead)}; {rel}.")
    kid_best = min(models, key=lambda m: m["metrics"]["kid"])
    if kid_best is not best and kid_best not in ties:
        out.append(f"KID ranks {kid_best['name']} first ({kid_best['metrics']['kid']:.4f} vs {best['name']}'s "
                   f"{best['metrics']['kid']:.4f}), unlike FID: the two are closer than these metrics resolve.")
    return out


def _pair_sentence(a: dict[str, Any], b: dict[str, Any], label_a: str, label_b: str) -> str:
    """What separates a from b in fidelity (precision) and diversity (coverage, with recall quoted).

    Every "x vs y" pair is written in the order of the clause's subject: "X is ahead (X's vs Y's)"."""
    ma, mb = a["metrics"], b["metrics"]
    dp = ma["precision"] - mb["precision"]
    dc = ma["coverage"] - mb["coverage"]
    dr = ma["recall"] - mb["recall"]
    # diversity is judged by coverage (robust to outliers, Naeem et al. 2020); recall is quoted, and a
    # recall difference in the other direction is said so
    recall_disagrees = abs(dc) >= DIVERSITY_GAP and abs(dr) >= DIVERSITY_GAP and (dc > 0) != (dr > 0)

    def prec(x: dict[str, Any], y: dict[str, Any]) -> str:
        return f"precision {x['precision']:.2f} vs {y['precision']:.2f}"

    def div(x: dict[str, Any], y: dict[str, Any]) -> str:
        rec = f"{x['recall']:.2f} vs {y['recall']:.2f}"
        tail = f"; recall points the other way: {rec}" if recall_disagrees else f", recall {rec}"
        return f"coverage {x['coverage']:.2f} vs {y['coverage']:.2f}{tail}"

    by_p = ((ma, label_a), (mb, label_b)) if dp > 0 else ((mb, label_b), (ma, label_a))
    by_c = ((ma, label_a), (mb, label_b)) if dc > 0 else ((mb, label_b), (ma, label_a))
    big_p, big_c = abs(dp) >= PRECISION_GAP, abs(dc) >= DIVERSITY_GAP
    if big_p and big_c and (dp > 0) != (dc > 0):
        (cm, closer), (wm, wider) = by_p
        return (f"Samples of {closer} are closer to real images ({prec(cm, wm)}), but {wider} covers more of "
                f"the data ({div(wm, cm)}).")
    if big_p and big_c:
        (lm, lead), (tm, trail) = by_p
        return f"{_cap(lead)} beats {trail} on both fidelity ({prec(lm, tm)}) and diversity ({div(lm, tm)})."
    if big_p:
        (lm, lead), (tm, _) = by_p
        return (f"{_cap(label_a)} and {label_b} differ in fidelity, where {lead} is ahead ({prec(lm, tm)}), "
                f"not in diversity ({div(lm, tm)}).")
    if big_c:
        (lm, lead), (tm, _) = by_c
        return (f"{_cap(label_a)} and {label_b} differ in diversity, where {lead} is ahead ({div(lm, tm)}), "
                f"not in fidelity ({prec(lm, tm)}).")
    return f"{_cap(label_a)} and {label_b} are alike in fidelity ({prec(ma, mb)}) and diversity ({div(ma, mb)})."


def _best(models: list[dict[str, Any]]) -> dict[str, Any]:
    return min(models, key=lambda m: m["metrics"]["fid"])


def _contrast_sentences(models: list[dict[str, Any]]) -> list[str]:
    vaes = [m for m in models if m["family"] != "gan"]
    gans = [m for m in models if m["family"] == "gan"]
    if vaes and gans:
        v, g = _best(vaes), _best(gans)
        lv = f"the VAE {v['name']}" if len(vaes) == 1 else f"the best VAE ({v['name']})"
        lg = f"the GAN {g['name']}" if len(gans) == 1 else f"the best GAN ({g['name']})"
        return [_pair_sentence(g, v, lg, lv)]
    a, b = sorted(models, key=lambda m: m["metrics"]["fid"])[:2]
    return [_pair_sentence(a, b, a["name"], b["name"])]


def _class_sentences(models: list[dict[str, Any]], class_names: list[str] | None) -> list[str]:
    out = []
    for m in models:
        mm = m["metrics"]
        k, covered = mm["num_classes"], mm["classes_covered"]
        if covered >= k:
            continue
        counts = mm["class_histogram"]
        n = sum(counts)
        missing = [i for i, c in enumerate(counts) if c < n / (4.0 * k)]
        names = ", ".join(str(class_names[i]) if class_names and i < len(class_names) else str(i) for i in missing)
        out.append(f"{m['name']} draws only {covered} of {k} classes (by the evaluator's predicted labels); "
                   f"rare or missing: {names}.")
    if not out:
        out.append(f"Every model draws all {models[0]['metrics']['num_classes']} classes "
                   "(by the evaluator's predicted labels).")
    return out


def _memorisation_sentences(models: list[dict[str, Any]]) -> list[str]:
    fracs = {m["name"]: m["metrics"]["memorization"]["fraction_closer_than_test_p1"]
             for m in models if m["metrics"].get("memorization")}
    if not fracs:
        return []
    flagged = [(name, f) for name, f in fracs.items() if f > MEMORISATION_FLAG]
    if flagged:
        return [f"{name}: {100 * f:.1f}% of samples are nearer to a training image than 99% of test images are "
                "(about 1% expected): look at its nearest-training-image pictures for copies." for name, f in flagged]
    return [(f"No model shows signs of copying training images: at most {100 * max(fracs.values()):.1f}% of any "
            "model's samples lie nearer to a training image than the closest 1% of test images do (about 1% expected).")]


def _likelihood_sentences(models: list[dict[str, Any]]) -> list[str]:
    with_lk = [m for m in models if m.get("likelihood")]
    gans = [m["name"] for m in models if not m.get("likelihood") and m["family"] == "gan"]
    others = [m["name"] for m in models if not m.get("likelihood") and m["family"] != "gan"]
    notes = []
    if gans:
        notes.append(f"{', '.join(gans)} {'is a GAN and defines' if len(gans) == 1 else 'are GANs and define'} "
                     "no density")
    if others:
        notes.append(f"{', '.join(others)} {'has' if len(others) == 1 else 'have'} no likelihood estimate")
    if not with_lk:
        return [f"No likelihoods to compare: {'; '.join(notes)}. Only the sample-based scores compare them."]
    parts = []
    for m in sorted(with_lk, key=lambda m: nll_value(m["likelihood"])[0]):
        value, kind = nll_value(m["likelihood"])
        parts.append(f"{m['name']} {value:.1f} ({kind})")
    unit = with_lk[0]["likelihood"].get("units", "nats/image")
    return [f"Likelihoods ({unit}, lower is better): {', '.join(parts)}" + "".join(f"; {n}" for n in notes) + "."]


def nll_value(lk: dict[str, Any]) -> tuple[float, str]:
    """The best available negative log-likelihood of a likelihood block: the IWAE estimate when it was
    computed, else the negative ELBO (an upper bound on the NLL)."""
    if lk.get("nll_iwae") is not None:
        return float(lk["nll_iwae"]), f"IWAE NLL, k={lk['k']}"
    return float(lk["neg_elbo"]), "-ELBO, an upper bound on the NLL"


def _speed_sentences(models: list[dict[str, Any]], budget: dict[str, Any] | None) -> list[str]:
    timed = [m for m in models if m.get("train_seconds") and m.get("images_seen")]
    if len(timed) < 2:
        return []
    if budget and budget.get("kind") == "seconds":
        hi = max(timed, key=lambda m: m["images_seen"])
        lo = min(timed, key=lambda m: m["images_seen"])
        ratio = hi["images_seen"] / lo["images_seen"]
        if ratio >= SPEED_RATIO:
            return [(f"In the same {budget['text']} of training, {hi['name']} saw {ratio:.1f}x as many images as "
                    f"{lo['name']} ({hi['images_seen']:,} vs {lo['images_seen']:,}).")]
        return []
    fast = min(timed, key=lambda m: m["train_seconds"])
    slow = max(timed, key=lambda m: m["train_seconds"])
    ratio = slow["train_seconds"] / fast["train_seconds"]
    if ratio >= SPEED_RATIO:
        what = f"the same {budget['description']}" if budget else "their training"
        return [(f"For {what}, {slow['name']} needed {ratio:.1f}x the training time of {fast['name']} "
                f"({_seconds(slow['train_seconds'])} vs {_seconds(fast['train_seconds'])}).")]
    return []


def _paired_sentences(pairs: list[dict[str, Any]] | None) -> list[str]:
    out = []
    for p in pairs or []:
        what = "IWAE NLL" if p["measure"] == "nll_iwae" else "negative ELBO"
        d, se = p["difference"], p["stderr"]
        sure = ("well beyond the error" if d > 3 * se else "beyond the error" if d > 2 * se else
                "within the error: the two are not told apart on these images")
        out.append(f"Paired on the same {p['n_images']:,} test images, {p['better']}'s {what} is {d:.2f} ± {se:.2f} "
                   f"nats/image below {p['other']}'s ({sure}; lower on {100 * p['fraction_of_images_better']:.0f}% "
                   "of the images).")
    return out


def summarize(models: list[dict[str, Any]], budget: dict[str, Any] | None = None,
              class_names: list[str] | None = None, paired: list[dict[str, Any]] | None = None) -> list[str]:
    """Sentences on what differs between the evaluated ``models`` (results.json entries); ``paired``: the
    per-image likelihood differences of ``paired_likelihoods``."""
    if not models:
        return []
    if len(models) == 1:
        m = models[0]
        mm = m["metrics"]
        return [(f"Only one model, {m['name']}: FID {mm['fid']:.2f}, precision {mm['precision']:.2f}, coverage "
                f"{mm['coverage']:.2f}; nothing to compare it with.")] + _class_sentences(models, class_names) \
            + _memorisation_sentences(models)
    return (_fid_sentences(models) + _contrast_sentences(models) + _class_sentences(models, class_names)
            + _memorisation_sentences(models) + _likelihood_sentences(models) + _paired_sentences(paired)
            + _speed_sentences(models, budget))
