"""Differentiable augmentation (DiffAugment, Zhao et al. 2020; genlab.nets.augment) and the GANs' ``augment``
setting: each operation is exact and differentiable, the discriminator sees real and generated images
through it in both steps, and a run with it on is reproducible and resumes bit-identically."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import genlab
import genlab.models.zoo  # noqa: F401  (registers the convolutional models)
from genlab.data import load_dataset
from genlab.errors import GenlabError
from genlab.models import build_model
from genlab.models.base import Batch, StepContext, as_float_images
from genlab.models.losses import reparameterize
from genlab.nets import has_batchnorm
from genlab.nets.augment import (
    AUGMENT_OPS,
    DiffAugment,
    brightness,
    contrast,
    cutout,
    parse_policy,
    random_color,
    random_cutout,
    saturation,
    translate,
)
from genlab.training import checkpoint as ckpt
from genlab.training.context import TrainingContext
from genlab.training.distributed import DistInfo

SRC = str(Path(__file__).resolve().parents[1] / "src")
POLICY = "color,translation,cutout"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def digits_batch():
    """32 of scikit-learn's 8x8 digits, float in [0, 1], with their labels."""
    data = load_dataset("digits")
    return Batch(as_float_images(data.train.images[:32]), data.train.labels[:32])


class FixedDraws:
    """A stand-in for a StepContext whose ``rand`` returns the value ``u`` everywhere."""

    def __init__(self, u: float):
        self.u = u

    def rand(self, *shape, device=None, batch_dim=0):
        return torch.full(shape, self.u)


# ----------------------------------------------------------------------------- the operations


def test_each_operation_passes_gradcheck_in_float64_with_fixed_parameters():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    dy, dx = torch.tensor([1, -2, 0]), torch.tensor([-1, 0, 3])
    top, left = torch.tensor([-1, 2, 3]), torch.tensor([0, -2, 4])
    b, s, c = (torch.tensor(v, dtype=torch.float64) for v in ([0.2, -0.1, 0.0], [0.3, 1.7, 1.0], [0.6, 1.4, 1.0]))
    for name, fn in {"translation": lambda t: translate(t, dy, dx),
                     "cutout": lambda t: cutout(t, top, left, (3, 3)),
                     "brightness": lambda t: brightness(t, b),
                     "saturation": lambda t: saturation(t, s),
                     "contrast": lambda t: contrast(t, c)}.items():
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-9), name
        assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-9), name  # for R1 / the GP through it


def test_the_gradient_reaches_surviving_pixels_and_not_those_cut_out_or_shifted_out():
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    cutout(x, torch.tensor([2, -2]), torch.tensor([3, 5]), (4, 4)).sum().backward()
    removed = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    removed[0, :, 2:6, 3:7] = True
    removed[1, :, 0:2, 5:8] = True  # the square hangs over the top and right borders
    assert torch.equal(x.grad, (~removed).float())

    x.grad = None
    translate(x, torch.tensor([2, -1]), torch.tensor([0, 3])).sum().backward()
    kept = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    kept[0, :, 0:6, :] = True  # shifted down by 2: the last two rows leave the image
    kept[1, :, 1:8, 0:5] = True  # up by 1, right by 3
    assert torch.equal(x.grad, kept.float())

    # through the whole policy with random parameters: a weighted loss, so that the colour ops' means
    # do not cancel the gradient; a pixel cut out or shifted out gets none, the others do
    x.grad = None
    torch.manual_seed(1)
    y = DiffAugment(POLICY)(x, StepContext())
    y.mul(torch.randn_like(y)).sum().backward()
    assert x.grad.abs().sum() > 0 and (x.grad != 0).float().mean() > 0.3


@pytest.mark.parametrize("dy,dx", [(0, 0), (2, 1), (-1, 3), (3, -3), (-2, -2)])
def test_translation_by_known_offsets_is_a_roll_with_the_wrapped_pixels_zeroed(dy, dx):
    x = torch.rand(2, 3, 7, 9)
    expected = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    expected[:, :, :dy] = 0 if dy > 0 else expected[:, :, :dy]
    expected[:, :, dy:] = 0 if dy < 0 else expected[:, :, dy:]
    expected[:, :, :, :dx] = 0 if dx > 0 else expected[:, :, :, :dx]
    expected[:, :, :, dx:] = 0 if dx < 0 else expected[:, :, :, dx:]
    out = translate(x, torch.tensor([dy, dy]), torch.tensor([dx, dx]))
    assert torch.equal(out, expected)


