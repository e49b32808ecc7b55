"""The behaviour guard: the weights every preset reaches after 20 training steps, recorded so that a
refactoring can show that it changed no number a model computes.

Every case trains one preset for ``STEPS`` steps at seed 0 on the CPU (fp32, no torch.compile, one
thread, the preset's own model settings and learning-rate schedule, batches of ``BATCH``) through
``genlab.train``, on a small fixed slice of real data:

    fashion-28  the first TRAIN_IMAGES / TEST_IMAGES Fashion-MNIST images of each split (28x28 grey)
    colour-32   the same images resized to 32x32 (Pillow LANCZOS) and coloured as Colour
                Fashion-MNIST (scripts/color_fashion_mnist.py, colour seed 0): 32x32 RGB

Every preset runs on fashion-28; the seed presets and the convolutional VAE and DCGAN, whose layers
depend on the image size, also on colour-32. ``TRAIN_IMAGES`` makes 10 steps an epoch, the last
one a smaller batch, so the 20 steps cross an epoch end (prior fit, held-out evaluation, sample
grid: none of them may disturb the training) and stop at the next one.

For each case the weights (the model's whole ``state_dict``: parameters and buffers, EMA copies
and fitted priors among them) are described twice:

- ``sha256``: a hash of the exact bytes of every tensor with its name, dtype and shape. Equal
  hashes show bit-identical weights, but they can only be expected on the same CPU and torch build
  (kernels for other instruction sets round differently); ``machine`` records where the fixture
  was made.
- ``tensors``: a signature per tensor that another CPU reproduces within a tolerance: its shape
  and dtype, and in float64 its sum, its sum of squares and ``PROJECTIONS`` projections on fixed
  random vectors (standard normals drawn with ``PROJECTION_SEED``). Integer tensors: their exact sum.

The distance between two signatures is, for each top-level module (encoder, decoder, prior,
generator, generator_ema, discriminator, ...), the estimated relative change of its weights,
sqrt(sum of (projection change)^2 / PROJECTIONS) / ||weights||, and the largest of these; a changed
shape, dtype or integer tensor is an infinite distance. A projection on n standard normals changes
by about ||w' - w||, so the distance estimates ||w' - w|| / ||w|| per module.

How far rounding alone moves the weights differs by orders of magnitude between presets and is
heavy-tailed: Adam turns a gradient that is pure rounding noise (the bias of a layer that
BatchNorm follows, a latent dimension the KL term has switched off, a GAN whose first steps
nearly cancel) into a full step of the learning rate, and whether that happens depends on the
last bits. So every case records its own ``noise``: the distance from the plain run of the same
case run with its initial parameters moved one ulp at random (NOISE_NUDGES: 8 draws), with
torch's non-vectorised kernels (ATEN_CPU_CAPABILITY=default), and with MKL and oneDNN held to
SSE4 kernels; its ``tolerance`` is ``SAFETY`` times the largest of these (at least ``FLOOR``).
``--measure`` sets the tolerances against the effect of real changes (one step more, the
learning rate 1 % higher, another seed, one extra random draw).

    python scripts/behaviour_guard.py --write     # (re)make tests/fixtures/behaviour/guard.json
    python scripts/behaviour_guard.py --check     # recompute and compare; exit 1 on a change
    python scripts/behaviour_guard.py --add       # record presets registered since the fixture was made
    python scripts/behaviour_guard.py --measure   # noise and real changes against the tolerances
    python scripts/behaviour_guard.py --write-old-runs   # tests/fixtures/behaviour/old-runs/ (see OLD_RUN_ARGS)

Run it with genlab importable (``PYTHONPATH=src`` or the editable install). ``--write`` only ever
on code whose behaviour is the reference. ``tests/test_behaviour_guard.py`` runs these same cases
against the same fixture.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "behaviour" / "guard.json"
FORMAT = "genlab-behaviour-guard-1"

STEPS = 20  # training steps of every case
BATCH = 8  # images a step
TRAIN_IMAGES = 76  # 10 steps an epoch, the last one of 4 images
TEST_IMAGES = 32  # the held-out images every epoch end evaluates
SEED = 0
PROJECTIONS = 4
PROJECTION_SEED = 19
SAFETY = 10.0  # tolerance = SAFETY x the largest distance rounding caused (see the module docstring)
FLOOR = 1e-6  # the smallest tolerance: far above float64 summation noise, far below any real change
SEED_PRESETS = ("seed-vae", "seed-gan")
COLOUR_PRESETS = (*SEED_PRESETS, "conv-vae", "dcgan")  # the presets also run on colour-32
#: Parameter counts fixed by the issue that introduced the guard, checked apart from the fixture.
KNOWN_PARAMETERS = {"seed-vae@fashion-28": 1_116_560}
#: Environments whose kernels round differently on the same CPU (noise, not a change of behaviour).
NOISE_ENVS = {
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "blas-sse4": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
NOISE_NUDGES = {f"ulp-{seed}": seed for seed in range(1, 9)}  # every initial parameter moved one ulp


@dataclass(frozen=True)
class Case:
    preset: str
    data: str  # "fashion-28" or "colour-32"

    @property
    def name(self) -> str:
        return f"{self.preset}@{self.data}"

    @staticmethod
    def parse(name: str) -> Case:
        preset, _, data = name.rpartition("@")
        if not preset or data not in ("fashion-28", "colour-32"):
            raise SystemExit(f"case {name!r} is not PRESET@fashion-28 or PRESET@colour-32")
        return Case(preset, data)


def cases(presets) -> list[Case]:
    """Every preset on fashion-28, COLOUR_PRESETS also on colour-32."""
    out = [Case(p, "fashion-28") for p in sorted(presets)]
    return out + [Case(p, "colour-32") for p in COLOUR_PRESETS if p in presets]


def current_cases() -> list[str]:
    """The cases of the presets registered now."""
    import genlab  # noqa: F401 - registers the zoo
    from genlab.models.registry import PRESETS

    return [c.name for c in cases(PRESETS)]


def definition() -> dict:
    """Everything the recorded numbers depend on besides the code: a fixture made with another
    definition is not comparable."""
    return {"steps": STEPS, "batch_size": BATCH, "train_images": TRAIN_IMAGES, "test_images": TEST_IMAGES,
            "seed": SEED, "projections": PROJECTIONS, "projection_seed": PROJECTION_SEED, "precision": "fp32",
            "threads": 1, "device": "cpu", "safety": SAFETY, "floor": FLOOR}


# -- data ------------------------------------------------------------------------------------
def _colourize():
    path = ROOT / "scripts" / "color_fashion_mnist.py"
    spec = importlib.util.spec_from_file_location("color_fashion_mnist", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.colourize


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    lanczos = getattr(Image, "Resampling", Image).LANCZOS
    return np.stack([np.asarray(Image.fromarray(im[0]).resize((size, size), lanczos))[None] for im in images])


def make_data(folder: Path) -> dict[str, Path]:
    """The two data sets as .npz files in ``folder``: {"fashion-28": path, "colour-32": path}."""
    from genlab.data import load_dataset

    ds = load_dataset("fashion-mnist", progress=False)
    x, y = ds.train.images[:TRAIN_IMAGES].numpy(), ds.train.labels[:TRAIN_IMAGES].numpy()
    tx, ty = ds.test.images[:TEST_IMAGES].numpy(), ds.test.labels[:TEST_IMAGES].numpy()
    names = np.array(ds.class_names)
    colourize, rng = _colourize(), np.random.default_rng(0)
    colour_x, colour_tx = colourize(_resize(x, 32), rng), colourize(_resize(tx, 32), rng)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"fashion-28": folder / "fashion-28.npz", "colour-32": folder / "colour-32.npz"}
    np.savez(paths["fashion-28"], images=x, labels=y, test_images=tx, test_labels=ty, class_names=names)
    np.savez(paths["colour-32"], images=colour_x, labels=y, test_images=colour_tx, test_labels=ty,
             class_names=names)
    return paths


# -- training --------------------------------------------------------------------------------
@contextlib.contextmanager
def _nudged_initial_weights(seed: int):
    """``genlab.train`` with every parameter of the new model moved one ulp, up or down at random
    (a generator seeded with ``seed``), right after it is built: a rounding-sized change of the
    start. Buffers (running statistics, fitted priors, flags) stay as built."""
    import torch

    from genlab import api

    build, calls = api.build_model, []

    def nudged(*args, **kwargs):
        net = build(*args, **kwargs)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                up = torch.rand(p.shape, generator=gen) < 0.5
                p.copy_(torch.nextafter(p, torch.where(up, math.inf, -math.inf).to(p.dtype)))
        calls.append(1)
        return net

    api.build_model = nudged
    try:
        yield
    finally:
        api.build_model = build
    if not calls:
        raise RuntimeError("genlab.train no longer builds its model through genlab.api.build_model: "
                           "update _nudged_initial_weights, or the noise would go unmeasured")


def train_case(case: Case, data: dict[str, Path], out: Path, *, steps: int = STEPS, seed: int = SEED,
               lr_scale: float = 1.0, nudge: int | None = None, extra_draw: bool = False):
    """The model after ``steps`` steps of ``case``, trained into the new run folder ``out``.
    The keyword arguments other than the defaults serve the noise measurement and --measure."""
    import torch

    import genlab
    from genlab.models.registry import make_config, resolve
    from genlab.training import trainer

    settings = {}
    if lr_scale != 1.0:
        preset = resolve(case.preset)
        default = make_config(preset.model, dict(preset.model_config))
        settings = {k: getattr(default, k) * lr_scale for k in ("lr", "d_lr") if hasattr(default, k)}
    fit = trainer.Trainer.fit
    if extra_draw:  # one random number drawn from the model's stream before the first step
        def fit_after_a_draw(self):
            torch.rand(1)
            return fit(self)
        trainer.Trainer.fit = fit_after_a_draw
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.ExitStack() as stack:
            if nudge is not None:
                stack.enter_context(_nudged_initial_weights(nudge))
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))  # the epoch lines
            result = genlab.train(case.preset, data=f"npz:{data[case.data]}", out=out, batch_size=BATCH,
                                  max_steps=steps, seed=seed, device="cpu", precision="fp32", compile=False,
                                  progress=False, **settings)
    finally:
        torch.set_num_threads(threads)
        trainer.Trainer.fit = fit
    if result.state.step != steps:
        raise RuntimeError(f"{case.name}: trained {result.state.step} steps, not {steps}")
    return result.model


# -- signatures and distances ----------------------------------------------------------------
_VECTORS: dict[int, np.ndarray] = {}


def _vectors(n: int) -> np.ndarray:
    if n not in _VECTORS:
        _VECTORS[n] = np.random.default_rng(PROJECTION_SEED).standard_normal((PROJECTIONS, n))
    return _VECTORS[n]


def describe(model) -> dict:
    """{"parameters", "sha256", "tensors": {name: {"shape", "dtype", "stats"}}} of a model's state_dict;
    stats: [sum, sum of squares, projections...] in float64, or [exact sum] for an integer tensor."""
    digest = hashlib.sha256()
    tensors = {}
    for name, t in model.state_dict().items():
        a = t.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{a.dtype}|{list(a.shape)}|".encode())
        digest.update(a.tobytes())
        tensors[name] = signature(a)
    return {"parameters": model.parameter_count(), "sha256": digest.hexdigest(), "tensors": tensors}


def signature(a: np.ndarray) -> dict:
    """{"shape", "dtype", "stats"} of one array: [sum, sum of squares, projections...] in float64,
    or [exact sum] for integers."""
    if np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float64).ravel()
        stats = [float(x.sum()), float(x @ x), *(float(v) for v in _vectors(x.size) @ x)]
    else:
        stats = [int(a.astype(np.int64).sum())]
    return {"shape": list(a.shape), "dtype": str(a.dtype), "stats": stats}


def _change(ref: dict, new: dict) -> float | None:
    """Squared change of one float tensor as its projections see it (about ||w' - w||^2); None for
    tensors that differ in kind (shape, dtype, an integer sum): always a change of behaviour."""
    if ref["shape"] != new["shape"] or ref["dtype"] != new["dtype"] or len(ref["stats"]) != len(new["stats"]):
        return None
    if len(ref["stats"]) == 1:
        return 0.0 if ref["stats"] == new["stats"] else None
    return sum((b - a) ** 2 for a, b in zip(ref["stats"][2:], new["stats"][2:])) / PROJECTIONS


def tensor_distance(ref: dict, new: dict) -> float:
    change = _change(ref, new)
    if change is None:
        return math.inf
    norm2 = ref["stats"][1] if len(ref["stats"]) > 1 else 0.0
    return math.sqrt(change / max(norm2, FLOOR ** 2 * math.prod(ref["shape"]) + 1e-300))


def compare(ref: dict, new: dict, tolerance: float) -> dict:
    """How far ``new`` (a describe()) is from ``ref``: {"distance", "module", "tensor", "missing",
    "extra", "renamed", "parameters", "same_bytes"}. ``distance`` is the largest relative change
    of a top-level module; ``tensor`` its most changed tensor. A tensor missing under its name is
    matched to a new one within ``tolerance`` of it, so that a renamed module shows as renamed."""
    missing = [k for k in ref["tensors"] if k not in new["tensors"]]
    extra = [k for k in new["tensors"] if k not in ref["tensors"]]
    renamed = {}
    for k in missing:
        for e in extra:
            if e not in renamed.values() and tensor_distance(ref["tensors"][k], new["tensors"][e]) <= tolerance:
                renamed[k] = e
                break
    change, norm2, worst = {}, {}, {}
    for k, t in ref["tensors"].items():
        module = k.split(".")[0]
        other = new["tensors"].get(renamed.get(k, k))
        c = None if other is None else _change(t, other)
        change[module] = math.inf if c is None else change.get(module, 0.0) + c
        norm2[module] = norm2.get(module, 0.0) + (t["stats"][1] if len(t["stats"]) > 1 else 0.0)
        d = math.inf if other is None else tensor_distance(t, other)
        if module not in worst or d > worst[module][1]:
            worst[module] = (k, d)
    per_module = {m: math.sqrt(change[m] / max(norm2[m], 1e-300)) if math.isfinite(change[m]) else math.inf
                  for m in change}
    module = max(per_module, key=per_module.get)
    return {"distance": per_module[module], "module": module, "tensor": worst[module][0],
            "missing": [k for k in missing if k not in renamed],
            "extra": [e for e in extra if e not in renamed.values()], "renamed": renamed,
            "parameters": (ref["parameters"], new["parameters"]), "same_bytes": ref["sha256"] == new["sha256"]}


def machine() -> dict:
    """Where the numbers were made: the exact bytes are only comparable where all of this agrees."""
    import torch

    info = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())  # the first processor's
    cpu = info.get("model name") or platform.processor() or platform.machine()
    flags = hashlib.sha256(" ".join(sorted(info.get("flags", "").split())).encode()).hexdigest()[:16]
    return {"cpu": cpu, "cpu_flags_sha256": flags, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}


# -- running cases ---------------------------------------------------------------------------
def run_cases(names: list[str], folder: Path, log=None, **variant) -> dict[str, dict]:
    """describe() of every case in ``names``, trained under ``folder``."""
    data = make_data(folder / "data")
    out = {}
    for name in names:
        t = time.perf_counter()
        out[name] = describe(train_case(Case.parse(name), data, folder / name, **variant))
        if log:
            log(f"  {name:28s} {out[name]['parameters']:>10,} parameters  {time.perf_counter() - t:5.1f} s")
    return out


def _noise_runs(names: list[str], folder: Path, log, busy: list[bool]) -> dict[str, dict]:
    """describe() of every case under each rounding-sized change (NOISE_ENVS, NOISE_NUDGES), each
    in a child process of this script with one thread, as many at once as there are cores (one
    fewer while ``busy[0]``, i.e. while this process trains the reference)."""
    script = str(Path(__file__).resolve())
    jobs = [(label, {**os.environ, **env}, []) for label, env in NOISE_ENVS.items()]
    jobs += [(label, dict(os.environ), ["--nudge", str(seed)]) for label, seed in NOISE_NUDGES.items()]
    running, results = {}, {}
    while jobs or running:
        while jobs and len(running) < max(1, (os.cpu_count() or 1) - busy[0]):
            label, env, extra = jobs.pop(0)
            out = folder / f"{label}.json"
            cmd = [sys.executable, script, "--signatures", str(out), "--cases", *names, *extra]
            running[label] = (subprocess.Popen(cmd, env={**env, "OMP_NUM_THREADS": "1"}), out)
        for label, (proc, out) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[label]
            if proc.returncode != 0:
                raise RuntimeError(f"the noise run {label} failed (exit {proc.returncode})")
            results[label] = json.loads(out.read_text())
            log(f"noise: {label} done")
        time.sleep(0.2)
    return results


def record_cases(names: list[str], log) -> dict[str, dict]:
    """The fixture's records of ``names``: signatures, hashes, and the noise and tolerance of each."""
    import threading

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        busy, noise_runs = [True], {}
        worker = threading.Thread(target=lambda: noise_runs.update(_noise_runs(names, tmp, log, busy)))
        worker.start()  # the child processes, beside the reference runs of this process
        try:
            log("the reference runs:")
            results = run_cases(names, tmp / "reference", log)
        finally:
            busy[0] = False
            worker.join()
        if len(noise_runs) != len(NOISE_ENVS) + len(NOISE_NUDGES):
            raise RuntimeError("a noise run failed (see above)")
    for name, record in results.items():
        noise = {label: compare(record, v[name], 0.0)["distance"] for label, v in noise_runs.items()}
        worst = max(noise.values())
        if not math.isfinite(worst):
            raise RuntimeError(f"{name}: a rounding-sized change changed a shape or an integer tensor ({noise})")
        record["noise"] = {k: float(f"{v:.3g}") for k, v in noise.items()}
        record["tolerance"] = float(f"{max(SAFETY * worst, FLOOR):.3g}")
    return results


def check(fixture: dict, results: dict[str, dict]) -> tuple[list[str], bool]:
    """(report lines, whether every case behaves as recorded)."""
    same_machine = fixture["machine"] == machine()
    lines, ok = [], True
    for name, ref in fixture["cases"].items():
        if name not in results:
            lines.append(f"{name:28s} MISSING: its preset is no longer registered")
            ok = False
            continue
        c = compare(ref, results[name], ref["tolerance"])
        bad = (c["distance"] > ref["tolerance"] or c["parameters"][0] != c["parameters"][1] or c["missing"]
               or c["extra"] or (same_machine and not c["same_bytes"]))
        ok &= not bad
        line = (f"{name:28s} {'CHANGED' if bad else 'same':8s} distance {c['distance']:.2e} (tolerance "
                f"{ref['tolerance']:.1e})  {'bit-identical' if c['same_bytes'] else 'bytes differ'}")
        if c["parameters"][0] != c["parameters"][1]:
            line += f"  parameters {c['parameters'][0]:,} -> {c['parameters'][1]:,}"
        if c["distance"] > ref["tolerance"]:
            line += f"  most changed: {c['module']} ({c['tensor']})"
        if c["renamed"]:
            line += f"  renamed: {c['renamed']}"
        if c["missing"] or c["extra"]:
            line += f"  missing: {c['missing']} new: {c['extra']}"
        lines.append(line)
    for name, count in KNOWN_PARAMETERS.items():
        if name in results and results[name]["parameters"] != count:
            lines.append(f"{name} has {results[name]['parameters']:,} parameters, not {count:,}")
            ok = False
    lines.append("the fixture's CPU and torch build: the bytes must be identical" if same_machine else
                 f"the fixture was made on {fixture['machine']}, this is {machine()}: the bytes may differ, "
                 "the signatures may not")
    return lines, ok


def measure(fixture: dict, names: list[str], log) -> None:
    """The fixture's tolerance of every case against the effect of real changes of behaviour."""
    real = {"one step more": {"steps": STEPS + 1}, "learning rate x 1.01": {"lr_scale": 1.01},
            "seed 1": {"seed": 1}, "one extra random draw": {"extra_draw": True}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log("the reference runs:")
        ref = run_cases(names, tmp / "reference")
        effects = {}
        for label, variant in real.items():
            log(f"{label}:")
            effects[label] = run_cases(names, tmp / label.replace(" ", "-"), **variant)
    log(f"\n{'case':24s} {'noise':>7s} {'toler.':>7s}  " + "  ".join(f"{k[:13]:>13s}" for k in real)
        + "\n(distances from the reference; x: above the tolerance, caught)")
    for name in names:
        rec = fixture["cases"][name]
        row = [compare(ref[name], effects[k][name], 0.0)["distance"] for k in real]
        log(f"{name:24s} {max(rec['noise'].values()):7.1e} {rec['tolerance']:7.1e}  "
            + "  ".join(f"{d:12.1e}{'x' if d > rec['tolerance'] else ' '}" for d in row))


# -- old run folders -------------------------------------------------------------------------
OLD_RUNS = ROOT / "tests" / "fixtures" / "behaviour" / "old-runs"
#: Small runs written by the reference code, which later code must still load, sample, evaluate
#: and resume. The seed presets' own widths would make checkpoints of 2-5 MB (weights and Adam
#: moments), so the hidden widths and z are smaller; the architecture is the presets' otherwise.
OLD_RUN_ARGS = {
    "seed-vae": ["seed-vae", "--set", "hidden=[64,32]", "--set", "z_dim=8"],
    "seed-gan": ["seed-gan", "--set", "hidden=64", "--set", "z_dim=16"],
}
#: digits: 1,437 training images in batches of 128 make 12 steps an epoch; the run stops inside
#: its second epoch (a resume must restore the position in the epoch, not only the weights).
OLD_RUN_TRAIN = ["--data", "digits", "--epochs", "3", "--max-steps", "18", "--seed", "0", "--device", "cpu",
                 "--precision", "fp32", "--no-progress"]
OLD_RUN_STEP = 18
OLD_RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints/last.safetensors", "checkpoints/last.json",
                 "samples/epoch-0001.png")
OLD_RUN_SAMPLES = 16  # images sampled at seed 0 for the stored signature
OLD_RUN_TOLERANCE = 1e-4  # relative: a forward pass on another CPU differs by about 1e-7


def old_run_outputs(run_dir: Path) -> dict:
    """What a loaded old run computes: its parameter count, the signature and hash of
    OLD_RUN_SAMPLES images sampled at seed 0, and its held-out evaluation (the VAE's test ELBO) on
    digits with the evaluation generator at seed 0."""
    import torch

    import genlab
    from genlab.data import load_dataset

    model = genlab.load(run_dir)
    with torch.no_grad():
        images = model.sample(OLD_RUN_SAMPLES, generator=torch.Generator().manual_seed(0))
        test = load_dataset("digits", progress=False).test
        evaluation = model.evaluate(test.images, test.labels, generator=torch.Generator().manual_seed(0))
    a = images.detach().cpu().contiguous().numpy()
    return {"parameters": model.parameter_count(), "samples": signature(a),
            "samples_sha256": hashlib.sha256(a.tobytes()).hexdigest(), "evaluation": evaluation}


def relative_change(ref: dict, new: dict) -> float:
    """||new - ref|| / ||ref|| of one array, estimated from signature() projections."""
    change = _change(ref, new)
    return math.inf if change is None else math.sqrt(change / max(ref["stats"][1], 1e-300))


def check_old_runs() -> tuple[list[str], bool]:
    """(report lines, whether every old run folder loads and computes what it did when written)."""
    import shutil

    expected = json.loads((OLD_RUNS / "expected.json").read_text())
    same_machine = expected["machine"] == machine()
    lines, ok = [], True
    for name, ref in expected["runs"].items():
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / name
            shutil.copytree(OLD_RUNS / name, run)
            try:
                out = old_run_outputs(run)
            except Exception as e:  # noqa: BLE001 - reported: the old run no longer loads
                lines.append(f"old run {name:20s} FAILS: {type(e).__name__}: {e}")
                ok = False
                continue
        change = relative_change(ref["samples"], out["samples"])
        evaluation = all(k in out["evaluation"] and math.isclose(out["evaluation"][k], v, rel_tol=OLD_RUN_TOLERANCE)
                         for k, v in ref["evaluation"].items())
        exact = out["samples_sha256"] == ref["samples_sha256"] and out["evaluation"] == ref["evaluation"]
        bad = (out["parameters"] != ref["parameters"] or change > OLD_RUN_TOLERANCE or not evaluation
               or (same_machine and not exact))
        ok &= not bad
        lines.append(f"old run {name:20s} {'CHANGED' if bad else 'same':8s} samples moved {change:.2e}, evaluation "
                     f"{out['evaluation']} (recorded {ref['evaluation']})  {'bit-identical' if exact else 'bits differ'}")
    return lines, ok


def _code_version() -> str:
    import genlab

    src = Path(genlab.__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"genlab {genlab.__version__} at {src}"
    return f"genlab {genlab.__version__}, commit {rev}{' with uncommitted changes' if dirty else ''}"


def write_old_runs(log) -> None:
    """Train the OLD_RUN_ARGS runs with the genlab importable now (the CLI, as a user would) and
    keep OLD_RUN_FILES of each in OLD_RUNS/<name>, with what they compute in expected.json."""
    import shutil

    expected = {"written_by": _code_version(), "machine": machine(), "train": OLD_RUN_TRAIN, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_args in OLD_RUN_ARGS.items():
            run = Path(tmp) / name
            cmd = [sys.executable, "-m", "genlab", "train", *model_args, *OLD_RUN_TRAIN, "--out", str(run)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
            dest = OLD_RUNS / name
            shutil.rmtree(dest, ignore_errors=True)
            for f in OLD_RUN_FILES:
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run / f, dest / f)
            expected["runs"][name] = {"args": model_args, **old_run_outputs(dest)}
            size = sum((dest / f).stat().st_size for f in OLD_RUN_FILES)
            log(f"{dest.relative_to(ROOT)}: {size:,} bytes, {expected['runs'][name]['parameters']:,} parameters")
    _save(OLD_RUNS / "expected.json", expected)


# -- the command -----------------------------------------------------------------------------
def _save(path: Path, record: dict) -> None:
    from genlab.fileio import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="record every case (on the reference code only)")
    mode.add_argument("--check", action="store_true", help="recompute the fixture's cases and compare")
    mode.add_argument("--add", action="store_true", help="record the cases of presets the fixture lacks")
    mode.add_argument("--measure", action="store_true",
                      help="the fixture's tolerances against the effect of real changes")
    mode.add_argument("--write-old-runs", action="store_true",
                      help=f"train the old run folders of {OLD_RUNS.relative_to(ROOT)} (reference code only)")
    mode.add_argument("--signatures", type=Path, metavar="JSON", help=argparse.SUPPRESS)  # a noise run's output
    p.add_argument("--fixture", type=Path, default=FIXTURE, help=f"default: {FIXTURE.relative_to(ROOT)}")
    p.add_argument("--cases", nargs="+", metavar="CASE", help="PRESET@fashion-28 / PRESET@colour-32; default: all")
    p.add_argument("--nudge", type=int, help=argparse.SUPPRESS)  # with --signatures: a nudged start
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.signatures:
        with tempfile.TemporaryDirectory() as tmp:
            args.signatures.write_text(json.dumps(run_cases(args.cases, Path(tmp), nudge=args.nudge)))
        return 0
    if args.write_old_runs:
        write_old_runs(log)
        return 0
    if args.write or args.add:
        names = args.cases or current_cases()
        record = {"format": FORMAT, "definition": definition(), "machine": machine(), "cases": {}}
        if args.add:
            record = json.loads(args.fixture.read_text())
            if record.get("definition") != definition():
                raise SystemExit(f"{args.fixture} was made with {record.get('definition')}, not {definition()}: "
                                 "make it anew with --write (on the reference code)")
            names = [n for n in names if n not in record["cases"]]
            if not names:
                log(f"{args.fixture} has every case already")
                return 0
        t = time.perf_counter()
        record["cases"].update(record_cases(names, log))
        _save(args.fixture, record)
        log(f"wrote {len(names)} case(s) to {args.fixture} in {time.perf_counter() - t:.0f} s")
        return 0
    fixture = json.loads(args.fixture.read_text())
    if fixture.get("format") != FORMAT or fixture.get("definition") != definition():
        raise SystemExit(f"{args.fixture} was made with {fixture.get('definition')}; this script's definition is "
                         f"{definition()}")
    names = args.cases or list(fixture["cases"])
    if args.measure:
        measure(fixture, names, log)
        return 0
    known = set(current_cases())
    with tempfile.TemporaryDirectory() as tmp:
        results = run_cases([n for n in names if n in known], Path(tmp))
    lines, ok = check({**fixture, "cases": {n: fixture["cases"][n] for n in names}}, results)
    if not args.cases:
        old_lines, old_ok = check_old_runs()
        lines, ok = lines + old_lines, ok and old_ok
    for line in lines:
        log(line)
    unguarded = sorted(known - set(fixture["cases"]))
    if unguarded:
        log(f"not in the fixture yet (record them with --add): {', '.join(unguarded)}")
    log("behaviour unchanged" if ok else "BEHAVIOUR CHANGED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
