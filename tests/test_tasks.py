"""The LRA / MNIST tasks through the runner's build at toy size, the experiments under
experiments/ (every one builds; LRA models within 10% of their task's Transformer), and a
2-step run on toy ListOps through the command line."""

from __future__ import annotations

import numpy as np
import pytest

from seqzoo import tasks
from seqzoo.cli import main
from seqzoo.config import apply_overrides
from seqzoo.runner.build import build
from seqzoo.runner.experiments import experiment_names, load_experiment, transformer_config
from seqzoo.runner.memory import abstract_build
from tests.test_data_cifar10 import uniform_batches, write_cifar10_binary
from tests.test_data_mnist import _write_idx

TOY = [
    "task.num_train=16",
    "task.num_val=8",
    "task.num_test=8",
    "optim.batch_size=8",
    "optim.steps=2",
    "optim.warmup_steps=1",
    "eval_every=1",
    "checkpoint_every=1",
]


@pytest.fixture(autouse=True)
def no_cache(monkeypatch):
    monkeypatch.setattr(tasks, "CACHE_DIR", None)


def fixtures(root):
    """Tiny release files for every file task under ``root`` (one folder per task)."""
    rows = ["Source\tTarget"] + ["( ( [MAX 2 ) 9 ] )\t9", "( ( [MIN 7 ) 3 ] )\t3"] * 4
    for split in ("train", "val", "test"):
        (root / "listops").mkdir(exist_ok=True)
        (root / "listops" / f"basic_{split}.tsv").write_text("\n".join(rows) + "\n")
    for name in ("train", "eval", "test"):
        (root / "aan").mkdir(exist_ok=True)
        lines = ["1\ta\tb\tabc\txy", "0\tc\td\tlonger text\tz"] * 4
        (root / "aan" / f"new_aan_pairs.{name}.tsv").write_text("\n".join(lines) + "\n")
    for split in ("train", "test"):
        for i, polarity in enumerate(("pos", "neg") * 4):
            folder = root / "imdb" / "aclImdb" / split / polarity
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.txt").write_text(f"review {i} {polarity}")
    write_cifar10_binary(root / "cifar", uniform_batches(8))
    (root / "mnist").mkdir()
    for prefix, n in (("train", 20), ("t10k", 8)):
        _write_idx(
            root / "mnist" / f"{prefix}-images-idx3-ubyte",
            np.arange(n * 784).reshape(n, 28, 28) % 256,
            compress=False,
        )
        _write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, False)
    return {
        "lra_listops": "listops",
        "lra_retrieval": "aan",
        "lra_imdb": "imdb",
        "lra_cifar10": "cifar",
        "smnist": "mnist",
        "sfashion_mnist": "mnist",
    }


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lra")
    return {task: str(root / folder) for task, folder in fixtures(root).items()}


CASES = [  # task, overrides, (seq_len, vocab, classes)
    ("listops", ["task.seq_len=64"], (64, 16, 10)),
    ("pathfinder", [], (1024, 256, 2)),
    ("lra_listops", ["task.seq_len=32"], (32, 16, 10)),
    ("lra_retrieval", ["task.seq_len=32"], (32, 257, 2)),
    ("lra_imdb", ["task.seq_len=32"], (32, 257, 2)),
    ("lra_cifar10", [], (1024, 256, 10)),
    ("smnist", ["task.permuted=true"], (784, 256, 10)),
    ("sfashion_mnist", [], (784, 256, 10)),
]


@pytest.mark.parametrize("task, overrides, expected", CASES)
def test_tasks_build_at_toy_size(task, overrides, expected, data_dirs):
    extra = [f"task.data_dir={data_dirs[task]}"] if task in data_dirs else []
    cfg = apply_overrides(
        load_experiment("smoke"), [f"task.name={task}", *TOY, *overrides, *extra, "model.mixer=s4d"]
    )
    built = build(cfg)
    data, (seq_len, _, classes) = built.data, expected
    assert (data.seq_len, data.vocab_size, data.num_classes) == expected
    for split in data.splits.values():
        n = len(split["targets"])
        assert split["inputs"].shape == split["mask"].shape == (n, seq_len)
        assert split["targets"].shape == (n,) and split["mask"].dtype == bool
        assert 0 <= split["targets"].min() and split["targets"].max() < classes
    assert built.num_params > 0


