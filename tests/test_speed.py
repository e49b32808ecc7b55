"""How fast a run trains, never what it computes: precision (bf16/fp16 autocast, losses and
penalties in fp32, loss scaling), torch.compile, channels-last and fused Adam."""
import json
import shutil

import pytest
import torch

import genlab
from genlab.data import load_dataset
from genlab.errors import GenlabError
from genlab.models import Batch, build_model, losses
from genlab.models.base import adam
from genlab.models.registry import resolve
from genlab.training import checkpoint as ckpt
from genlab.training import context, speed
from genlab.training.context import TrainingContext
from genlab.training.trainer import TrainConfig, Trainer


def metric_lines(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoint_tensors(run) -> dict[str, torch.Tensor]:
    return ckpt.read_checkpoint(run / "checkpoints" / "last.safetensors")[0]


def assert_close_runs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The same training up to the order of float operations: each tensor within 1e-4 of its norm
    (observed: about 1e-6; Adam's first steps turn rounding-level gradient differences into
    weight differences of up to 1e-5 in single elements)."""
    assert a.keys() == b.keys()
    for k in a:
        diff, size = (a[k] - b[k]).float().norm(), a[k].float().norm()
        assert diff <= 1e-4 * size + 1e-7, (k, diff / size)


# ----------------------------------------------------------------------------- precision

def test_bf16_training_on_cpu_learns_and_is_saved_with_the_run_for_resume(tmp_path):
    res = genlab.train("seed-vae", "digits", out=tmp_path / "run", epochs=3, precision="bf16", progress=False)
    elbo = [r["test_elbo"] for r in metric_lines(res.run_dir) if r.get("event") == "epoch_end"]
    assert all(torch.isfinite(torch.tensor(elbo))) and elbo[-1] > elbo[0] + 1, elbo
    assert json.loads((res.run_dir / "config.json").read_text())["train"]["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in res.model.parameters())  # weights stay fp32
    resumed = genlab.resume(res.run_dir, epochs=4, progress=False)
    assert resumed.model.step_context.precision == "bf16" and resumed.state.epoch == 4


@pytest.mark.parametrize("native", [True, False])
def test_a_preset_trains_in_its_own_precision_unless_told_otherwise(tmp_path, monkeypatch, native):
    # mlp-vae-gmm's "auto": bf16 on a CPU that computes it natively, fp32 on one that would emulate it
    monkeypatch.setattr(context, "_cpu_flags", lambda: {"avx2", "avx512f"} | ({"avx512_bf16"} if native else set()))
    small = {"hidden": [64, 32], "z_dim": 4, "prior_components": 2}
    own = genlab.train("mlp-vae-gmm", "digits", out=tmp_path / "own", max_steps=3, progress=False, **small)
    told = genlab.train("mlp-vae-gmm", "digits", out=tmp_path / "told", max_steps=3, precision="fp32",
                        progress=False, **small)
    seed = genlab.train("seed-vae", "digits", out=tmp_path / "seed", max_steps=3, progress=False)
    precision = {r: json.loads((r / "config.json").read_text())["train"]["precision"]
                 for r in (own.run_dir, told.run_dir, seed.run_dir)}
    auto = "bf16" if native else "fp32"
    assert precision == {own.run_dir: auto, told.run_dir: "fp32", seed.run_dir: "fp32"}  # recorded as trained
    assert own.model.step_context.precision == auto
    assert own.model.prior.is_fitted  # the stop refitted the mixture to the weights it saved


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    for flags, expected in (({"avx512_bf16"}, "bf16"), ({"amx_bf16", "avx512f"}, "bf16"),
                            ({"avx2", "avx512f", "fma"}, "fp32"), (set(), "fp32")):
        monkeypatch.setattr(context, "_cpu_flags", lambda flags=flags: flags)
        assert context.resolve_precision("auto", cpu) == expected, flags
        assert context.resolve_precision("fp32", cpu) == "fp32" and context.resolve_precision("bf16", cpu) == "bf16"
    assert TrainingContext("auto", cpu).precision == "fp32"  # (the last flags: none)
    with pytest.raises(GenlabError, match="unknown precision 'fp8'; choose one of: auto, fp32, bf16, fp16"):
        context.check_precision("fp8", cpu)


ZOO = [("seed-vae", {}), ("seed-gan", {}), ("dcgan", {"width": 8}), ("wgan-gp", {"width": 8}),
       ("conv-gan", {"width": 8, "r1_gamma": 1.0, "d_batchnorm": False}), ("conv-vae", {"width": 8}),
       ("iwae", {"width": 8}), ("vae-gan", {"width": 8}), ("conv-vae", {"width": 8, "likelihood": "logistic"})]


@pytest.mark.parametrize("name,overrides", ZOO)
def test_every_model_trains_under_bf16_autocast_with_its_losses_in_fp32(name, overrides):
    preset = resolve(name)
    torch.manual_seed(0)
    model = build_model(preset.model, {**preset.model_config, **overrides}, (1, 28, 28))
    model.step_context = TrainingContext("bf16", "cpu")
    seen = []
    layer = next(m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    layer.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    opts = model.configure_optimizers()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    for step in range(2):
        logs = model.train_step(Batch(torch.rand(8, 1, 28, 28)), step, opts)
        model.step_context.end_step()
    assert torch.bfloat16 in seen  # the forward passes ran in bf16 ...
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in logs.values()), logs  # ... the losses in fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(before[k], p) for k, p in model.named_parameters())


def test_the_penalties_run_their_critic_in_fp32_with_autocast_off_under_bf16():
    seen = []
    critic_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))

    def critic(x):
        seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
        return critic_net(x).squeeze(1)

    real, fake = torch.rand(4, 1, 4, 4), torch.rand(4, 1, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert critic_net(real).dtype == torch.bfloat16  # autocast is on out here
        gp = losses.gradient_penalty(critic, real, fake)
        x = real.clone().requires_grad_(True)
        r1 = losses.r1_penalty(losses.in_fp32(critic, x), x)
        d_loss = losses.minimax_d_loss(critic_net(real).squeeze(1), critic_net(fake).squeeze(1))
    assert seen == [(torch.float32, False), (torch.float32, False)]
    assert gp.dtype == r1.dtype == d_loss.dtype == torch.float32
    # float64 passes through the losses untouched
    assert losses.bernoulli_nll(torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)).dtype \
        == torch.float64


def test_fp16_on_cpu_is_refused_before_a_run_folder_is_made(tmp_path):
    with pytest.raises(GenlabError, match="fp16 needs a CUDA GPU.*bf16"):
        genlab.train("seed-vae", "digits", out=tmp_path / "run", precision="fp16", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(GenlabError, match="precision = .fp8. is not valid: expected one of .fp32., .bf16., .fp16., .auto."):
        genlab.train("seed-vae", "digits", out=tmp_path / "run", precision="fp8", device="cpu", progress=False)


def fp16_context() -> TrainingContext:
    """fp16 with its GradScalers, on CPU: refused for users (no speed there), but the loss scaling's
    logic runs here as on a GPU."""
    ctx = TrainingContext("fp32", "cpu")
    ctx.precision, ctx.dtype = "fp16", torch.float16
    return ctx


def test_fp16_scales_each_optimizers_loss_apart_and_the_scales_round_trip_through_a_checkpoint(tmp_path):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("mlp-gan", {}, data.image_shape)
    trainer = Trainer(model, data, TrainConfig(epochs=1, max_steps=4, sample_every=0), tmp_path, progress=False)
    trainer.context = model.step_context = fp16_context()  # as the Trainer sets it up on a GPU
    trainer.fit()
    scalers = trainer.context.scalers
    assert set(scalers) == {"d", "g"} and scalers["d"] is not scalers["g"]  # generator and discriminator apart
    assert all(torch.isfinite(p).all() for p in model.parameters())
    scalers["d"].update(new_scale=1024.0)  # as after overflows in D's gradients alone
    trainer.save(trainer.shuffle.get_state())
    _, meta = ckpt.read_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert meta["scalers"]["d"]["scale"] == 1024.0 and meta["scalers"]["g"]["scale"] == 65536.0
    again = Trainer(build_model("mlp-gan", {}, data.image_shape), data, TrainConfig(epochs=1), tmp_path,
                    progress=False)
    again.context = fp16_context()
    again.restore()
    assert again.context.scaler_states() == trainer.context.scaler_states()


# ----------------------------------------------------------------------------- compile, layout, Adam

def test_compiling_keeps_the_state_dict_keys_of_every_network():
    model = build_model("conv-gan", {"width": 8, "ema_decay": 0.9}, (1, 28, 28))
    keys = list(model.state_dict())
    names = speed.compile_networks(model)
    assert names == ["generator", "discriminator"]  # the EMA copy is only sampled from
    assert list(model.state_dict()) == keys and not any("_orig_mod" in k for k in keys)


def test_a_compiled_run_logs_its_warm_up_apart_and_its_checkpoint_loads_and_resumes_without_compile(tmp_path):
    kw = {"max_steps": 3, "batch_size": 64, "progress": False, "hidden": [16], "z_dim": 2}
    eager = genlab.train("seed-vae", "digits", out=tmp_path / "eager", **kw)
    res = genlab.train("seed-vae", "digits", out=tmp_path / "compiled", compile=True, **kw)
    lines = metric_lines(res.run_dir)
    warmup = [r for r in lines if r.get("event") == "compile_warmup"]
    assert len(warmup) == 1 and warmup[0]["step"] == 1 and warmup[0]["seconds"] > 0
    assert warmup[0]["networks"] == ["encoder", "mu_head", "logvar_head", "decoder"]
    a, b = checkpoint_tensors(eager.run_dir), checkpoint_tensors(res.run_dir)
    assert_close_runs(a, b)  # the same keys (no "_orig_mod." anywhere), the same computation
    model = genlab.load(res.run_dir)
    assert torch.isfinite(model.sample(4)).all()
    resumed = genlab.resume(res.run_dir, max_steps=5, compile=False, progress=False)
    assert resumed.state.step == 5 and resumed.status == "max_steps"


def test_a_missing_cxx_compiler_is_a_clear_error_before_training(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(GenlabError, match="C\\+\\+ compiler"):
        speed.check_compile(torch.device("cpu"))


def test_channels_last_changes_the_layout_not_the_numbers_and_survives_a_resume(tmp_path):
    kw = {"max_steps": 3, "progress": False, "width": 8, "image_size": 16}  # 16 x 16: two conv stages
    plain = genlab.train("conv-vae", "digits", out=tmp_path / "plain", **kw)
    nhwc = genlab.train("conv-vae", "digits", out=tmp_path / "nhwc", channels_last=True, **kw)
    convs = [p for p in nhwc.model.parameters() if p.dim() == 4 and p.shape[2] * p.shape[3] > 1 and min(p.shape[:2]) > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    assert_close_runs(checkpoint_tensors(plain.run_dir), checkpoint_tensors(nhwc.run_dir))
    resumed = genlab.resume(nhwc.run_dir, max_steps=5, progress=False)
    straight = genlab.train("conv-vae", "digits", out=tmp_path / "straight", channels_last=True,
                            **{**kw, "max_steps": 5})
    a, b = checkpoint_tensors(resumed.run_dir), checkpoint_tensors(straight.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)  # Adam's moments got the weights' layout back
    assert json.loads((nhwc.run_dir / "config.json").read_text())["train"]["channels_last"] is True


def test_adam_is_fused_and_a_checkpoint_of_the_for_loop_adam_resumes_into_it():
    model = build_model("mlp-vae", {"hidden": [8], "z_dim": 2}, (1, 8, 8))
    opt = adam(model.parameters(), lr=1e-3)
    assert opt.defaults["fused"] is True
    old = torch.optim.Adam(model.parameters(), lr=1e-3)  # as genlab made it before
    model.loss_terms(torch.rand(4, 1, 8, 8))["neg_elbo"].sum().backward()
    old.step()
    tensors: dict[str, torch.Tensor] = {}
    meta = {"optimizers": {"vae": ckpt._optimizer_to_flat("vae", old, tensors)}}
    ckpt.load_optimizers({"vae": opt}, tensors, meta)
    assert opt.param_groups[0]["fused"] is True and opt.state_dict()["state"][0]["step"].item() == 1
    opt.step()  # the fused kernel accepts the loaded state
