"""The ``genlab`` command line: train | sample | reconstruct | eval | compare | interpolate | traverse | ..."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import GenlabError

EPILOG = """examples:
  genlab demo                                  train seed-vae and seed-gan on the bundled digits
  genlab train seed-vae --data fashion-mnist   the seed's VAE on Fashion-MNIST
  genlab train seed-gan --g-loss minimax       the seed's GAN with the minimax generator loss
  genlab train --resume runs/seed-vae-digits   continue a stopped run
  genlab train seed-vae --precision bf16 --compile          faster: bf16 autocast, torch.compile
  torchrun --nproc-per-node 2 -m genlab train seed-vae      two processes (DDP; gloo on CPU, NCCL on GPUs)
  genlab sample runs/seed-vae-digits -n 64 -o grid.png
  genlab reconstruct runs/seed-vae-digits
  genlab compare --data fashion-mnist --models seed-vae,seed-gan,conv-vae,dcgan --budget 10m
  genlab interpolate runs/seed-vae-digits --method both
  genlab traverse runs/seed-vae-digits --top 8
"""


def _setting(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


# -- the parser: one function per command, in the order `genlab --help` lists them ----------------
def build_parser() -> argparse.ArgumentParser:
    """The ``genlab`` parser; each command's options are declared by its own ``_add_*`` function."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="genlab", description="Train, sample and compare VAEs and GANs on images.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"genlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_sample(sub)
    _add_reconstruct(sub)
    _add_eval(sub)
    _add_evaluator(sub)
    _add_compare(sub)
    _add_interpolate(sub)
    _add_traverse(sub)
    _add_listings(sub)
    _add_demo(sub)
    return parser


_DATA_HELP = ("digits (default, bundled), mnist, fashion-mnist, cifar10, folder:PATH or npz:PATH "
              "(see `genlab datasets`)")
_DATA_DIR_HELP = ("folder holding the dataset files (IDX for mnist/fashion-mnist; "
                  "cifar-10-binary.tar.gz or its .bin files for cifar10)")
_CHANNELS_HELP = "convert images to 1 (grey) or 3 (RGB) channels"


def _add_data_args(p: argparse.ArgumentParser, *, default: str | None = "digits", data_help: str = _DATA_HELP,
                   dir_help: str = _DATA_DIR_HELP, channels_help: str = _CHANNELS_HELP) -> None:
    """--data, --data-dir, --image-size, --channels: the arguments of ``genlab.data.load_dataset``. The
    keywords let a command word them for its own default (compare takes the reused runs' data)."""
    p.add_argument("--data", default=default, metavar="SOURCE", help=data_help)
    p.add_argument("--data-dir", metavar="DIR", help=dir_help)
    p.add_argument("--image-size", type=int, metavar="PX", help="resize images to PX x PX")
    p.add_argument("--channels", type=int, choices=(1, 3), help=channels_help)


def _add_run_device(p: argparse.ArgumentParser) -> None:
    """--device of the commands that load a trained run: they work on the CPU unless told otherwise."""
    p.add_argument("--device", default="cpu")


