"""The one interface every genlab model implements (see docs/architecture.md).

The update rule lives in the model (``train_step`` does its own backward and optimizer
steps), so a single Trainer drives VAEs, GANs and their hybrids alike.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..batch import Batch  # re-exported: models import it from here
from .phases import Phase, active_phase


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard normal noise; drawn from ``generator`` (on its own device) when one is given,
    so that sampling at fixed noise never disturbs the training random stream."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def adam(params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015) with torch's fused kernel where it has one for the parameters' device
    (CPU and CUDA, floating-point parameters): one pass per tensor instead of about ten element-wise
    kernels. The same update as the for-loop implementation, to within float rounding (the last bit)."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused or None)


class StepContext:
    """How a ``train_step`` runs its passes, whatever the precision and however many processes.

    A model runs its forward passes under ``autocast()``, takes gradients with
    ``backward(loss, name)`` (or ``scale(loss, name)`` before ``torch.autograd.grad``), updates
    with ``step(optimizer, name)`` and draws its per-image noise with ``randn`` / ``rand`` /
    ``bernoulli``. ``name`` names the optimizer the gradients are for (under fp16 each has its own
    loss scale); ``reduction`` says how the loss reduces over the batch ("mean" or "sum"), so that
    under torchrun the processes' gradients add up to those of the whole batch.

    This base class is the plain single-process fp32 way, the exact arithmetic of calling
    ``loss.backward()``, ``optimizer.step()`` and ``torch.randn`` directly. The Trainer hands a
    model its ``genlab.training.context.TrainingContext`` (bf16/fp16 autocast, GradScalers,
    gradients averaged across processes) through ``model.step_context``.
    """

    precision: str = "fp32"
    # how far through its budget the run is at this step, in [0, 1]: the larger of the fraction of its steps
    # taken and, under a time limit, of its time used (the Trainer's budget_progress, which also drives the
    # learning-rate schedule and the start of a phase the model declares, GenerativeModel.phase_at); 0 outside
    # the Trainer
    budget_progress: float = 0.0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Forward passes under this run in the training precision (a no-op in fp32)."""
        return contextlib.nullcontext()

    def scale(self, loss: Tensor, name: str = "default", reduction: str = "mean") -> Tensor:
        """``loss`` as it is to be differentiated (loss-scaled under fp16, weighted under torchrun)."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        return loss

    def backward(self, loss: Tensor, name: str = "default", reduction: str = "mean") -> None:
        self.scale(loss, name, reduction).backward()

    def step(self, optimizer: torch.optim.Optimizer, name: str = "default") -> None:
        optimizer.step()

    def randn(self, *shape: int, device: torch.device | None = None, batch_dim: int = 0) -> Tensor:
        """Standard normal noise for this process's images (``shape[batch_dim]`` of them), from the
        global stream."""
        return torch.randn(shape, device=device)

    def rand(self, *shape: int, device: torch.device | None = None, batch_dim: int = 0) -> Tensor:
        """Uniform [0, 1) noise for this process's images, from the global stream."""
        return torch.rand(shape, device=device)

    def bernoulli(self, p: Tensor) -> Tensor:
        """x ~ Bernoulli(p) element-wise, one image per row of ``p``."""
        return torch.bernoulli(p)


