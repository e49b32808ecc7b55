"""Latent-space tools: lerp/slerp, interpolation strips, traversals, the truncation trick, and their CLI."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.data import load_dataset
from genlab.errors import GenlabError
from genlab.models import build_model
from genlab.models.vae import MLPVAE
from genlab.viz import latent

SRC = str(Path(__file__).resolve().parents[1] / "src")


def genlab_cli(*args):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "genlab", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent") / "vae"
    genlab.train("seed-vae", "digits", out=out, epochs=5, progress=False, device="cpu")
    return out


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent") / "gan"
    genlab.train("seed-gan", "digits", out=out, epochs=1, progress=False, device="cpu")
    return out


# ----------------------------------------------------------------------------- lerp / slerp

def test_lerp_midpoint_and_ends():
    a, b = torch.tensor([[0.0, 2.0, -4.0]]), torch.tensor([[2.0, 4.0, 0.0]])
    assert torch.equal(latent.lerp(a, b, 0.5), torch.tensor([[1.0, 3.0, -2.0]]))
    assert torch.equal(latent.lerp(a, b, 0.0), a) and torch.equal(latent.lerp(a, b, 1.0), b)


def test_slerp_ends_are_the_inputs_and_unit_vectors_stay_on_the_sphere():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g)
    path = latent.interpolate(a, b, 9, "slerp")
    assert path.shape == (5, 9, 64)
    assert torch.allclose(path[:, 0], a, atol=1e-5) and torch.allclose(path[:, -1], b, atol=1e-5)
    ua, ub = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    norms = latent.interpolate(ua, ub, 11, "slerp").norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # lerp cuts through the ball: its midpoint between two unit vectors is shorter than 1
    assert (latent.interpolate(ua, ub, 3, "lerp")[:, 1].norm(dim=-1) < 0.99).all()
    # slerp between vectors of equal norm r keeps norm r, where a Gaussian latent lives
    r = 8.0
    assert torch.allclose(latent.slerp(r * ua, r * ub, 0.5).norm(dim=-1), torch.full((5,), r), atol=1e-4)


def test_slerp_of_parallel_or_opposite_vectors_falls_back_to_lerp():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    for b in (2 * a, a.clone(), -a):
        out = latent.slerp(a, b, torch.tensor([0.25]))
        assert torch.isfinite(out).all()
        assert torch.allclose(out, latent.lerp(a, b, torch.tensor([0.25])), atol=1e-6)


def test_interpolate_rejects_bad_arguments():
    a = torch.zeros(1, 4)
    with pytest.raises(GenlabError, match="at least 2 steps"):
        latent.interpolate(a, a, 1)
    with pytest.raises(GenlabError, match="lerp, slerp"):
        latent.interpolate(a, a, 3, "cubic")


# ----------------------------------------------------------------------------- truncation

@pytest.mark.parametrize("t", [0.01, 0.5, 2.0])
def test_truncated_normal_never_exceeds_the_threshold(t):
    z = latent.truncated_normal(512, 100, t, torch.Generator().manual_seed(0))
    assert z.shape == (512, 100)
    assert z.abs().max() <= t
    assert z.std() > 0.25 * t  # spread over the interval, not piled at one value


def test_truncation_keeps_the_components_already_inside():
    z = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    zt = latent.truncated_normal(64, 32, 1.0, torch.Generator().manual_seed(3))
    inside = z.abs() <= 1.0
    assert torch.equal(zt[inside], z[inside]) and not torch.equal(zt, z)


def test_truncation_needs_a_standard_normal_prior(vae_run):
    model = genlab.load(vae_run)
    images = latent.truncated_samples(model, 6, 0.7, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, 1, 8, 8) and 0 <= images.min() and images.max() <= 1

    class LearnedPriorVAE(MLPVAE):
        def prior_sample(self, n, generator=None):
            return super().prior_sample(n, generator) * 0.5 + 1.0

    other = LearnedPriorVAE(model.config, model.image_shape)
    assert latent.standard_normal_prior(model) and not latent.standard_normal_prior(other)
    # a model that overrides prior_sample but declares the standard normal (a conv VAE without a fitted prior)
    conv = build_model("conv-vae", {"z_dim": 4}, (1, 8, 8))
    assert conv.has_standard_normal_prior and latent.standard_normal_prior(conv)
    with pytest.raises(GenlabError, match="learned\\) prior"):
        latent.truncated_samples(other, 4, 0.5)
    with pytest.raises(GenlabError, match="greater than 0"):
        latent.truncated_normal(4, 4, 0.0)


# ----------------------------------------------------------------------------- on a trained VAE

def test_interpolation_starts_and_ends_at_the_decoded_endpoints(vae_run):
    model = genlab.load(vae_run)
    test = load_dataset("digits").test
    x0, x1 = test.images[[0, 1]], test.images[[2, 3]]
    z0, z1 = latent.posterior_means(model, x0), latent.posterior_means(model, x1)
    for method in ("lerp", "slerp"):
        images, per_row = latent.interpolation_images(model, z0, z1, steps=6, methods=(method,), ends=(x0, x1))
        assert per_row == 8 and images.shape == (2 * 8, 1, 8, 8)
        rows = images.view(2, 8, 1, 8, 8)
        assert torch.equal(rows[:, 0], x0.float() / 255) and torch.equal(rows[:, -1], x1.float() / 255)
        assert torch.allclose(rows[:, 1], model.decode(z0), atol=1e-5)
        assert torch.allclose(rows[:, -2], model.decode(z1), atol=1e-5)
        assert not torch.allclose(rows[:, 3], rows[:, 1], atol=1e-3)  # the path moves


def test_traversal_grid_shape_and_rows(vae_run):
    model = genlab.load(vae_run)
    base = torch.zeros(model.latent_dim)
    images = latent.traversal_images(model, base, [0, 5, 9], value_range=2.0, steps=5)
    assert images.shape == (3 * 5, 1, 8, 8)
    z = torch.zeros(5, model.latent_dim)
    z[:, 5] = torch.linspace(-2, 2, 5)
    assert torch.allclose(images[5:10], model.decode(z), atol=1e-6)
    with pytest.raises(GenlabError, match="dimension 64 does not exist"):
        latent.traversal_images(model, base, [64])
    kl = latent.kl_per_dimension(model, load_dataset("digits").test.images[:100])
    assert kl.shape == (model.latent_dim,) and (kl >= 0).all()


# ----------------------------------------------------------------------------- CLI

def test_cli_interpolate_traverse_and_truncated_sampling_write_pngs(vae_run, gan_run, tmp_path):
    r = genlab_cli("interpolate", vae_run, "--images", "0,1,2,3", "--steps", "6", "--method", "both",
                   "-o", tmp_path / "i.png")
    assert r.returncode == 0, r.stderr
    assert "lerp and slerp" in r.stdout and "0->1, 2->3" in r.stdout
    # 2 pairs x 2 methods = 4 rows of 6 steps + the 2 originals, 34-pixel cells
    assert Image.open(tmp_path / "i.png").size == (8 * 34 + 2, 4 * 34 + 2)

    r = genlab_cli("interpolate", gan_run, "--pairs", "3", "--steps", "5", "-o", tmp_path / "g.png")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "g.png").size == (5 * 34 + 2, 3 * 34 + 2)

    r = genlab_cli("traverse", vae_run, "--top", "3", "--steps", "7", "-o", tmp_path / "t.png")
    assert r.returncode == 0, r.stderr
    assert "largest average KL" in r.stdout
    assert Image.open(tmp_path / "t.png").size == (7 * 34 + 2, 3 * 34 + 2)
    # around a labelled test image: the label is the image's class only for conditional models
    r = genlab_cli("traverse", vae_run, "--image", "3", "--top", "2", "-o", tmp_path / "t3.png")
    assert r.returncode == 0, r.stderr
    assert "posterior mean of test image 3" in r.stdout

    r = genlab_cli("sample", gan_run, "-n", "16", "--truncation", "0.5", "-o", tmp_path / "s.png")
    assert r.returncode == 0, r.stderr
    assert "truncation 0.5" in r.stdout
    img = np.asarray(Image.open(tmp_path / "s.png"))
    assert img.shape == (4 * 34 + 2, 4 * 34 + 2) and img.std() > 5


def test_cli_gan_with_images_is_a_clear_error(gan_run, tmp_path):
    r = genlab_cli("interpolate", gan_run, "--images", "0,1", "-o", tmp_path / "x.png")
    assert r.returncode == 2
    assert "GANs have no encoder" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()
    r = genlab_cli("traverse", gan_run, "--image", "3")
    assert r.returncode == 2 and "no encoder" in r.stderr
    r = genlab_cli("sample", gan_run, "--truncation", "-1")
    assert r.returncode == 2 and "greater than 0" in r.stderr