def _add_train(sub) -> None:
    from .models.losses import GAN_LOSSES
    from .training.trainer import LR_SCHEDULES

    p = sub.add_parser("train", help="train a model or preset", description=(
        "Train a model or preset on a data source. Writes config.json, metrics.jsonl, a sample grid per "
        "epoch (samples/) and checkpoints (checkpoints/last.safetensors) into the run folder. Ctrl-C "
        "saves a checkpoint and stops; --resume continues exactly where it stopped."))
    p.add_argument("model", nargs="?", help="preset or model name, e.g. seed-vae, seed-gan (see `genlab models`)")
    _add_data_args(p)
    p.add_argument("--epochs", type=int, help="passes over the training set (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the preset's, 128 for the seed)")
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="learning rate over the run: constant, or decayed to 0 at the end of the budget (the last "
                        "epoch, --max-steps or --max-minutes, whichever comes first); default: the preset's")
    p.add_argument("--seed", type=int, default=0, help="seed of every random stream of the run (default 0)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps in all (a checkpoint is saved)")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="stop after M minutes of training time in all (a checkpoint and a sample grid are saved)")
    p.add_argument("--g-loss", "--gan-loss", dest="gan_loss", choices=tuple(GAN_LOSSES), metavar="LOSS",
                   help="adversarial loss of a GAN or the VAE-GAN, its setting `loss` (--set loss=LOSS): "
                        f"{', '.join(GAN_LOSSES)} (default: the preset's, "
                        "non-saturating for the seed's GAN: strong gradients early; minimax is the seed's eq. as "
                        "written)")
    p.add_argument("--augment", metavar="POLICY",
                   help="differentiable augmentation of the discriminator's inputs, real and generated alike, for a "
                        "GAN or the VAE-GAN (DiffAugment, Zhao et al. 2020): a comma-separated subset of "
                        "color,translation,cutout, or '' for none (default: the preset's, none). For small image "
                        "folders (a few thousand images), where D otherwise memorises the training set")
    p.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="override a model setting, e.g. --set z_dim=32 --set 'hidden=[256,128]'")
    p.add_argument("--out", metavar="RUN", help="run folder (default runs/<model>-<data>, numbered if taken)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the genlab run in --out (kept aside as .NAME.replaced until the new run's first "
                        "checkpoint; a folder that is not a genlab run is never replaced)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last checkpoint")
    _add_train_speed_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_train_speed_args(p: argparse.ArgumentParser) -> None:
    """Where and how fast a run trains; none of them is part of the run's settings, so --resume may change them."""
    from .training.context import AUTO, PRECISIONS

    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 …")
    p.add_argument("--precision", choices=(AUTO, *PRECISIONS), default=None,
                   help="fp32, bf16 (autocast; CPU or GPU), fp16 (autocast + loss scaling; CUDA GPUs) or auto (bf16 "
                        "where the device has it natively - AVX-512 BF16/AMX CPUs, Ampere and later GPUs - else fp32); "
                        "default: the preset's (fp32 for all but mlp-vae-gmm's auto, see `genlab models`)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model's networks (its warm-up is logged apart, not in img/s)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout for convolutional models (may help on GPUs; measure on CPUs)")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a trained run", description=(
        "Draw samples from a run's last checkpoint: a PNG grid, or an .npz holding 'images' "
        "(float32 in [0, 1], shape (N, C, H, W)) usable as npz:PATH data."))
    p.add_argument("run", help="run folder")
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("-o", "--output", help="output .png or .npz (default RUN/samples/sample.png)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--label", type=int, metavar="Y", help="conditional models: draw every sample from class Y")
    p.add_argument("--per-class", type=int, metavar="M",
                   help="conditional models: M samples of every class, one row per class (ignores -n)")
    p.add_argument("--truncation", type=float, metavar="T",
                   help="the truncation trick (Brock et al. 2019): latent components with |z| > T are resampled; "
                        "samples nearer the prior's centre, less varied. Models with an N(0, I) prior only")
    _add_run_device(p)


def _add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="VAEs: test images beside their reconstructions", description=(
        "Encode test images and decode the posterior mean; writes rows of originals, each followed by "
        "a row of their reconstructions."))
    p.add_argument("run", help="run folder of a VAE")
    p.add_argument("-n", "--num", type=int, default=32, help="number of images (default 32)")
    p.add_argument("-o", "--output", help="output PNG (default RUN/reconstructions.png)")
    _add_run_device(p)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score a run (or an .npz of samples) offline: FID, KID, IS, PRDC, NLL", description=(
        "Score samples in the feature space of a small CNN classifier trained on the dataset\n"
        "itself (the evaluator; trained and cached on first use), not Inception: numbers compare\n"
        "only between results with the same evaluator fingerprint, which every result records.\n"
        "Writes RUN/eval.json (for a VAE also RUN/eval.likelihood.safetensors: each test image's\n"
        "NLL, for paired comparisons)."),
        epilog="examples:\n  genlab eval runs/seed-vae-fashion-mnist\n"
               "  genlab eval runs/seed-vae-fashion-mnist --likelihood-k 5000 --binarize\n"
               "  genlab eval --samples samples.npz --data fashion-mnist\n"
               "  genlab eval --calibrate --data fashion-mnist",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="run folder to evaluate")
    p.add_argument("--samples", metavar="NPZ", help="evaluate these samples ('images', (N, C, H, W)) instead of a run")
    p.add_argument("--calibrate", action="store_true",
                   help="score reference sets (real, noise, blurred, half the classes, one image) to read results by")
    _add_data_args(p)
    p.add_argument("-n", "--num", type=int, default=10_000, help="number of samples (default 10000)")
    p.add_argument("--reference", choices=("test", "train"), default="test", help="reference split (default test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--likelihood-k", type=int, metavar="K",
                   help="VAEs: importance samples for the IWAE NLL estimate (e.g. 5000); default: ELBO only")
    p.add_argument("--binarize", action="store_true",
                   help="VAEs: stochastically binarize the test set (the binarized-MNIST protocol)")
    p.add_argument("--features", choices=("evaluator", "inception"), default="evaluator",
                   help="evaluator (default): the dataset's own classifier; inception: add FID/KID in Inception "
                        "features, if torch-fidelity and its weights are on disk (never downloaded)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--no-progress", action="store_true")


