"""Training phases declared as data (models/phases.py): where a phase begins, which one is in force,
that the modules a phase freezes get no update while the others train, and that a model without
phases never enters one."""
import pytest
import torch

from genlab.data import load_dataset
from genlab.models import MODELS, Batch, build_model
from genlab.models.phases import Phase, active_phase

SHAPE = (1, 8, 8)  # scikit-learn's digits


@pytest.fixture(scope="module")
def digits_batch() -> Batch:
    train = load_dataset("digits", progress=False).train
    return Batch(train.images[:64].float() / 255.0, train.labels[:64])


def test_a_phase_begins_at_its_step_or_its_fraction_of_the_budget_whichever_comes_first():
    by_step = Phase("a", from_step=10)
    by_progress = Phase("b", from_progress=0.75)
    either = Phase("c", from_step=10, from_progress=0.75)
    assert [by_step.active(s, 1.0) for s in (0, 9, 10, 11)] == [False, False, True, True]  # progress ignored
    assert [by_progress.active(10 ** 6, p) for p in (0.0, 0.7499, 0.75, 1.0)] == [False, False, True, True]
    assert [either.active(s, p) for s, p in ((9, 0.74), (10, 0.0), (0, 0.75))] == [False, True, True]
    # the first step of a run is step 0 and a budget starts at progress 0: a phase from there is always on
    assert Phase("d", from_step=0).active(0, 0.0) and Phase("e", from_progress=0.0).active(0, 0.0)


def test_the_phase_in_force_is_the_last_declared_one_that_has_begun():
    warm, refit = Phase("warm", from_step=5), Phase("refit", from_progress=0.9)
    phases = (warm, refit)
    assert active_phase(phases, 4, 0.0) is None
    assert active_phase(phases, 5, 0.0) is warm  # its first step
    assert active_phase(phases, 5, 0.8999) is warm
    assert active_phase(phases, 5, 0.9) is refit  # both have begun: the later one in training order
    assert active_phase(phases, 0, 0.95) is refit  # the budget alone starts it
    assert active_phase((), 10 ** 9, 1.0) is None


@pytest.mark.parametrize("bad", [{}, {"from_step": -1}, {"from_progress": 1.5}, {"from_progress": -0.1}])
def test_a_phase_without_a_valid_start_is_refused(bad):
    with pytest.raises(ValueError, match="phase 'x'"):
        Phase("x", **bad)


def test_the_vae_declares_its_encoder_refit_from_its_config():
    refit = build_model("mlp-vae", {"hidden": [32, 16], "z_dim": 4, "encoder_refit_fraction": 0.04,
                                    "encoder_refit_from_step": 500}, SHAPE)
    assert refit.phases() == (Phase("encoder-refit", from_step=500, from_progress=1.0 - 0.04,
                                    frozen=("decoder", "prior"), beta=1.0),)
    assert build_model("mlp-vae", {"encoder_refit_fraction": 0.5}, SHAPE).phases()[0].from_step is None
    assert build_model("mlp-vae", {"encoder_refit_from_step": 7}, SHAPE).phases()[0].from_progress is None
    # the step context's budget progress places it; beta_at reads the phase's KL weight
    model = build_model("mlp-vae", {"beta": 0.2, "encoder_refit_fraction": 0.25}, SHAPE)
    assert model.phase_at(10 ** 6) is None and model.beta_at(10 ** 6) == 0.2
    model.step_context.budget_progress = 0.75
    assert model.phase_at(0).name == "encoder-refit" and model.beta_at(0) == 1.0


@pytest.mark.parametrize("arch,small", [("mlp-vae", {"hidden": [32, 16]}), ("conv-vae", {"width": 4})])
def test_a_phase_freezes_exactly_its_modules_for_a_train_step(arch, small, digits_batch):
    """At the phase's first progress the decoder and the trained prior keep every weight (and get no
    optimizer state), while encoder and posterior heads train; just before it everything trains."""
    def one_step(progress: float):
        torch.manual_seed(0)
        model = build_model(arch, {"z_dim": 4, "prior": "mog", "prior_components": 3, "beta": 0.2,
                                   "encoder_refit_fraction": 0.04, **small}, SHAPE)
        model.step_context.budget_progress = progress
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opts = model.configure_optimizers()
        model.train_step(digits_batch, 0, opts)
        params = dict(model.named_parameters())
        moved = {n for n, p in params.items() if not torch.equal(p, before[n])}
        stateful = {n for n, p in params.items() if p in opts["vae"].state}
        return set(params), moved, stateful

    names, moved, stateful = one_step(1.0 - 0.04)
    frozen = {n for n in names if n.startswith(("decoder.", "prior."))}
    assert any(n.startswith("prior.") for n in frozen) and any(n.startswith("decoder.") for n in frozen)
    assert moved == stateful == names - frozen
    assert {n.split(".")[0] for n in moved} == {"encoder", "mu_head", "logvar_head"}
    _, moved, _ = one_step(0.9599)  # not yet in the phase: the whole model trains
    assert frozen <= moved


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_model_without_phases_is_never_in_one(name):
    model = build_model(name, {}, SHAPE)
    assert model.phases() == ()
    model.step_context.budget_progress = 1.0
    assert model.phase_at(0) is None and model.phase_at(10 ** 9) is None
