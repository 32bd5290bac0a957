"""Configs, experiments, optimizer groups, batch order and the metric files, without training."""

from __future__ import annotations

import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import seqzoo.runner.experiments as experiments
from seqzoo.cli import main
from seqzoo.config import ExperimentConfig, apply_overrides, load_config, to_toml
from seqzoo.runner.data import BatchSampler, eval_batches
from seqzoo.runner.metrics import MetricsLog, read_metrics
from seqzoo.runner.optim import make_optimizer, param_group
from seqzoo.runner.tensorboard import crc32c, masked_crc32c


# ---- configs ---------------------------------------------------------------------------------
def test_overrides_are_typed():
    cfg = apply_overrides(
        ExperimentConfig(),
        [
            "model.mixer=gla",
            "optim.lr=1e-3",
            "model.bidirectional=true",
            "optim.b1=1",
            'model.mixer_options={"gla": {"num_heads": 2}}',
        ],
    )
    assert cfg.model.mixer == "gla" and cfg.optim.lr == 1e-3 and cfg.model.bidirectional is True
    assert cfg.optim.b1 == 1.0 and isinstance(cfg.optim.b1, float)
    assert cfg.model.mixer_options == {"gla": {"num_heads": 2}}
    assert ExperimentConfig().model.mixer != "gla"  # the default is untouched


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.not_a_key=1", "model.not_a_key"),
        ("optim.steps=many", "optim.steps expects int"),
        ("optim.steps=1.5", "optim.steps expects int"),
        ("model.bidirectional=maybe", "bool"),
        ("model.mixer_options=[1]", "model.mixer_options expects dict"),
        ("model.mixer_options={x", "expects a JSON object"),
        ("model=3", "section"),
        ("model.d_model.x=3", "no sub-keys"),
        ("seed", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(ExperimentConfig(), [override])


def test_toml_round_trip(tmp_path):
    cfg = apply_overrides(
        ExperimentConfig(),
        [
            'description=a "quoted" \\ name',
            "optim.lr=1e-05",
            "optim.weight_decay=inf",
            'model.mixer_options={"attention": {"num_heads": 2, "rope": false}, "a b": [1, 2.5]}',
        ],
    )
    path = tmp_path / "cfg.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        ("[model]\nwidth = 3\n", "cfg.toml: unknown config key 'model.width'"),
        ('[optim]\nsteps = "10"\n', "optim.steps expects int, got '10'"),
        ("[optim]\nlr = true\n", "optim.lr expects float"),
        ("model = 3\n", "'model' is a section"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_bad_config_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


# ---- experiments ----------------------------------------------------------------------------
@pytest.fixture
def two_experiment_dirs(tmp_path, monkeypatch):
    """``./experiments`` (the current directory's) and the package's, with one file each."""
    cwd, checkout = tmp_path / "cwd", tmp_path / "checkout"
    for root, name in ((cwd, "mine"), (checkout, "lra/shipped")):
        (root / "experiments" / name).parent.mkdir(parents=True)
        (root / "experiments" / f"{name}.toml").write_text("[optim]\nsteps = 3\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(experiments, "PACKAGE_ROOT", checkout)
    return tmp_path


def test_experiments_are_found_in_the_current_directory_and_the_checkout(two_experiment_dirs):
    assert experiments.experiment_names() == ["default", "mine", "lra/shipped"]
    assert experiments.load_experiment("lra/shipped").name == "lra/shipped"
    assert experiments.load_experiment("mine").optim.steps == 3


def test_an_unknown_experiment_lists_where_it_looked(two_experiment_dirs):
    with pytest.raises(ValueError, match="unknown experiment 'nope'") as info:
        experiments.load_experiment("nope")
    looked = f"{two_experiment_dirs / 'cwd' / 'experiments'}, "
    assert looked + f"{two_experiment_dirs / 'checkout' / 'experiments'}" in str(info.value)
    assert "known experiments: default, mine, lra/shipped" in str(info.value)


@pytest.mark.parametrize(
    "name", ["../../x", "../mine", "lra/../../x", "/etc/passwd", "/x/y", "a//b"]
)
def test_experiment_names_cannot_leave_the_experiments_folders(two_experiment_dirs, name):
    outside = two_experiment_dirs / "x.toml"  # ../../x from cwd/experiments
    outside.write_text("[optim]\nsteps = 5\n")
    with pytest.raises(ValueError, match=f"{re.escape(repr(name))} is not an experiment name"):
        experiments.load_experiment(name)


def test_a_toml_path_is_a_file_the_user_chose(two_experiment_dirs):
    path = two_experiment_dirs / "elsewhere" / "mine.toml"
    path.parent.mkdir()
    path.write_text('name = "custom"\n[optim]\nsteps = 7\n')
    cfg = experiments.load_experiment(str(path))
    assert cfg.name == "custom" and cfg.optim.steps == 7
    with pytest.raises(FileNotFoundError, match="config file lra/shipped.toml not found .*'lra/"):
        experiments.load_experiment("lra/shipped.toml")


def test_a_config_file_naming_its_run_outside_runs_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "escape.toml").write_text('name = "../../escaped"\n')
    assert main(["train", "escape.toml"]) == 2
    assert "name must be a relative name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escape.toml"]
    assert not (tmp_path.parent.parent / "escaped").exists()


# ---- optimizer -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, group",
    [
        ("log_dt", "ssm"),
        ("A_log", "ssm"),
        ("B", "ssm"),
        ("dt_bias", "ssm"),
        ("D", "no_decay"),
        ("bias", "no_decay"),
        ("conv_bias", "no_decay"),
        ("scale", "no_decay"),
        ("embedding", "no_decay"),
        ("kernel", "decay"),
        ("C", "decay"),
    ],
)
def test_param_groups_by_name(name, group):
    assert param_group(name) == group


