"""Malformed configs, generated: every model's --set values and every section of a run's config.json.

The property: a GenlabError that names the field (and, for config.json, the file), or a config that
builds a working model - never another exception. The models are built for the digits' image shape
(1x8x8, 10 classes) under a 256 MB memory limit, so that a generated width of a million is refused by
the memory estimate instead of allocated.
"""
import dataclasses
import json
import math
import re
import typing

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import genlab.models.zoo  # noqa: F401  (registers the convolutional models)
from genlab.cli import _setting
from genlab.configcheck import show
from genlab.errors import GenlabError, RunError
from genlab.models.registry import MODELS, build_model, make_config
from genlab.training.run import RUN_FORMAT, model_from_config, read_run_config, train_config_from
from genlab.training.trainer import TrainConfig

DIGITS = {"spec": "digits", "data_dir": None, "image_size": None, "channels": None, "image_shape": [1, 8, 8],
          "num_classes": 10, "class_names": [str(i) for i in range(10)], "train_size": 1437, "test_size": 360,
          "origin": "sklearn.datasets.load_digits"}
FUZZ = settings(derandomize=True, max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def small_memory(monkeypatch, one_thread):
    monkeypatch.setenv("GENLAB_MEMORY_LIMIT", "256M")


# JSON values a user or a damaged file could put anywhere: every JSON type, numbers at and beyond the
# edges (NaN, infinities, 2**70), the names of real choices, small lists of those
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 80), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1), st.text(max_size=6),
                    st.sampled_from(["relu", "tanh", "gmm", "mog", "normal", "hinge", "minimax", "nearest",
                                     "gaussian", "logistic", "bf16", "cosine", "1e-3", "[512]"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                           max_size=2), max_leaves=5)


CHOICES = ["relu", "tanh", "leaky_relu", "gmm", "mog", "normal", "hinge", "minimax", "non-saturating", "wasserstein",
           "nearest", "transposed", "bernoulli", "gaussian", "logistic", "fp32", "bf16", "cosine", "linear", "cpu"]


def plausible(hint) -> st.SearchStrategy:
    """Values of the field's own type, mostly in a sensible range: many generated configs are valid."""
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(0, 40)
    if hint is float:
        return st.floats(0, 1) | st.sampled_from([1e-3, 2e-4, 0.5, 0.999, 10.0])
    if hint is str:
        return st.sampled_from(CHOICES)
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return st.lists(st.integers(1, 48), min_size=1, max_size=3)
    if inner:  # X | None
        return st.none() | plausible(inner[0])
    return values


def setting_values(cls) -> dict[str, st.SearchStrategy]:
    """For each field of ``cls``: a value of its type (twice as likely) or anything at all."""
    hints = typing.get_type_hints(cls)
    return {f.name: plausible(hints[f.name]) | plausible(hints[f.name]) | values for f in dataclasses.fields(cls)}


def fields_of(model: str) -> list[str]:
    return [f.name for f in dataclasses.fields(MODELS[model].config_cls)]


def draw_settings(data, cls, extra_keys=()) -> dict:
    strategies = setting_values(cls)
    keys = data.draw(st.lists(st.sampled_from(sorted(strategies) + list(extra_keys)), min_size=1, max_size=4,
                              unique=True))
    return {k: data.draw(strategies.get(k, values)) for k in keys}


def assert_works(model, shape=(1, 8, 8)) -> None:
    """A model that was built must sample: images of the data's shape, finite, in [0, 1]."""
    x = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert tuple(x.shape) == (2, *shape) and torch.isfinite(x).all() and 0 <= float(x.min()) <= float(x.max()) <= 1


def check_settings(model: str, overrides: dict) -> None:
    try:
        cfg = make_config(model, overrides)
    except GenlabError as e:
        msg = str(e)
        assert any(show(k, 40) in msg or f"{k} =" in msg for k in overrides), msg
        return
    defaults = MODELS[model].config_cls()
    for k in overrides:  # accepted: stored with the field's type
        v, d = getattr(cfg, k), getattr(defaults, k)
        assert (v is None or isinstance(v, tuple)) if d is None else type(v) is type(d), (k, v)
    try:
        net = build_model(model, cfg, (1, 8, 8), 10)
    except GenlabError:  # settings that contradict each other, or networks too big for the limit
        return
    assert_works(net.eval())