def as_float_images(x: Tensor) -> Tensor:
    """uint8 images in 0..255 (as stored) -> float in [0, 1] (the model boundary); float passes through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


class GenerativeModel(nn.Module):
    """Base class: a generative model over images of shape ``image_shape`` = (C, H, W).

    Subclasses set ``family`` ("vae" or "gan"), keep their hyper-parameters in ``self.config``
    (a dataclass, saved as JSON) and implement the four methods below.
    """

    family: ClassVar[str] = ""

    # -- capabilities: what a model can do beyond the methods every model has, declared here and
    # nowhere else. Evaluation, the latent tools, the CLI and compare read these and never probe a
    # model for methods or read its config; a subclass that has the capability says so.
    encodes: ClassVar[bool] = False
    """True when the model has ``encode(x, labels) -> (mu, logvar)``, q(z|x) over ``latent_dim``,
    and ``reconstruct(x, labels)``: reconstructions, encoded interpolation and traversal from an image."""

    label_dim: int = 0
    """Size of the one-hot class label the networks take: the number of classes for a conditional
    model (set in its ``__init__``), 0 for an unconditional one (``conditional`` reads it)."""

    def __init__(self, config: Any, image_shape: tuple[int, int, int], num_classes: int = 0):
        super().__init__()
        # how train_step runs its passes: this model's own plain fp32 single-process context (one per
        # model, as it carries state such as budget_progress) until the Trainer sets its own
        self.step_context: StepContext = StepContext()
        self.config = config
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def x_dim(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def train_step(self, batch: Batch, step: int, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Tensor]:
        """One update on ``batch``, through ``self.step_context`` (see ``StepContext``). Returns
        detached scalar tensors: no ``.item()`` or branching on tensor values (the host would wait
        for the device); the Trainer reads them back only when it logs."""
        raise NotImplementedError

    # -- phases: parts of training with their own settings, declared as data (``phases.py``) ----------
    def phases(self) -> tuple[Phase, ...]:
        """The phases of this model's training, in order (a VAE's encoder refit); none by default.
        ``train_step`` reads the one in force with ``phase_at``."""
        return ()

    def phase_at(self, step: int) -> Phase | None:
        """The declared phase in force at training step ``step`` (``phases.active_phase``), placed by the
        step and the step context's budget progress; None outside every phase."""
        return active_phase(self.phases(), step, self.step_context.budget_progress)

    # -- lifecycle hooks: the Trainer calls them on every model; these defaults do nothing ----------
    def on_epoch_end(self, train_images: Tensor, train_labels: Tensor | None, *, epoch: int, last: bool,
                     seed: int) -> dict[str, float]:
        """Called by the Trainer after each complete epoch, before that epoch's evaluation, sample
        grid and checkpoint, for work on the model that is not a gradient step but must keep up
        with the weights (a VAE refits its mixture prior to the encoded training set here).

        ``train_images``/``train_labels``: the whole training set as the dataset holds it (on the
        CPU, uint8 or float images); ``epoch``: the epochs completed so far (1 after the first);
        ``last``: no epoch follows in this run (the final epoch, or training stops at this epoch's
        last step); ``seed``: the run's seed, for work that draws random numbers (from its own
        generator, never the global stream). The seconds it takes count as training time. Returns
        numbers added to the epoch's line in metrics.jsonl ({} for none)."""
        return {}

    def on_stop(self, train_images: Tensor, train_labels: Tensor | None, *, seed: int) -> None:
        """Called by the Trainer when training stops inside an epoch (Ctrl-C, the step or time limit),
        before the checkpoint it then saves, so that what ``on_epoch_end`` keeps in step with the
        weights matches the weights being saved. Same arguments and timing as ``on_epoch_end``."""

    # -- the latent interface (interpolation, traversal, truncation and samples all use it) ----
    @property
    def latent_dim(self) -> int:
        """Size of the latent vector z that ``decode_latent`` maps to an image."""
        return int(self.config.z_dim)

    @property
    def has_standard_normal_prior(self) -> bool:
        """True when p(z) = N(0, I) (closed-form KL, truncation trick); False for a learned prior."""
        return True

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` latent vectors from the model's prior p(z): N(0, I) unless a model overrides it."""
        return randn((n, self.latent_dim), generator, self.device)

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) over the last dimension of z: the standard normal unless a model overrides it."""
        return -0.5 * (z.pow(2) + math.log(2.0 * math.pi)).sum(-1)

    @torch.no_grad()
    def decode_latent(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images (float in [0, 1], (B, C, H, W)) for latent vectors z (B, latent_dim): a VAE's
        decoder mean, a GAN's generator (its EMA copy where one is kept). Conditional models need
        ``labels``."""
        raise NotImplementedError

    @property
    def conditional(self) -> bool:
        """True when sampling takes a class label (and training, encoding and decoding need one)."""
        return self.label_dim > 0

    @property
    def decoder_likelihood(self) -> str | None:
        """The name of the pixel likelihood p(x|z) that ``log_px_given_z(x, z, labels)`` evaluates
        ("bernoulli", "gaussian" or "logistic"; how the evaluator labels its numbers), or None for a
        model without one (the GANs; the VAE-GAN, whose reconstruction error is in feature space)."""
        return None

    @property
    def has_likelihood(self) -> bool:
        """True when the test ELBO and the importance-weighted NLL apply: the model ``encodes`` and has
        ``log_px_given_z``, the pixel likelihood that ``decoder_likelihood`` names."""
        return self.encodes and self.decoder_likelihood is not None

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``n`` new images, float in [0, 1], shape (n, C, H, W): ``decode_latent`` at z drawn from
        the prior; a conditional model cycles through the classes when ``labels`` is None."""
        z = self.prior_sample(n, generator)
        if self.conditional:
            from ..nets import cycle_labels
            labels = cycle_labels(n, self.num_classes, self.device) if labels is None else labels.to(self.device)
        else:
            labels = None
        return self.decode_latent(z, labels)

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor | None = None,
                 generator: torch.Generator | None = None) -> dict[str, float]:
        """Held-out metrics (per-image means) on images (uint8 or float in [0, 1]). Default: none."""
        return {}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)