def _add_evaluator(sub) -> None:
    p = sub.add_parser("evaluator", help="train or inspect the evaluator network of a dataset")
    p.add_argument("action", choices=("train", "info"), help="train: train (or retrain) and cache; info: show the cached one")
    _add_data_args(p)
    p.add_argument("--epochs", type=int, help="training epochs (default: sized to the dataset)")
    p.add_argument("--no-progress", action="store_true")


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="train several models under one budget, evaluate them alike, write an HTML report",
                       description=(
        "Train each model (or reuse run folders) on the same data under the same budget and seed, evaluate\n"
        "each with the same evaluator and sample count, and write <out-root>/<name>/results.json and\n"
        "report.html (one self-contained page: table, summary, samples, interpolations, curves).\n"
        "Running the same command again reuses finished runs and resumes stopped ones."),
        epilog="examples:\n"
               "  genlab compare --data fashion-mnist --models seed-vae,seed-gan,conv-vae,dcgan --budget 10m\n"
               "  genlab compare --models seed-vae,seed-gan --budget 5ep --samples 2000\n"
               "  genlab compare --models runs/fm-conv-vae,runs/fm-dcgan      (reuse trained runs)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, metavar="LIST",
                   help="comma-separated presets (see `genlab models`) and/or run folders (reused as they are)")
    p.add_argument("--budget", metavar="B",
                   help="training per model: time (90s, 10m, 1h), epochs (5ep) or images seen (300kimg, 300000img); "
                        "default 5m of training time per model")
    _add_data_args(p, default=None,
                   data_help="data source (default: the reused runs' data, else digits; see `genlab datasets`)",
                   dir_help="folder holding the dataset files", channels_help="convert images to 1 or 3 channels")
    p.add_argument("--seed", type=int, default=0, help="seed of every model's training and of the evaluation (default 0)")
    p.add_argument("--samples", type=int, default=10_000, metavar="N", help="samples per model for the scores (default 10000)")
    p.add_argument("--likelihood-k", type=int, metavar="K", help="VAEs: IWAE NLL with K importance samples (default: ELBO)")
    p.add_argument("--name", help="comparison folder name (default: from the data, models, budget and seed)")
    p.add_argument("--out-root", default="compare", metavar="DIR", help="parent folder of comparisons (default compare)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing comparison of that name (kept aside as .NAME.replaced until the new "
                        "results are written; only a genlab comparison folder is ever replaced)")
    p.add_argument("--device", default="auto", help="training device: auto (default), cpu, cuda …")
    p.add_argument("--json", action="store_true", help="print results.json instead of a table")
    p.add_argument("--no-progress", action="store_true")