@pytest.mark.parametrize("task", ["pathfinder", "lra_cifar10", "smnist"])
def test_normalize_feeds_image_pixels_as_floats_in_0_1(task, data_dirs):
    extra = [f"task.data_dir={data_dirs[task]}"] if task in data_dirs else []
    base = apply_overrides(
        load_experiment("smoke"), [f"task.name={task}", *TOY, *extra, "model.mixer=s4d"]
    )
    tokens = build(base)
    floats = build(apply_overrides(base, ["task.normalize=true"]))
    assert tokens.data.vocab_size == 256 and floats.data.vocab_size is None
    for name, split in floats.data.splits.items():
        assert split["inputs"].dtype == np.float32
        pixels = tokens.data.splits[name]["inputs"].astype(np.float32)
        np.testing.assert_allclose(split["inputs"], pixels / 255, rtol=1e-6)
        np.testing.assert_array_equal(split["targets"], tokens.data.splits[name]["targets"])
    # a linear encoder of one feature replaces the 256-row embedding
    assert tokens.num_params - floats.num_params == (256 - 2) * base.model.d_model


@pytest.mark.parametrize("task", ["lra_imdb", "lra_cifar10", "lra_pathfinder", "smnist"])
def test_missing_data_dir_fails_before_compute(task, tmp_path):
    cfg = apply_overrides(
        load_experiment("smoke"), [f"task.name={task}", f"task.data_dir={tmp_path / 'none'}"]
    )
    with pytest.raises(FileNotFoundError, match="task.data_dir"):
        build(cfg)
    (tmp_path / "empty").mkdir()
    cfg = apply_overrides(cfg, [f"task.data_dir={tmp_path / 'empty'}"])
    with pytest.raises(FileNotFoundError, match="Expected these files there"):
        build(cfg)