def test_cutout_zeroes_a_square_of_half_the_image_and_nothing_else():
    x = torch.ones(1, 1, 28, 28)
    out = cutout(x, torch.tensor([5]), torch.tensor([9]), (14, 14))
    assert torch.equal((out == 0).nonzero()[:, 2:].unique(dim=0),
                       torch.cartesian_prod(torch.arange(5, 19), torch.arange(9, 23)))
    # random squares: side 14 for 28x28, the part inside the image, nowhere else
    torch.manual_seed(0)
    out = random_cutout(torch.ones(500, 1, 28, 28), StepContext())
    zero = out[:, 0] == 0
    rows, cols = zero.any(2), zero.any(1)
    assert torch.equal(zero, rows.unsqueeze(2) & cols.unsqueeze(1))  # a rectangle per image
    for span in (rows.sum(1), cols.sum(1)):
        assert span.min() >= 7 and span.max() == 14  # at least half the square stays inside
    assert bool(rows[:, 0].any()) and bool(rows[:, 27].any())  # it reaches both borders
    on_border = rows[:, 0] | rows[:, 27]
    assert torch.equal(rows.sum(1)[~on_border], torch.full(((~on_border).sum(),), 14))  # whole squares inside
    # a 3x5 image: side round(1.5) = 2 rows, round(2.5) = 3 columns
    out = random_cutout(torch.ones(200, 1, 3, 5), StepContext())
    assert (out == 0).any(3).sum(2).max() == 2 and (out == 0).any(2).sum(2).max() == 3


def test_color_parameters_stay_in_their_ranges_at_both_ends():
    x = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2).repeat(1, 3, 1, 1)
    x[:, 0] += 0.1  # channels differ, so that saturation has something to scale
    grey = x.mean(1, keepdim=True).expand_as(x)
    for u, b, s, c in ((0.0, -0.25, 0.0, 0.5), (1.0, 0.25, 2.0, 1.5)):
        expected = contrast(saturation(brightness(x, torch.tensor([b])), torch.tensor([s])), torch.tensor([c]))
        assert torch.allclose(random_color(x, FixedDraws(u)), expected, atol=1e-6), u
    assert torch.allclose(saturation(x, torch.tensor([0.0])), grey)  # s = 0: grey
    # with the real stream: a constant image only moves by its brightness, within +-1/4, both ways
    torch.manual_seed(0)
    flat = random_color(torch.full((1000, 1, 4, 4), 0.5), StepContext())
    shift = flat[:, 0, 0, 0] - 0.5
    assert torch.equal(flat, (0.5 + shift).view(-1, 1, 1, 1).expand_as(flat))
    assert shift.abs().max() <= 0.25 and shift.min() < -0.2 and shift.max() > 0.2
    # contrast alone scales the deviation from the image mean by c in [1/2, 3/2]
    torch.manual_seed(0)
    two = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2).repeat(1000, 1, 1, 1)
    factor = torch.stack([contrast(two, torch.rand(1000) + 0.5)])
    spread = (factor[0, :, 0, 0, 1] - factor[0, :, 0, 0, 0]) / 0.4
    assert spread.min() >= 0.5 - 1e-6 and spread.max() <= 1.5 + 1e-6


def test_an_empty_policy_is_the_identity_and_draws_nothing():
    x = torch.rand(4, 1, 8, 8)
    state = torch.get_rng_state()
    for policy in ("", " ", ", ,"):
        aug = DiffAugment(policy)
        assert not aug and aug(x, StepContext()) is x
    assert torch.equal(torch.get_rng_state(), state)
    assert DiffAugment("cutout, translation").ops == ("cutout", "translation")


def test_bad_policies_name_the_field_the_value_and_the_allowed_names():
    with pytest.raises(GenlabError, match=r"augment = 'color,flip' .*'flip'.*color, translation, cutout"):
        parse_policy("color,flip")
    with pytest.raises(GenlabError, match="named twice"):
        parse_policy("cutout,cutout")
    for model in ("mlp-gan", "conv-gan", "vae-gan"):
        with pytest.raises(GenlabError, match=r"augment = 'Color' .*color, translation, cutout"):
            build_model(model, {"augment": "Color"}, (1, 8, 8), 10)
        with pytest.raises(GenlabError, match=r"augment = 3 is not valid: expected a string"):
            build_model(model, {"augment": 3}, (1, 8, 8), 10)
    assert AUGMENT_OPS == ("color", "translation", "cutout")