@pytest.mark.parametrize("model", ["mlp-vae", "mlp-gan", "conv-vae", "conv-gan", "vae-gan"])
@FUZZ
@given(data=st.data())
def test_set_values_give_a_named_error_or_a_working_model(model, data):
    overrides = draw_settings(data, MODELS[model].config_cls, ["seed", "epochs", "hiden", ""])
    check_settings(model, overrides)


@pytest.mark.parametrize("model", ["mlp-vae", "conv-gan"])
@settings(derandomize=True, max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_set_text_as_typed_on_the_command_line(model, data):
    """``--set KEY=TEXT`` goes through the CLI's parser (JSON if it parses, else the text itself)."""
    key = data.draw(st.sampled_from(fields_of(model)))
    text = data.draw(st.one_of(st.text(max_size=10), st.sampled_from(
        ["512", "[512,256]", "[512, -1]", "[]", "nan", "NaN", "Infinity", "-Infinity", "1e400", "true", "True",
         "null", "0", "-1", "1e-3", "[1e6, 1e6]", "[1000000, 1000000]", "\"relu\"", "{}", "[[1]]"])))
    k, v = _setting(f"{key}={text}")
    check_settings(model, {k: v})


def test_known_bad_set_values_are_named():
    cases = [("mlp-vae", {"hidden": 512}, "hidden = 512 is not valid: expected a list of integers"),
             ("mlp-vae", {"z_dim": "abc"}, "z_dim = 'abc' is not valid: expected an integer"),
             ("mlp-vae", {"lr": math.nan}, "lr = nan is not valid: expected a finite number"),
             ("mlp-vae", {"lr": -1e-3}, "lr = -0.001 is not valid: expected a value > 0"),
             ("mlp-vae", {"seed": 3}, "unknown setting(s) 'seed'"),
             ("mlp-gan", {"hidden": [256]}, "hidden = [256] is not valid: expected an integer"),
             ("conv-gan", {"spectral_norm": "yes"}, "spectral_norm = 'yes' is not valid: expected true or false"),
             ("mlp-vae", {"activation": "gelu"}, "activation = 'gelu' is not valid: expected one of 'relu'"),
             ("conv-vae", {"likelihood": 3}, "likelihood = 3 is not valid: expected a string"),
             ("conv-gan", {"ema_decay": 1.0}, "ema_decay = 1.0 is not valid: expected a value >= 0 and < 1")]
    for model, values, expected in cases:
        with pytest.raises(GenlabError) as e:
            make_config(model, values)
        assert expected in str(e.value), (values, str(e.value))
    cfg = make_config("mlp-vae", {"hidden": [64.0, 32], "z_dim": 8.0, "lr": 1})  # integral floats, an int lr
    assert cfg.hidden == (64, 32) and type(cfg.z_dim) is int and type(cfg.lr) is float


def test_a_model_too_big_for_memory_is_refused_before_it_is_allocated():
    with pytest.raises(GenlabError, match=r"29\.1 TB of memory, more than the limit set by GENLAB_MEMORY_LIMIT=256M \(256 MB\)"):
        build_model("mlp-vae", {"hidden": [1_000_000, 1_000_000]}, (1, 28, 28), 10)
    with pytest.raises(GenlabError, match="too large to build"):  # sizes whose product overflows int64
        build_model("mlp-vae", {"hidden": [2 ** 31 - 1, 2 ** 31 - 1, 2 ** 31 - 1]}, (3, 512, 512), 10)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    a = build_model("mlp-vae", {}, (1, 8, 8))
    torch.manual_seed(0)
    b = MODELS["mlp-vae"].cls(make_config("mlp-vae", {}), (1, 8, 8), 0)  # no estimate: the weights are the same
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    torch.random.set_rng_state(state)


# ----------------------------------------------------------------------------- config.json documents

def base_document(model: str) -> dict:
    cfg = MODELS[model].config_cls()
    return {"format": RUN_FORMAT, "genlab_version": "0", "torch_version": torch.__version__,
            "created": "2025-01-01T00:00:00+00:00", "name": model, "model": model,
            "model_config": json.loads(json.dumps(dataclasses.asdict(cfg))),
            "train": dataclasses.asdict(TrainConfig(epochs=1, batch_size=32)), "data": dict(DIGITS), "parameters": 0}


@st.composite
def damaged(draw, model: str):
    """(bytes of a damaged config.json, the field it damaged or None)."""
    doc = base_document(model)
    kind = draw(st.sampled_from(["value", "field", "unknown", "drop", "section", "whole", "bytes"]))
    field = None
    if kind == "value":  # one setting of one section: anything at all
        section = draw(st.sampled_from(["model_config", "train", "data"]))
        field = draw(st.sampled_from(sorted(doc[section])))
        doc[section][field] = draw(values)
    elif kind == "field":  # several settings, mostly of their own type
        for section, cls in (("model_config", MODELS[model].config_cls), ("train", TrainConfig)):
            strategies = setting_values(cls)
            for key in draw(st.lists(st.sampled_from(sorted(strategies)), max_size=3, unique=True)):
                doc[section][key] = draw(strategies[key])
    elif kind == "unknown":
        section = draw(st.sampled_from(["model_config", "train"]))
        field = draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in doc[section]))
        doc[section][field] = draw(values)
    elif kind == "drop":
        field = draw(st.sampled_from(["name", "model", "model_config", "train", "data", "format"]))
        del doc[field]
    elif kind == "section":
        field = draw(st.sampled_from(["model", "model_config", "train", "data", "format"]))
        doc[field] = draw(values)
    elif kind == "whole":
        doc = draw(values)
    if kind == "bytes":
        raw = json.dumps(base_document(model)).encode()
        cut = draw(st.integers(0, len(raw)))
        junk = draw(st.binary(max_size=8))
        return raw[:cut] + junk, None
    return json.dumps(doc, allow_nan=True).encode(), field