def test_groups_get_their_learning_rate_and_weight_decay():
    cfg = apply_overrides(
        ExperimentConfig(),
        ["optim.lr=0.1", "optim.ssm_lr=0.01", "optim.weight_decay=0.5", "optim.warmup_steps=0"],
    )
    params = {"log_dt": jnp.ones(2), "kernel": jnp.ones(2), "bias": jnp.ones(2)}
    grads = jax.tree.map(lambda p: 1e-3 * p, params)
    opt = make_optimizer(cfg.optim)
    updates, _ = opt.update(grads, opt.init(params), params)
    # Adam's first step is lr * sign(grad); decoupled decay adds lr * wd * p
    np.testing.assert_allclose(updates["log_dt"], -0.01, rtol=1e-4)
    np.testing.assert_allclose(updates["bias"], -0.1, rtol=1e-4)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 1.5, rtol=1e-4)


# ---- data order ------------------------------------------------------------------------------
def test_batches_are_a_function_of_seed_and_step():
    split = {"inputs": np.arange(10)[:, None], "targets": np.arange(10), "mask": np.ones((10, 1))}
    sampler = BatchSampler(split, 4, seed=3)
    epoch = np.concatenate([sampler.indices(s) for s in range(1, 6)])  # 20 rows: 2 epochs
    assert sorted(epoch[:10]) == list(range(10)) and sorted(epoch[10:]) == list(range(10))
    fresh = BatchSampler(split, 4, seed=3)
    assert [fresh.indices(s).tolist() for s in (5, 2)] == [epoch[16:].tolist(), epoch[4:8].tolist()]
    assert BatchSampler(split, 4, seed=4).indices(1).tolist() != epoch[:4].tolist()


def test_eval_batches_cover_every_row_once():
    split = {"inputs": np.arange(10)[:, None], "targets": np.arange(10), "mask": np.ones((10, 1))}
    batches = list(eval_batches(split, 4))
    assert [len(b["inputs"]) for b in batches] == [4, 4, 4]
    labels = np.concatenate([b["targets"] for b in batches])
    assert labels.tolist() == list(range(10)) + [-100, -100]


