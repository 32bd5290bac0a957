"""Every config value has a domain: a value outside it stops `seqzoo train` with a message naming
the key and the values allowed, before any data, compute or folder (no training here)."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest

from seqzoo.cli import main
from seqzoo.config import ExperimentConfig, TaskConfig, apply_overrides, check_values
from seqzoo.domains import ANY, Range, domain_of
from seqzoo.models import MLP, SequenceModel
from seqzoo.runner.build import check_config
from seqzoo.runner.experiments import experiment_names, load_experiment

# (overrides, a regex the error must match: the key and its domain)
BAD_VALUES = [
    # the silently accepted values
    (["optim.lr=-0.01"], r"optim\.lr must be >= 0, got -0\.01"),
    (["optim.grad_clip=-1"], r"optim\.grad_clip must be > 0, got -1\.0"),
    (["optim.b1=5"], r"optim\.b1 must be in \[0, 1\), got 5\.0"),
    (["model.dropout=1.5"], r"model\.dropout must be in \[0, 1\), got 1\.5"),
    # the raw tracebacks
    (["model.d_model=0"], r"model\.d_model must be >= 1, got 0"),
    (["task.num_train=0"], r"task\.num_train must be >= 1, got 0"),
    # top level
    (["name=../../x"], r"name must be a relative name .*'\.\.'.*got '\.\./\.\./x'"),
    (["name=/tmp/x"], r"name must be a relative name .*got '/tmp/x'"),
    (["seed=-1"], r"seed must be in \[0, 4294967296\), got -1"),
    (["seed=4294967296"], r"seed must be in \[0, 4294967296\)"),
    (["eval_every=0"], r"eval_every must be >= 1, got 0"),
    (["log_every=0"], r"log_every must be >= 1, got 0"),
    (["checkpoint_every=0"], r"checkpoint_every must be >= 1, got 0"),
    (["keep_checkpoints=0"], r"keep_checkpoints must be >= 1, got 0"),
    (["max_minutes=-1"], r"max_minutes must be >= 0, got -1\.0"),
    # task
    (["task.name=nope"], r"task\.name: unknown task 'nope'; known tasks: associative_recall"),
    (["task.seq_len=0"], r"task\.seq_len must be >= 1, got 0"),
    (["task.num_kv_pairs=0"], r"task\.num_kv_pairs must be >= 1, got 0"),
    (["task.context_repeats=0"], r"task\.context_repeats must be >= 1, got 0"),
    (["task.num_queries=-1"], r"task\.num_queries must be >= 0, got -1"),
    (["task.repeat_scope=both"], r"task\.repeat_scope must be one of context, prompt, got 'both'"),
    (["task.num_tokens=0"], r"task\.num_tokens must be >= 1, got 0"),
    (["task.vocab_size=0"], r"task\.vocab_size must be >= 1, got 0"),
    (["task.num_val=-1"], r"task\.num_val must be >= 0, got -1"),
    (["task.num_test=0"], r"task\.num_test must be >= 1, got 0"),
    (["task.seed=-1"], r"task\.seed must be in \[0, 4294967296\), got -1"),
    (["task.resolution=33"], r"task\.resolution must be one of 32, 64, 128, got 33"),
    (["task.difficulty=hard"], r"task\.difficulty must be one of curv_baseline, .*got 'hard'"),
    (["task.test_seq_len=-1"], r"task\.test_seq_len must be >= 0, got -1"),
    (["task.preset=lra_audio"], r"task\.preset must be one of lra_image, lra_text, got 'lra_a"),
    # model
    (["model.mixer=attention,nope"], r"model\.mixer: unknown mixer 'nope'; registered mixers"),
    (["model.n_layers=0"], r"model\.n_layers must be >= 1, got 0"),
    (["model.mlp=swish"], r"model\.mlp must be one of none, mlp, glu, got 'swish'"),
    (["model.mlp_ratio=0"], r"model\.mlp_ratio must be > 0, got 0\.0"),
    (["model.norm=group"], r"model\.norm must be one of rms, layer, batch, got 'group'"),
    (["model.max_length=-1"], r"model\.max_length must be >= 0, got -1"),
    (["model.dtype=float16"], r"model\.dtype must be one of float32, bfloat16, got 'float16'"),
    # optim
    (["optim.ssm_lr=-1"], r"optim\.ssm_lr must be >= 0, got -1\.0"),
    (["optim.weight_decay=-0.1"], r"optim\.weight_decay must be >= 0, got -0\.1"),
    (["optim.warmup_steps=-1"], r"optim\.warmup_steps must be >= 0, got -1"),
    (["optim.steps=0"], r"optim\.steps must be >= 1, got 0"),
    (["optim.batch_size=0"], r"optim\.batch_size must be >= 1, got 0"),
    (["optim.accumulate=0"], r"optim\.accumulate must be >= 1, got 0"),
    (["optim.b2=1"], r"optim\.b2 must be in \[0, 1\), got 1\.0"),
    (["optim.final_lr_fraction=1.5"], r"optim\.final_lr_fraction must be in \[0, 1\], got 1\.5"),
    (["optim.lr=nan"], r"optim\.lr must be >= 0, got nan"),
    (["optim.lr=inf"], r"optim\.lr must be >= 0, got inf"),
    # mesh
    (["mesh.data=-1"], r"mesh\.data must be >= 0, got -1"),
    (["mesh.seq=0"], r"mesh\.seq must be >= 1, got 0"),
    (["mesh.params=zero"], r"mesh\.params must be one of replicated, fsdp, got 'zero'"),
    (["mesh.attention=star"], r"mesh\.attention must be one of ring, ulysses, got 'star'"),
    (["mesh.carry=tree"], r"mesh\.carry must be one of all_gather, all_scan, got 'tree'"),
    # across fields and inside model.mixer_options (the mixers are traced abstractly)
    (["model.mlp=glu", "model.mlp_ratio=0.01", "model.d_model=16"],
     r"model\.mlp_ratio=0\.01 gives the glu MLP of model\.d_model=16 a hidden width of 0"),
    (['model.mixer_options={"num_heads": 0}'],
     r"model\.mixer_options: mixer 'attention' .* rejects num_heads=0 \(default 4\): "
     r"ZeroDivisionError"),
    (['model.mixer_options={"attention": {"num_heads": 0}}'],
     r"model\.mixer_options: mixer 'attention' .* rejects num_heads=0"),
    (["model.mixer=mamba", 'model.mixer_options={"d_state": 0, "d_conv": 2}'],
     r"model\.mixer_options: mixer 'mamba' .* rejects d_state=0 \(default 16\): d_state must be"),
    (["model.mixer=gla", "model.bidirectional=true", 'model.mixer_options={"chunk_size": 0}'],
     r"model\.mixer_options: mixer 'bi:gla' .* rejects chunk_size=0"),
    (['model.mixer_options={"num_heads": "4"}'],
     r"model\.mixer_options: mixer 'attention' .* rejects num_heads='4'"),
    (["model.mixer=hydra", "model.d_model=48"],  # no option to blame: the width and defaults
     r"mixer 'hydra' cannot be built with model\.d_model=48 and its default options: headdim=64 "
     r"\(the default\) must divide d_inner = expand \* d_model = 96; set headdim to a divisor"),
    (['model.mixer_options={"d_model": 8}'], r"model\.mixer_options sets \['d_model'\]"),
    (['model.mixer_options={"gla": {"num_heads": 2}}'],
     r"model\.mixer_options has tables for \['gla'\], which model\.mixer='attention' does not"),
    (['model.mixer_options={"num_heads": 2, "attention": {"rope": false}}'],
     r"model\.mixer_options: .*options \['num_heads'\] beside tables for \['attention'\]"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=lambda v: str(v)[:60])
def test_bad_values_stop_train_before_any_folder(overrides, message, tmp_path, monkeypatch,
                                                 capsys):
    monkeypatch.chdir(tmp_path)  # the default run dir (runs/...) would appear here
    assert main(["train", *overrides, "--run-dir", str(tmp_path / "run")]) == 2
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("seqzoo: error:") == 2
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


def _leaf_fields(config, prefix=""):
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            yield from _leaf_fields(value, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", field


def test_every_field_has_a_domain_and_every_bounded_one_a_bad_value_above():
    fields = dict(_leaf_fields(ExperimentConfig()))
    tried = {o.split("=")[0] for overrides, _ in BAD_VALUES for o in overrides}
    bounded = {key for key, field in fields.items() if domain_of(field) is not ANY}
    assert bounded - tried == set()
    assert bounded >= {"optim.lr", "model.dropout", "task.num_train", "mesh.seq", "name"}
    unbounded = {key for key in fields if key not in bounded}  # free text, flags, traced dicts
    assert unbounded == {
        "description", "task.data_dir", "task.permuted", "task.random_non_queries",
        "task.normalize", "task.dataset", "task.splits", "model.mixer_options",
        "model.bidirectional",
    }


def test_the_defaults_and_every_experiment_are_in_their_domains():
    check_values(ExperimentConfig())
    for name in experiment_names():
        check_values(load_experiment(name))


def test_every_bad_value_is_listed_at_once():
    cfg = apply_overrides(ExperimentConfig(), ["optim.lr=-1", "model.dropout=2", "mesh.seq=0"])
    with pytest.raises(ValueError, match="3 config values are invalid") as info:
        check_values(cfg)
    assert [line.split()[0] for line in str(info.value).splitlines()[1:]] == [
        "model.dropout", "optim.lr", "mesh.seq",
    ]


def test_values_of_the_wrong_type_set_in_python_are_refused():
    cfg = dataclasses.replace(ExperimentConfig(), seed=True)
    with pytest.raises(ValueError, match="seed expects int, got True"):
        check_config(cfg)


@pytest.mark.parametrize(
    "domain, inside, outside, text",
    [
        (Range(1), [1, 7, 1.5], [0, -3, 0.5, float("nan"), float("inf")], ">= 1"),
        (Range(0, open_low=True), [1e-9, 3], [0, -1e-9], "> 0"),
        (Range(0, 1, open_high=True), [0, 0.5], [1, 1.0, -0.1], "in [0, 1)"),
        (Range(0, 1), [0, 1], [1.01], "in [0, 1]"),
    ],
)
def test_range_bounds(domain, inside, outside, text):
    assert all(domain.allows(v) for v in inside)
    assert not any(domain.allows(v) for v in outside)
    assert str(domain) == text


def test_sequence_model_refuses_plain_options_beside_per_mixer_tables():
    model = SequenceModel(d_model=8, n_layers=1, mixer="attention", vocab_size=5, num_classes=2,
                          mixer_config={"num_heads": 2, "attention": {"rope": False}})
    with pytest.raises(ValueError, match=r"options \['num_heads'\] beside tables"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32))


def test_mlp_of_width_zero_is_refused():
    with pytest.raises(ValueError, match="mlp_ratio=0.1 gives the glu MLP of d_model=8 a hidden"):
        MLP(8, "glu", 0.1).init(jax.random.PRNGKey(0), jnp.zeros((1, 8)))


def test_configs_with_mutable_settings_stay_hashable():
    """Frozen configs are hashed (e.g. a set of task configs); a dict setting must not break it."""
    plain = TaskConfig(name="tfds")
    mapped = TaskConfig(name="tfds", splits={"val": "train[95%:]"})
    assert len({plain, mapped, TaskConfig(name="tfds")}) == 2
    assert hash(mapped) == hash(TaskConfig(name="tfds", splits={"val": "train[95%:]"}))