@pytest.mark.parametrize("model", ["mlp-vae", "mlp-gan", "conv-gan"])
@FUZZ
@given(data=st.data())
def test_damaged_config_json_gives_a_run_error_naming_file_and_field(model, data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    raw, field = data.draw(damaged(model))
    path = run / "config.json"
    path.write_bytes(raw)
    try:
        config = read_run_config(run)
    except RunError as e:
        msg = str(e)
        assert str(path) in msg, msg
        if field is not None and "JSON" not in msg and "format" not in msg:
            assert show(field, 40) in msg or field in msg, (field, msg)
        return
    train = train_config_from(config)  # a config that was read is usable
    assert isinstance(train.epochs, int) and isinstance(train.seed, int) and train.epochs >= 1
    try:
        net = model_from_config(config)
    except GenlabError:  # a contradiction between settings, an unknown model, or too big for the limit
        return
    assert_works(net.eval(), tuple(config["data"]["image_shape"]))


def test_config_json_errors_name_the_file_the_field_the_value_and_the_type(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cases = [(b"\xff\xfe{}", "is not UTF-8"),
             (b"[1, 2]", "not a JSON object"),
             (b'{"format": "genlab-run-1"', "is not valid JSON")]
    doc = base_document("mlp-vae")
    for mutate, expected in [(lambda d: d["model_config"].update(hidden=512),
                              "model_config.hidden = 512 is not valid: expected a list of integers"),
                             (lambda d: d["train"].update(epochs="ten"),
                              "train.epochs = 'ten' is not valid: expected an integer"),
                             (lambda d: d["data"].update(image_shape=[1, 8]),
                              "data.image_shape = [1, 8] is not valid: expected a list of 3 integers"),
                             (lambda d: d.pop("train"), "has no 'train' section"),
                             (lambda d: d["model_config"].update(bogus=1), "unknown setting(s) 'bogus'")]:
        d = json.loads(json.dumps(doc))
        mutate(d)
        cases.append((json.dumps(d).encode(), expected))
    for raw, expected in cases:
        (run / "config.json").write_bytes(raw)
        with pytest.raises(RunError) as e:
            read_run_config(run)
        assert str(run / "config.json") in str(e.value) and expected in str(e.value), str(e.value)
    d = json.loads(json.dumps(doc))
    d["model_config"]["hidden"] = [1_000_000, 1_000_000]
    (run / "config.json").write_text(json.dumps(d))
    with pytest.raises(GenlabError, match="would need about .* of memory.*config.json"):
        model_from_config(read_run_config(run))


@pytest.mark.parametrize("settings, named", [({"epochs": "3"}, "epochs = '3'"), ({"batch_size": 0}, "batch_size = 0"),
                                             ({"max_seconds": -1.0}, "max_seconds = -1.0"),
                                             ({"seed": "x"}, "seed = 'x'"), ({"lr": float("nan")}, "lr = nan")])
def test_the_python_api_checks_its_settings_before_any_work(tmp_path, settings, named):
    import genlab

    with pytest.raises(GenlabError, match=f"setting {re.escape(named)} is not valid"):
        genlab.train("seed-vae", "digits", out=tmp_path / "run", progress=False, **settings)
    assert not (tmp_path / "run").exists()  # refused before a run folder was made