def test_under_torchrun_each_process_augments_its_images_as_one_process_would():
    x = torch.rand(6, 3, 8, 8)
    single = TrainingContext("fp32", "cpu")
    single.begin_step(6, 6)
    torch.manual_seed(5)
    whole = DiffAugment(POLICY)(x, single)
    for rank in (0, 1):
        ctx = TrainingContext("fp32", "cpu", DistInfo(rank=rank, world_size=2))
        ctx.begin_step(3, 6)
        torch.manual_seed(5)
        assert torch.equal(DiffAugment(POLICY)(x[rank::2], ctx), whole[rank::2])


# ----------------------------------------------------------------------------- inside the GANs' steps


def record_inputs(module: torch.nn.Module) -> list[tuple]:
    """The positional arguments of every call of ``module`` from now on."""
    calls: list[tuple] = []
    module.register_forward_pre_hook(lambda m, args: calls.append(args))
    return calls


def step_and_replay(model, batch, replay):
    """One train_step of ``model`` recording its discriminator's inputs, and the inputs it should have
    seen: ``replay(reference, batch, ctx)`` recomputes them from an untouched copy of the model and the
    same random stream."""
    reference = copy.deepcopy(model)
    calls = record_inputs(model.discriminator)
    state = torch.get_rng_state()
    model.train_step(batch, 0, model.configure_optimizers())
    torch.set_rng_state(state)
    with torch.no_grad():
        expected = replay(reference, batch, StepContext())
    return calls, expected


@pytest.mark.parametrize("settings", [
    {},  # DCGAN: BatchNorm in D, real and fake scored in separate passes
    {"conditional": True, "loss": "hinge", "spectral_norm": True, "d_batchnorm": False},  # projection D, one pass
    {"loss": "wasserstein", "gp_weight": 10.0, "d_batchnorm": False},  # + the gradient penalty's passes
    {"r1_gamma": 1.0, "d_batchnorm": False},
], ids=["dcgan", "cgan", "wgan-gp", "r1"])
def test_conv_gan_scores_augmented_real_and_fake_in_the_d_step_and_augmented_fakes_in_the_g_step(
        digits_batch, settings):
    # the digits at 16x16, so that D has two stages and DCGAN's D its BatchNorm
    batch = Batch(F.interpolate(digits_batch.images, scale_factor=2), digits_batch.labels)
    torch.manual_seed(0)
    model = build_model("conv-gan", {"width": 8, "augment": POLICY, **settings}, (1, 16, 16), 10)
    separate = has_batchnorm(model.discriminator)  # BatchNorm: real and fake in separate passes
    assert separate == (not settings)
    conditional = model.conditional
    labels = batch.labels if conditional else None
    aug, n = DiffAugment(POLICY), batch.images.shape[0]

    def replay(ref, batch, ctx):
        z = torch.randn(n, ref.config.z_dim)
        real, fake = aug(batch.images, ctx), aug(ref.generate(z, labels), ctx)
        if settings.get("gp_weight"):
            torch.rand(n)  # the interpolation weights
        z = torch.randn(n, ref.config.z_dim)
        return real, fake, aug(ref.generate(z, labels), ctx)

    calls, (real, fake, fake_g) = step_and_replay(model, batch, replay)
    seen = [args[0] for args in calls]
    d_step = torch.cat(seen[:2]) if separate else seen[0]
    assert torch.allclose(d_step, torch.cat([real, fake]), atol=1e-6)
    assert not torch.allclose(real, batch.images, atol=0.05)  # augmented, not the batch itself
    assert torch.allclose(seen[-1], fake_g, atol=1e-6) and seen[-1].requires_grad  # G's gradient flows through
    if conditional:  # the projection head gets each image's own label, unchanged
        assert torch.equal(calls[0][1], torch.cat([labels, labels])) and torch.equal(calls[-1][1], labels)
    if settings.get("gp_weight"):  # the penalty's interpolates lie between the augmented real and fake
        x_hat = seen[1].detach()
        eps = (x_hat - fake).flatten(1).sum(1) / (real - fake).flatten(1).sum(1)
        assert torch.allclose(x_hat, eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake, atol=1e-5)
    assert len(seen) == (3 if separate or settings.get("gp_weight") else 2)