def _add_interpolate(sub) -> None:
    p = sub.add_parser("interpolate", help="decode a path between two latents (lerp / slerp)", description=(
        "Decode latents along straight (lerp) or great-circle (slerp; Shoemake 1985, White 2016) paths.\n"
        "VAEs: between the posterior means of test images (default: random pairs; --images I,J), shown\n"
        "beside the originals; --random, and every GAN: between noise vectors from the prior."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--images", metavar="I,J[,I,J...]", help="VAEs: pairs of test-split image indices as endpoints")
    g.add_argument("--random", action="store_true", help="endpoints drawn from the prior (default for GANs)")
    p.add_argument("--pairs", type=int, default=4, metavar="P", help="random pairs, one row each (default 4)")
    p.add_argument("--steps", type=int, default=8, metavar="S", help="images per path, ends included (default 8)")
    p.add_argument("--method", choices=("lerp", "slerp", "both"), default="slerp",
                   help="slerp (default), lerp, or both (a row of each per pair)")
    p.add_argument("--label", type=int, metavar="Y", help="conditional models: class of every row (default: one per row)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random endpoints (default 0)")
    p.add_argument("-o", "--output", help="output PNG (default RUN/interpolation.png)")
    _add_run_device(p)


def _add_traverse(sub) -> None:
    p = sub.add_parser("traverse", help="vary one latent dimension at a time", description=(
        "One row per latent dimension: that dimension runs over [-R, R] while the others stay at a base\n"
        "latent (the posterior mean of test image --image for VAEs, else a prior draw). VAEs default to\n"
        "the dimensions with the largest average KL on the test set; other models to 0..K-1."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--dims", metavar="D,D,...", help="latent dimensions to vary, e.g. 0,1,2")
    g.add_argument("--top", type=int, default=8, metavar="K", help="how many dimensions (default 8)")
    p.add_argument("--range", type=float, default=3.0, metavar="R", help="vary each dimension over [-R, R] (default 3)")
    p.add_argument("--steps", type=int, default=9, metavar="S", help="values per dimension (default 9)")
    p.add_argument("--image", type=int, metavar="I", help="VAEs: base latent = posterior mean of test image I")
    p.add_argument("--label", type=int, metavar="Y", help="conditional models: class of every row")
    p.add_argument("--seed", type=int, default=0, help="seed of the base latent's prior draw (default 0)")
    p.add_argument("-o", "--output", help="output PNG (default RUN/traversal.png)")
    _add_run_device(p)


def _add_listings(sub) -> None:
    """The two commands without options: what data and what models this installation offers."""
    sub.add_parser("datasets", help="list data sources and whether they are available here")
    sub.add_parser("models", help="list presets and models")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train seed-vae and seed-gan on the bundled digits and show where to look")
    p.add_argument("--out", default="runs/demo", help="folder for the two runs (default runs/demo; replaced each time)")
    p.add_argument("--no-progress", action="store_true")


# -- numeric options ------------------------------------------------------------------------
SEED_RANGE = {"minimum": 0, "maximum": 2 ** 64 - 1}  # what torch's generators take (negative seeds are folded)
# per command: argparse dest -> (option as typed, bounds). NaN and infinities are refused for every float.
OPTION_BOUNDS: dict[str, dict[str, tuple[str, dict]]] = {
    "train": {"epochs": ("--epochs", {"minimum": 1}), "batch_size": ("--batch-size", {"minimum": 1}),
              "lr": ("--lr", {"above": 0}), "seed": ("--seed", SEED_RANGE),
              "max_steps": ("--max-steps", {"minimum": 1}), "max_minutes": ("--max-minutes", {"above": 0}),
              "image_size": ("--image-size", {"minimum": 1})},
    "sample": {"num": ("-n", {"minimum": 1}), "seed": ("--seed", SEED_RANGE), "label": ("--label", {"minimum": 0}),
               "per_class": ("--per-class", {"minimum": 1}), "truncation": ("--truncation", {"above": 0})},
    "reconstruct": {"num": ("-n", {"minimum": 1})},
    "eval": {"num": ("-n", {"minimum": 2}), "seed": ("--seed", SEED_RANGE),
             "likelihood_k": ("--likelihood-k", {"minimum": 1}), "image_size": ("--image-size", {"minimum": 1})},
    "evaluator": {"epochs": ("--epochs", {"minimum": 1}), "image_size": ("--image-size", {"minimum": 1})},
    "compare": {"seed": ("--seed", SEED_RANGE), "samples": ("--samples", {"minimum": 2}),
                "likelihood_k": ("--likelihood-k", {"minimum": 1}), "image_size": ("--image-size", {"minimum": 1})},
    "interpolate": {"pairs": ("--pairs", {"minimum": 1}), "steps": ("--steps", {"minimum": 2}),
                    "seed": ("--seed", SEED_RANGE), "label": ("--label", {"minimum": 0})},
    "traverse": {"top": ("--top", {"minimum": 1}), "range": ("--range", {"above": 0}),
                 "steps": ("--steps", {"minimum": 2}), "image": ("--image", {"minimum": 0}),
                 "label": ("--label", {"minimum": 0}), "seed": ("--seed", SEED_RANGE)},
}


def check_options(args) -> None:
    """Clear errors for numeric options out of range (``-n 0``, ``--lr nan``, ``--epochs -1`` ...)
    before any work is done."""
    from .configcheck import check_number

    for dest, (option, bounds) in OPTION_BOUNDS.get(args.command, {}).items():
        check_number(getattr(args, dest, None), option, **bounds)


def check_images_memory(n: int, image_shape, what: str, fix: str) -> None:
    """Refuse ``n`` float32 images of ``image_shape`` (kept twice: the samples and the copy written out)
    when they would not fit in the memory available."""
    from .configcheck import check_memory

    c, h, w = (int(v) for v in image_shape)
    check_memory(2 * 4 * int(n) * c * h * w, f"{n:,} images of {c}x{h}x{w} ({what})", fix)


def _describe_os_error(e: OSError, args) -> str:
    """One line for a failed file operation: the file (or the command's output), the problem, what to do."""
    import errno

    if e.filename is None:  # raised mid-write (a full disk): name what the command was writing
        target = next((getattr(args, a) for a in ("output", "out", "resume", "run", "out_root")
                       if getattr(args, a, None)), None)
        where = f"while writing {target}" if target else "while reading or writing a file"
    elif e.filename2 is not None:  # a rename or copy: both ends
        where = f"{e.filename} -> {e.filename2}"
    else:
        where = str(e.filename)
    advice = {errno.ENOSPC: "the disk is full: free some space or write elsewhere (--out / -o)",
              errno.EDQUOT: "the disk quota is exhausted: free some space or write elsewhere",
              errno.EACCES: "permission denied: check the file's permissions or choose another path",
              errno.EPERM: "operation not permitted: check the file's permissions or choose another path",
              errno.EROFS: "the file system is read-only: write to another folder (--out / -o)",
              errno.ENOENT: "no such file or folder: check the path",
              errno.ENOTDIR: "a part of the path is not a folder: check the path",
              errno.EISDIR: "it is a folder, not a file: give a file path",
              errno.ENAMETOOLONG: "the file name is too long: choose a shorter one",
              errno.EEXIST: "a file is in the way where a folder is needed: choose another path",
              errno.EFBIG: "the file grew beyond what this process may write (ulimit -f) or the file system holds",
              errno.EIO: "an input/output error: the disk may be failing"}.get(e.errno)
    return f"{where}: {advice or (e.strerror or str(e))}" + (f" ({e.strerror})" if advice and e.strerror else "")


# -- commands -------------------------------------------------------------------------------
# Each handler turns options into one library call (a few where it checks sizes in between) and prints.
def cmd_train(args) -> int:
    from .training import distributed

    try:
        code = _train(args)
    except BaseException:
        distributed.shutdown(wait=False)  # under torchrun: torchrun stops the other processes
        raise
    if distributed.current().active:
        # under torchrun: leave the process group together, then exit at once. An ordinary exit
        # tears down C++ objects (gloo's threads among them) in an order that now and then aborts
        # the process ("terminate called without an active exception") after a run that went well.
        distributed.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _train(args) -> int:
    from .api import resume, train
    from .training import distributed

    progress = not args.no_progress
    max_seconds = None if args.max_minutes is None else 60.0 * args.max_minutes  # > 0: check_options
    if args.resume:
        if (args.model or args.set or args.gan_loss or args.augment is not None or args.lr is not None or args.batch_size is not None
                or args.lr_schedule):
            raise GenlabError("--resume continues a run with its own settings; only --epochs, --max-steps, "
                              "--max-minutes, --device, --precision, --compile and --channels-last may change.")
        result = resume(args.resume, epochs=args.epochs, max_steps=args.max_steps, max_seconds=max_seconds,
                        device=args.device, progress=progress, precision=args.precision, compile=args.compile,
                        channels_last=args.channels_last)
    else:
        if not args.model:
            raise GenlabError("name a model or preset to train (e.g. `genlab train seed-vae`), or --resume RUN. "
                              "`genlab models` lists them.")
        settings = _model_settings(args)
        set_lr = settings.pop("lr", None)  # train() takes the learning rate as its own argument
        lr = args.lr if args.lr is not None else set_lr
        result = train(args.model, args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                       lr=lr, seed=args.seed, max_steps=args.max_steps, max_seconds=max_seconds,
                       data_dir=args.data_dir, image_size=args.image_size, channels=args.channels,
                       device=args.device or "auto", progress=progress, overwrite=args.overwrite,
                       precision=args.precision, compile=bool(args.compile), channels_last=bool(args.channels_last),
                       lr_schedule=args.lr_schedule, **settings)
    if not distributed.current().is_main:  # under torchrun, rank 0 speaks for all
        return 130 if result.status == "interrupted" else 0
    print(f"run folder: {result.run_dir}")
    if result.samples:
        print(f"samples:    {result.samples}")
    again = f"continue with: genlab train --resume {result.run_dir}"
    if result.status == "interrupted":
        print(f"stopped at step {result.state.step}; {again}")
        return 130
    if result.status == "max_steps":
        print(f"stopped at --max-steps ({result.state.step}); {again}")
    if result.status == "max_seconds":
        print(f"stopped at the time limit after {result.state.train_seconds:.1f} s of training (step "
              f"{result.state.step}); {again} [--max-minutes M]")
    return 0


def _model_settings(args) -> dict:
    """--set KEY=VALUE and --g-loss as model settings, each checked against the model's config (name,
    type, range) before any data is loaded, so that an error names the option."""
    from .api import adversarial_loss_setting
    from .models.registry import make_config, resolve

    model = resolve(args.model).model
    settings = dict(args.set)
    if args.gan_loss:
        settings.update(adversarial_loss_setting(args.model, args.gan_loss))
    if args.augment is not None:
        settings.update(_augment_setting(args.model, model, args.augment))
    make_config(model, settings, what=f"model {model!r}: --set")
    return settings


def _augment_setting(name: str, model: str, policy: str) -> dict[str, str]:
    """--augment POLICY as the model setting ``augment``, checked: a model without a discriminator, or an
    unknown augmentation, is a GenlabError naming the option."""
    import dataclasses

    from .models.registry import MODELS
    from .nets.augment import parse_policy

    if "augment" not in {f.name for f in dataclasses.fields(MODELS[model].config_cls)}:
        raise GenlabError(f"--augment applies to models with a discriminator (the GANs and the VAE-GAN); {name} "
                          f"({model}) has none (see `genlab models`).")
    parse_policy(policy, "--augment")
    return {"augment": policy}


def _check_grid_memory(n: int, image_shape) -> None:
    """A PNG grid holds every image enlarged to cells of at least 32 pixels, as uint8, about three
    times over while it is built and encoded."""
    import math

    from .configcheck import check_memory

    c, h, w = (int(v) for v in image_shape)
    scale = max(1, math.ceil(32 / max(h, w)))
    check_memory(3 * int(n) * c * (h * scale + 2) * (w * scale + 2), f"a PNG grid of {n:,} images",
                 "Ask for fewer samples with -n, or write them to an .npz file (-o samples.npz).")


def _output(args, default: str) -> Path:
    return Path(args.output) if args.output else Path(args.run) / default


def cmd_sample(args) -> int:
    from .eval.report import save_npz_images
    from .training.run import Run
    from .viz import latent, save_grid

    out = _output(args, "samples/sample.png")
    if out.suffix.lower() not in (".npz", ".png"):
        raise GenlabError(f"output {out} must end in .png (a grid) or .npz (raw samples)")
    run = Run(args.run)
    model = run.load_model(args.device)
    n = latent.sample_count(model, args.num, args.label, args.per_class)
    # before anything of that size is allocated (labels included)
    check_images_memory(n, model.image_shape, "genlab sample",
                        "Ask for fewer samples with -n (or --per-class), e.g. several smaller .npz files drawn "
                        "with different --seed values.")
    if out.suffix.lower() == ".png":
        _check_grid_memory(n, model.image_shape)
    images, nrow = latent.draw_samples(model, n, seed=args.seed, label=args.label, per_class=args.per_class,
                                       truncation=args.truncation, device=args.device,
                                       class_names=run.config["data"].get("class_names"))
    if out.suffix.lower() == ".npz":
        save_npz_images(images, out)
    else:
        save_grid(images, out, nrow=nrow)
    print(f"wrote {n} samples to {out}")
    if args.truncation is not None:
        print(f"truncation {args.truncation:g}: latent components outside [-{args.truncation:g}, {args.truncation:g}] "
              "were resampled (Brock et al. 2019), so samples lie nearer the prior's centre and vary less.")
    return 0


def cmd_reconstruct(args) -> int:
    from .training.run import Run
    from .viz import latent
    from .viz.grid import paired_rows, save_grid

    run = Run(args.run)
    model = run.load_model(args.device)
    if not model.encodes:
        raise GenlabError(f"{args.run} holds a {model.family.upper()} ({run.config['model']}); only VAEs "
                          "reconstruct. Use `genlab sample` instead.")
    split = latent.image_split(run.dataset())
    x = split.images[: args.num].float().div(255).to(args.device)
    labels = None if split.labels is None else split.labels[: args.num].to(args.device)
    recon = model.reconstruct(x, labels).cpu()
    out = _output(args, "reconstructions.png")
    save_grid(paired_rows(x, recon), out, nrow=8)
    print(f"wrote {x.shape[0]} originals (odd rows) and reconstructions (even rows) to {out}")
    return 0


def cmd_eval(args) -> int:
    from .eval import calibrate, evaluate_npz, evaluate_run, format_calibration, format_table, get_evaluator

    progress = not args.no_progress
    inception = args.features == "inception"
    if sum(bool(x) for x in (args.run, args.samples, args.calibrate)) != 1:
        raise GenlabError("give exactly one of: a run folder, --samples FILE.npz, or --calibrate.")
    if args.calibrate:
        from .data import load_dataset

        if inception:
            from .eval.inception import check_inception_available

            check_inception_available()
        ds = load_dataset(args.data, data_dir=args.data_dir, image_size=args.image_size, channels=args.channels,
                          progress=progress)
        rows = calibrate(ds, get_evaluator(ds, progress=progress), n=args.num, seed=args.seed,
                         reference=args.reference)
        print(json.dumps(rows, indent=2) if args.json else format_calibration(rows))
        return 0
    if args.samples:
        result = evaluate_npz(args.samples, args.data, reference=args.reference, seed=args.seed,
                              data_dir=args.data_dir, progress=progress,
                              inception_reference=args.num if inception else None)
    else:
        result = evaluate_run(args.run, n_samples=args.num, reference=args.reference, seed=args.seed,
                              likelihood_k=args.likelihood_k, binarize=args.binarize, progress=progress,
                              inception=inception)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    if "inception" in result and not args.json:
        r = result["inception"]
        print(f"Inception features: FID {r['fid']:.2f}  KID {r['kid']:.4f}")
    if args.run:
        from .training.run import Run

        print(f"written to {Run(args.run).eval_path}")
    return 0


def cmd_evaluator(args) -> int:
    from .data import load_dataset
    from .eval import get_evaluator, train_evaluator
    from .eval.evaluator import evaluator_cache_root, fingerprint, save_evaluator

    progress = not args.no_progress
    ds = load_dataset(args.data, data_dir=args.data_dir, image_size=args.image_size, channels=args.channels,
                      progress=progress)
    if args.action == "train":
        ev = train_evaluator(ds, epochs=args.epochs, progress=progress)
        save_evaluator(ev, evaluator_cache_root() / fingerprint(ds))
    else:
        ev = get_evaluator(ds, train_if_missing=False)
    print(json.dumps(ev.info, indent=2))
    return 0


def cmd_compare(args) -> int:
    from .compare import format_results, run_compare

    models = [m for m in args.models.split(",") if m.strip()]
    res = run_compare(models, data=args.data, budget=args.budget, seed=args.seed, samples=args.samples,
                      likelihood_k=args.likelihood_k, name=args.name, out_root=args.out_root, overwrite=args.overwrite,
                      data_dir=args.data_dir, image_size=args.image_size, channels=args.channels, device=args.device,
                      progress=not args.no_progress, log=lambda msg: print(msg, flush=True))
    print()
    print(json.dumps(res.results, indent=2) if args.json else format_results(res.results))
    print()
    print(f"report:  {res.report_path}")
    print(f"results: {res.results_path}")
    return 0


def _int_list(text: str | None, option: str) -> list[int] | None:
    """``0,5,7`` as integers; None when the option is absent (or empty)."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GenlabError(f"{option} takes comma-separated integers, e.g. {option} 0,5; got {text!r}.") from None


def cmd_interpolate(args) -> int:
    from .training.run import Run
    from .viz import latent, save_grid

    run = Run(args.run)
    model = run.load_model(args.device)
    methods = latent.METHODS if args.method == "both" else (args.method,)
    n_images = args.pairs * len(methods) * (args.steps + 2)
    check_images_memory(n_images, model.image_shape, "genlab interpolate", "Use fewer --pairs or --steps.")
    _check_grid_memory(n_images, model.image_shape)
    images, per_row, ends = latent.interpolation(
        model, lambda: run.dataset(progress=False), pairs=args.pairs, steps=args.steps, methods=methods,
        seed=args.seed, indices=_int_list(args.images, "--images"), from_prior=args.random, label=args.label)
    out = _output(args, "interpolation.png")
    save_grid(images, out, nrow=per_row)
    order = "" if len(methods) == 1 else " (per pair: a lerp row, then a slerp row)"
    print(f"wrote {ends.z0.shape[0] * len(methods)} rows of {args.steps} steps, {' and '.join(methods)}{order}, "
          f"{ends.what} to {out}")
    return 0


def cmd_traverse(args) -> int:
    from .training.run import Run
    from .viz import latent, save_grid

    run = Run(args.run)
    model = run.load_model(args.device)
    dims = _int_list(args.dims, "--dims")
    rows = len(dims) if dims is not None else args.top
    check_images_memory(rows * args.steps, model.image_shape, "genlab traverse", "Use fewer --steps or dimensions.")
    _check_grid_memory(rows * args.steps, model.image_shape)
    t = latent.traversal(model, lambda: run.dataset(progress=False), dims=dims, top=args.top, image=args.image,
                         seed=args.seed, value_range=args.range, steps=args.steps, label=args.label)
    out = _output(args, "traversal.png")
    save_grid(t.images, out, nrow=args.steps)
    print(f"latent dimensions (one row each): {t.how}")
    print(f"wrote {len(t.dims)} rows of {args.steps} values in [-{args.range:g}, {args.range:g}] around {t.base} "
          f"to {out}")
    return 0


def cmd_datasets(args) -> int:
    from .data import dataset_status

    rows = dataset_status()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "yes" if r["available"] else "no "
        print(f"{r['name']:<{width}}  {mark}  {r['where']}")
        for line in r.get("how", "").replace("   - ", "\n- ").splitlines():
            print(f"{'':<{width}}       {line.strip()}")
    return 0


def cmd_models(args) -> int:
    from .models.registry import MODELS, PRESETS

    print("presets:")
    for p in PRESETS.values():
        print(f"  {p.name:<14} {p.description}")
    print("models (train with their defaults, or tune with --set):")
    for m in MODELS.values():
        print(f"  {m.name:<14} {m.description}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), progress=not args.no_progress)
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "reconstruct": cmd_reconstruct, "eval": cmd_eval,
            "evaluator": cmd_evaluator, "compare": cmd_compare, "interpolate": cmd_interpolate,
            "traverse": cmd_traverse,
            "datasets": cmd_datasets, "models": cmd_models, "demo": cmd_demo}


OUT_OF_MEMORY = "out of memory; use fewer samples (-n), a smaller --batch-size or a smaller model."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        check_options(args)
        return COMMANDS[args.command](args)
    except GenlabError as e:
        print(f"genlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\naborted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `genlab datasets | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # a full disk, a read-only folder, a file without permission
        print(f"genlab {args.command}: error: {_describe_os_error(e, args)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"genlab {args.command}: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # PyTorch's allocators report an exhausted memory as a RuntimeError
        if not any(s in str(e) for s in ("can't allocate memory", "out of memory", "not enough memory")):
            raise
        print(f"genlab {args.command}: error: {OUT_OF_MEMORY} ({str(e).splitlines()[0][:200]})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