# ---- metric files ----------------------------------------------------------------------------
def _event_class():
    """tensorflow.Event (the fields seqzoo writes), built with protobuf from its schema."""
    proto = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="t")
    F = descriptor_pb2.FieldDescriptorProto
    value = proto.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = proto.message_type.add(name="Summary")
    summary.field.add(
        name="value", number=1, type=F.TYPE_MESSAGE, type_name=".t.Value", label=F.LABEL_REPEATED
    )
    log = proto.message_type.add(name="SessionLog")
    log.field.add(name="status", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    event = proto.message_type.add(name="Event")
    for name, number, kind, type_name in [
        ("wall_time", 1, F.TYPE_DOUBLE, None),
        ("step", 2, F.TYPE_INT64, None),
        ("file_version", 3, F.TYPE_STRING, None),
        ("summary", 5, F.TYPE_MESSAGE, ".t.Summary"),
        ("session_log", 6, F.TYPE_MESSAGE, ".t.SessionLog"),
    ]:
        event.field.add(
            name=name,
            number=number,
            type=kind,
            label=F.LABEL_OPTIONAL,
            **({"type_name": type_name} if type_name else {}),
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def _read_events(path) -> list:
    """The events of a TFRecord file, checksums checked."""
    data, events, Event = path.read_bytes(), [], _event_class()
    while data:
        (length,) = struct.unpack("<Q", data[:8])
        body = data[12 : 12 + length]
        assert struct.unpack("<I", data[8:12])[0] == masked_crc32c(data[:8])
        assert struct.unpack("<I", data[12 + length : 16 + length])[0] == masked_crc32c(body)
        events.append(Event.FromString(body))
        data = data[16 + length :]
    return events


def test_crc32c_known_value():
    assert crc32c(b"123456789") == 0xE3069283


def test_metrics_jsonl_and_tensorboard_events_agree(tmp_path):
    log = MetricsLog(tmp_path)
    log.write(10, "train", {"loss": 2.5, "accuracy": 0.25})
    log.write(10, "val", {"accuracy": 0.5})
    log.close()
    assert read_metrics(tmp_path) == [
        {"step": 10, "split": "train", "loss": 2.5, "accuracy": 0.25},
        {"step": 10, "split": "val", "accuracy": 0.5},
    ]
    first = sorted(tmp_path.glob("events.out.tfevents.*"))[0]
    events = _read_events(first)
    assert events[0].file_version == "brain.Event:2"
    scalars = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
    assert scalars == {
        (10, "train/loss"): 2.5,
        (10, "train/accuracy"): 0.25,
        (10, "val/accuracy"): 0.5,
    }


@pytest.mark.parametrize("start", [5, 10])
def test_a_resume_drops_the_records_and_events_it_writes_again(tmp_path, start):
    """Resumed after step 10, the train and val records of step 10 stay, its test record goes;
    resumed after 5, everything of step 10 goes: from metrics.jsonl and the event files alike,
    whose last record a kill had torn."""
    log = MetricsLog(tmp_path)
    for split in ("train", "val", "test"):
        log.write(10, split, {"loss": 1.0})
    log.write(3, "train", {"loss": 2.0})
    log.close()
    first = sorted(tmp_path.glob("events.out.tfevents.*"))[0]
    first.write_bytes(first.read_bytes()[:-7])  # the record of step 3 torn
    resumed = MetricsLog(tmp_path, start_step=start)
    resumed.write(11, "train", {"loss": 0.5})
    resumed.close()
    kept = {10: ["train", "val"], 5: []}[start]
    assert [(r["step"], r["split"]) for r in read_metrics(tmp_path)] == (
        [(10, s) for s in kept] + [(3, "train"), (11, "train")]
    )
    files = sorted(tmp_path.glob("events.out.tfevents.*"))
    assert len(files) == 2 and not list(tmp_path.glob(".*.tmp"))
    events = [(e.step, v.tag) for f in files for e in _read_events(f) for v in e.summary.value]
    assert events == [(10, f"{s}/loss") for s in kept] + [(11, "train/loss")]