def test_mlp_gan_scores_augmented_real_and_fake_and_trains_g_through_the_augmentation(digits_batch):
    torch.manual_seed(0)
    model = build_model("mlp-gan", {"hidden": 32, "augment": POLICY}, (1, 8, 8))
    aug, n = DiffAugment(POLICY), digits_batch.images.shape[0]

    def replay(ref, batch, ctx):
        z = torch.randn(n, ref.config.z_dim)
        real, fake = aug(batch.images, ctx), aug(ref.generate(z), ctx)
        return real, fake, aug(ref.generate(torch.randn(n, ref.config.z_dim)), ctx)

    calls, (real, fake, fake_g) = step_and_replay(model, digits_batch, replay)
    (d_in,), (g_in,) = calls
    assert torch.allclose(d_in, torch.cat([real, fake]).flatten(1), atol=1e-6)
    assert not torch.allclose(real, digits_batch.images, atol=0.05)
    assert torch.allclose(g_in, fake_g.flatten(1), atol=1e-6) and g_in.requires_grad


def test_vae_gan_augments_d_inputs_but_not_the_feature_reconstruction(digits_batch):
    torch.manual_seed(0)
    model = build_model("vae-gan", {"width": 8, "augment": POLICY}, (1, 8, 8))
    aug, n = DiffAugment(POLICY), digits_batch.images.shape[0]
    features = []
    model.discriminator.features = lambda x, f=model.discriminator.features: features.append(x) or f(x)

    def replay(ref, batch, ctx):
        x = batch.images
        eps, z_p = torch.randn(n, ref.config.z_dim), torch.randn(n, ref.config.z_dim)
        x_tilde = ref.decode(reparameterize(*ref.encode(x), eps))
        x_p = ref.decode(z_p)
        d_step = torch.cat([aug(x, ctx), aug(x_tilde, ctx), aug(x_p, ctx)])
        return d_step, torch.cat([aug(x_tilde, ctx), aug(x_p, ctx)]), torch.cat([x, x_tilde])

    calls, (d_step, g_step, unaugmented) = step_and_replay(model, digits_batch, replay)
    (d_in,), (g_in,) = calls
    assert torch.allclose(d_in, d_step, atol=1e-6)
    assert torch.allclose(g_in, g_step, atol=1e-6) and g_in.requires_grad
    (f_in,) = features  # L_llike compares D's features of x and x~ as they are
    assert torch.allclose(f_in, unaugmented, atol=1e-6)


# ----------------------------------------------------------------------------- whole runs


def checkpoint(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_checkpoint(run / "checkpoints" / "last.safetensors")[0]


def test_a_digits_run_with_augment_is_reproducible_and_resumes_bit_identically(tmp_path):
    # 1437 digits, batch 64: 23 steps per epoch; the part run stops inside epoch 2
    kw = {"epochs": 2, "progress": False, "augment": POLICY, "width": 16}
    full = genlab.train("dcgan", "digits", out=tmp_path / "full", **kw)
    genlab.train("dcgan", "digits", out=tmp_path / "again", **kw)
    part = genlab.train("dcgan", "digits", out=tmp_path / "part", max_steps=30, **kw)
    assert part.status == "max_steps" and part.state.step == 30
    resumed = genlab.resume(tmp_path / "part", progress=False)
    assert resumed.status == "completed" and resumed.state.step == full.state.step == 46
    a = checkpoint(tmp_path / "full")
    off = genlab.train("dcgan", "digits", out=tmp_path / "off", **{**kw, "augment": ""})
    for other in (checkpoint(tmp_path / "again"), checkpoint(tmp_path / "part")):
        assert a.keys() == other.keys() and any(k.startswith("optim/") for k in a)
        for k in a:
            assert torch.equal(a[k], other[k]), k
    b = checkpoint(off.run_dir)  # and the setting does change the training
    assert not any(torch.equal(a[k], b[k]) for k in a if k.startswith("model/") and k.endswith(".weight"))
    assert genlab.load(tmp_path / "part").config.augment == POLICY  # kept in the run's config


def test_the_cli_sets_augment_on_a_gan_and_refuses_it_for_a_vae(tmp_path):
    def genlab_cli(*args):
        env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "genlab", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300, check=False)

    r = genlab_cli("train", "seed-gan", "--augment", "translation,cutout", "--max-steps", "2", "--out", tmp_path / "g",
                   "--no-progress")
    assert r.returncode == 0, r.stderr
    assert genlab.load(tmp_path / "g").config.augment == "translation,cutout"
    r = genlab_cli("train", "seed-vae", "--augment", "cutout")
    assert r.returncode == 2 and "--augment applies to models with a discriminator" in r.stderr
    r = genlab_cli("train", "dcgan", "--augment", "colour")
    assert r.returncode == 2 and "'colour'" in r.stderr and "color, translation, cutout" in r.stderr
    r = genlab_cli("train", "--resume", tmp_path / "g", "--augment", "cutout")
    assert r.returncode == 2 and "--resume continues a run with its own settings" in r.stderr