def test_two_steps_of_toy_listops_through_the_cli(tmp_path, capsys):
    argv = [
        "train",
        "lra/listops_s4d",
        *TOY,
        "task.seq_len=32",
        "model.d_model=16",
        "model.n_layers=1",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "params: " in out and "to the transformer config of this task" in out
    assert (tmp_path / "run" / "summary.json").is_file()


def _toy(name, data_dirs):
    cfg = load_experiment(name)
    extra = [f"task.data_dir={data_dirs[cfg.task.name]}"] if cfg.task.name in data_dirs else []
    fixed_length = cfg.task.name == "pathfinder" or "cifar" in cfg.task.name
    small = ["task.seq_len=32"] if name.startswith("lra/") and not fixed_length else []
    return apply_overrides(cfg, [*TOY, *small, *extra])


LRA = [n for n in experiment_names() if n.startswith("lra/")]


@pytest.mark.slow  # 30 s of CI; the repro configs' 10% rule stays in the default suite
def test_every_lra_model_is_within_10_percent_of_the_transformer(data_dirs):
    assert len(LRA) >= 50
    for name in LRA:
        cfg = _toy(name, data_dirs)
        b = abstract_build(cfg)  # no data; param counts do not depend on the (toy) length
        if name.endswith("_transformer"):
            continue
        assert transformer_config(cfg) is not None, name
        ratio = b.num_params / b.transformer_params
        assert 0.9 <= ratio <= 1.1, f"{name}: {b.params_line()}"


# LRA's Transformer configs (lra_benchmarks/*/configs/*transformer*, see each TOML's comment):
# emb_dim, mlp_dim, qkv_dim, num_layers
LRA_TRANSFORMERS = {
    "listops": (512, 1024, 512, 4),
    "text": (256, 1024, 256, 4),
    "retrieval": (128, 512, 128, 4),
    "image": (128, 128, 64, 1),
    "pathfinder": (32, 32, 16, 4),
}


@pytest.mark.parametrize("task", sorted(LRA_TRANSFORMERS))
def test_lra_transformers_have_lra_sizes(task, data_dirs):
    emb, mlp, qkv, layers = LRA_TRANSFORMERS[task]
    params = build(_toy(f"lra/{task}_transformer", data_dirs)).params_shape["params"]
    blocks = [params[f"block_{i}"] for i in range(layers)]
    assert f"block_{layers}" not in params
    for block in blocks:
        assert block["ffn"]["up"]["kernel"].shape == (emb, mlp)
        assert block["mix"]["q_proj"]["kernel"].shape == (emb, qkv)
        assert block["mix"]["o_proj"]["kernel"].shape == (qkv, emb)


@pytest.mark.parametrize("task", ["selective_copying", "induction_heads", "mqar"])
def test_test_seq_len_sets_the_length_of_the_test_split_only(task):
    cfg = apply_overrides(
        load_experiment("smoke"),
        [
            f"task.name={task}",
            *TOY,
            "task.seq_len=40",
            "task.test_seq_len=160",
            "task.num_tokens=4",
            "task.num_kv_pairs=4",
            "task.vocab_size=200",
        ],
    )
    data = build(cfg).data
    assert data.seq_len == 40
    assert data["train"]["inputs"].shape[1] == data["val"]["inputs"].shape[1] == 40
    assert data["test"]["inputs"].shape == data["test"]["targets"].shape == (8, 160)
    assert (data["test"]["targets"] != -100).any(axis=1).all()


def test_test_seq_len_is_refused_where_it_does_not_apply():
    cfg = apply_overrides(load_experiment("smoke"), ["task.name=listops", "task.test_seq_len=64"])
    with pytest.raises(ValueError, match="test_seq_len"):
        build(cfg)


def test_selective_copying_targets_are_the_data_tokens_in_order():
    cfg = apply_overrides(
        load_experiment("smoke"),
        [
            "task.name=selective_copying",
            *TOY,
            "task.seq_len=24",
            "task.num_tokens=4",
            "task.vocab_size=16",
        ],
    )
    train = build(cfg).data["train"]
    for inputs, targets in zip(train["inputs"], train["targets"], strict=True):
        data_tokens = inputs[:20][inputs[:20] != 0]
        assert (inputs[20:] == 15).all() and list(targets[20:]) == list(data_tokens)
        assert (targets[:20] == -100).all()


def test_every_experiment_loads_and_builds(data_dirs, each_task_built_once):
    """Each experiment's config loads and its model builds on its task's data (generated once
    per task config: 8 listops experiments share one)."""
    for name in experiment_names():
        if name.startswith("lra/"):
            continue  # built above
        cfg = _toy(name, data_dirs)
        assert cfg.name == name and build(cfg).params_shape, name


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_filler_follows_task_random_non_queries(random_non_queries):
    overrides = [*TOY, "task.name=mqar", "task.seq_len=64", "task.num_kv_pairs=4",
                 "task.vocab_size=200", f"task.random_non_queries={random_non_queries}"]
    train = build(apply_overrides(load_experiment("smoke"), overrides)).data["train"]
    queries = train["targets"][:, 8:] != -100  # after the 4 key-value pairs
    filler = train["inputs"][:, 8:][~queries]
    assert (filler != 0).mean() > 0.9 if random_non_queries else (filler == 0).all()


def test_mqar_jrt_prompt_task_names_its_config_keys_and_builds_the_papers_layout():
    """task.repeat_scope=prompt: checked per copy of the prompt, naming the config keys; the
    built rows are the plain task's rows twice, only the second copy labelled."""
    base = [*TOY, "task.name=mqar", "task.num_kv_pairs=4", "task.vocab_size=200",
            "task.num_queries=2"]
    with pytest.raises(ValueError, match=r"task\.seq_len / task\.context_repeats = 10 is too"):
        tasks.check_task(apply_overrides(load_experiment("smoke"), [
            *base, "task.seq_len=20", "task.context_repeats=2", "task.repeat_scope=prompt"]).task)
    plain = build(apply_overrides(load_experiment("smoke"), [*base, "task.seq_len=32"]))
    jrt = build(apply_overrides(load_experiment("smoke"), [
        *base, "task.seq_len=64", "task.context_repeats=2", "task.repeat_scope=prompt"]))
    for split in ("train", "test"):
        p, j = plain.data[split], jrt.data[split]
        np.testing.assert_array_equal(j["inputs"], np.tile(p["inputs"], (1, 2)))
        np.testing.assert_array_equal(j["targets"][:, 32:], p["targets"])
        assert (j["targets"][:, :32] == -100).all() and ((p["targets"] != -100).sum(1) == 2).all()
