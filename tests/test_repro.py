"""Issue #11's launcher (experiments/repro/run.py) and what it relies on: the runner's
``max_minutes`` budget, the repro configs (within 10% of their task's Transformer), and a toy
launch of a few runs through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from experiments import based_tradeoff
from experiments.repro.run import (
    ALL_RUNS,
    GPU_MEMORY_GB,
    GROUPS,
    OUT_FILES,
    PACK_BYTES,
    State,
    dropped_note,
    gpu_memory_needed,
    main,
    pack_states,
    place_states,
    plan_states,
    run_config,
    save_state,
    split_large,
    starting_points,
    state_file,
    state_files,
    train_command,
    unpack_state,
)
from seqzoo import tasks
from seqzoo.config import apply_overrides
from seqzoo.data.synthetic import mqar
from seqzoo.runner import train
from seqzoo.runner.build import build
from seqzoo.runner.experiments import experiment_names, load_experiment, transformer_config
from seqzoo.runner.metrics import read_metrics
from seqzoo.runner.rundir import SUMMARY_FILE, write_config
from tests.test_data_mnist import _write_idx

ROOT = Path(__file__).resolve().parents[1]
REPRO = [n for n in experiment_names() if n.startswith("repro/")]
BY_KEY = {run.key: run for run in ALL_RUNS}


def test_max_minutes_stops_training_evaluates_and_tests_the_last_step(tmp_path):
    cfg = apply_overrides(load_experiment("smoke"), ["optim.steps=1000", "max_minutes=1e-6"])
    summary = train(cfg, tmp_path / "run", log=lambda _: None, progress=False)
    assert summary["steps"] == 1  # the budget ran out during the first step
    records = {(r["split"], r["step"]) for r in read_metrics(tmp_path / "run")}
    assert {("train", 1), ("val", 1), ("test", 1)} <= records
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 1


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_planned_run_has_a_config_and_each_group_fits_in_the_gpu_memory(group):
    plan = GROUPS[group]
    assert {run.experiment for run in plan} <= set(experiment_names())
    assert len({run.key for run in ALL_RUNS}) == len(ALL_RUNS)  # --only tells them apart
    assert gpu_memory_needed(plan) <= 0.95 * GPU_MEMORY_GB
    assert all(0 < run.memory_fraction <= 0.6 for run in plan)  # none may take the GPU


def test_an_only_selection_that_does_not_fit_the_gpu_is_refused_before_it_starts(tmp_path, capsys):
    """Two groups that each fit but not together (the 19 runs that all died out of memory at
    start on 2026-12-06) are refused; either group alone is not."""
    too_many = [run.key for g in ("jrt_conv", "based_fig2_d64", "based_fig2_d48", "based_fig2_d128")
                for run in GROUPS[g]]
    with pytest.raises(SystemExit) as refused:
        main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
              "--only", *too_many])
    assert refused.value.code == 2
    assert "split them over calls" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # nothing was launched
    assert gpu_memory_needed(GROUPS["based_fig2_d48"]) <= 0.95 * GPU_MEMORY_GB


def test_repro_models_are_within_10_percent_of_their_transformer(monkeypatch, each_task_built_once):
    monkeypatch.setattr(tasks, "CACHE_DIR", None)
    toy = ["task.num_train=8", "task.num_val=8", "task.num_test=8", "optim.batch_size=8"]
    compared = 0
    for name in REPRO:
        cfg = apply_overrides(load_experiment(name), toy)
        if name.endswith("_transformer") or transformer_config(cfg) is None:
            continue
        built = build(cfg)
        assert 0.9 <= built.num_params / built.transformer_params <= 1.1, built.params_line()
        compared += 1
    assert compared >= 2


def _fake_fashion_mnist(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 16)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), True)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, True)


def _launch(tmp_path: Path, runs: list[str], *extra: str,
            minutes: float = 4) -> subprocess.CompletedProcess:
    _fake_fashion_mnist(tmp_path / "data" / "fashion-mnist")
    # the data cache goes to HOME/.cache; the toy runs compile more than they compute: XLA's
    # optimisations off, as in tests/conftest.py (53 -> 40 CPU-s for the 4-run launch)
    env = {**os.environ, "HOME": str(tmp_path), "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    command = [
        sys.executable, "experiments/repro/run.py", "--toy", "--minutes", str(minutes),
        "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
        "--data-dir", str(tmp_path / "data"), *extra, "--only", *runs,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60 * minutes + 60)  # the launcher's own deadline, and a minute


def _check_outputs(tmp_path: Path, result: subprocess.CompletedProcess, runs: list[str]):
    """The table has a row per run, in ``ALL_RUNS`` order, with the toy's 3 steps and an
    accuracy."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    table = (out / "results.md").read_text()
    assert table in result.stdout
    rows = table.splitlines()[2:]
    assert len(rows) == len(runs)
    for name, line in zip(runs, rows, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert f" {BY_KEY[name].experiment} " in cells[-1] and "max_minutes=" in cells[-1]
        assert 0.0 <= float(cells[6]) <= 100.0 and cells[3] == "3 (3)"
    assert len(list(out.iterdir())) <= 8  # what the device tool returns
    with tarfile.open(out / "runs.tar.gz") as archive:
        names = archive.getnames()
    assert {f"{name}/summary.json" for name in runs} <= set(names)
    return table


def test_toy_runs_keep_one_layer_per_mixer_of_their_pattern(tmp_path):
    """A toy run is small but trains every mixer of its layer pattern (one layer each)."""
    fig2 = GROUPS["based_fig2_d64"][0]
    recipe = GROUPS["based_tradeoff"][0]
    for run, layers in ((BY_KEY["listops_s4d"], 1), (fig2, 2), (recipe, 5)):
        cfg, _ = run_config(run, True, tmp_path)
        assert cfg.model.n_layers == layers == len(cfg.model.mixer.split(","))
        assert cfg.model.d_model == 32 and cfg.optim.steps == 3


def test_toy_launch_reports_each_run(tmp_path):
    runs = ["listops_s4d", "sfashion_mnist_s4d", "induction_heads_s4d",
            "mqar_jrt_rnn@steps=4000@seed=0"]  # ALL_RUNS order; the last a top-level experiment
    # (issue 27's), with overrides in its key, and the mqar curve (mqar_attention_d64@lr=0.01, a
    # fifth process on 2 cores, is launched by test_toy_launch_of_every_run[mqar_d64], -m slow)
    table = _check_outputs(tmp_path, _launch(tmp_path, runs), runs)
    assert "induction_heads, test at 4097" in table
    assert {p.name for p in (tmp_path / "out").glob("curves_*.png")} == {
        "curves_listops.png",
        "curves_sfashion_mnist.png",
        "curves_mqar.png",
        "curves_induction_heads.png",
    }


@pytest.mark.slow
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_toy_launch_of_every_run(tmp_path, group):
    runs = [run.key for run in GROUPS[group]]
    # 2 busy cores: issue27's 15 runs took 320 s (2026-12-06)
    _check_outputs(tmp_path, _launch(tmp_path, runs, minutes=20), runs)


def test_jrt_conv_scores_the_same_rows_once_and_twice_at_one_decoder_state(tmp_path):
    """``jrt_conv``: read twice is the read-once row written twice with only the second copy
    scored (the same questions, so the accuracies compare); JRT-RNN's prefix is exactly the
    pairs; every run has BaseConv first and the same Based widths (the decoder's state)."""
    group = GROUPS["jrt_conv"]
    assert len(group) == 10 and all(run.overrides[-1] in ("seed=0", "seed=1") for run in group)
    small = ["task.num_train=2", "task.num_val=2", "task.num_test=3"]
    configs = {run.key: apply_overrides(run_config(run, False, tmp_path)[0], small)
               for run in group}
    data = {key: tasks.build_task(cfg.task)["test"] for key, cfg in configs.items()}  # valid
    twice_key = "mqar_jrt_based_conv@steps=12000@seed=0"
    once_key = "mqar_jrt_based_conv@steps=12000@context_repeats=1@seq_len=160@seed=0"
    twice, once = configs[twice_key], configs[once_key]
    rows, plain = data[twice_key], data[once_key]
    length = once.task.seq_len
    assert twice.task.seq_len == 2 * length and twice.task.num_queries == 16
    np.testing.assert_array_equal(rows["inputs"], np.tile(plain["inputs"], (1, 2)))
    np.testing.assert_array_equal(rows["targets"][:, length:], plain["targets"])
    assert (rows["targets"][:, :length] == -100).all()
    for cfg in configs.values():
        mixers = cfg.model.mixer.split(",")
        assert mixers[0] == "base_conv" and cfg.model.n_layers == 2
        options = cfg.model.mixer_options[mixers[1]]
        assert (options["num_heads"], options["key_dim"]) == (2, 4)
        if mixers[1] == "prefix_linear_attention":
            assert options["prefix_length"] == 2 * cfg.task.num_kv_pairs


def test_based_tradeoff_draws_its_points_from_the_groups_finished_runs(tmp_path):
    """``based_tradeoff.py --from-runs`` reads each point's window, feature_dim and accuracy
    from a finished run of the ``based_tradeoff`` group and passes over other runs."""
    runs = [*GROUPS["based_tradeoff"][:2], GROUPS["issue27"][0]]  # the last: MoM
    for accuracy, run in zip((0.5, 0.6, 0.7), runs, strict=True):
        run_dir = tmp_path / "runs" / run.key
        run_dir.mkdir(parents=True)
        write_config(run_dir, run_config(run, False, tmp_path)[0])
        (run_dir / SUMMARY_FILE).write_text(json.dumps({"test_accuracy": accuracy}))
    out = tmp_path / "out"
    based_tradeoff.main(["--out", str(out), "--from-runs", str(tmp_path / "runs")])
    records = json.loads((out / "based_tradeoff.json").read_text())
    assert [(r["window"], r["feature_dim"], r["test_accuracy"]) for r in records] == [
        (4, 4, 0.5), (4, 16, 0.6)]
    assert records[0]["state"] < records[1]["state"]  # Based's state grows with feature_dim
    assert (out / "based_tradeoff.png").is_file()


FIG2_GROUPS = ("based_fig2_d48", "based_fig2_d64", "based_fig2_d128")


def test_based_fig2_groups_hold_the_papers_grid_in_its_setup(tmp_path):
    """The ``based_fig2_*`` groups are the figure's d_model x feature_dim grid (HazyResearch/zoology
    arxiv24_based_figure2/configs.py), each point a 2-layer BaseConv + Based model with the
    point's width and feature_dim on the paper's hardest MQAR segment."""
    runs = [run for group in FIG2_GROUPS for run in GROUPS[group]]
    points = set()
    for run in runs:
        cfg = run_config(run, False, tmp_path)[0]
        model = (cfg.model.mixer, cfg.model.n_layers, cfg.model.mlp)
        assert model == ("base_conv,based", 2, "none")
        assert (cfg.task.seq_len, cfg.task.num_kv_pairs, cfg.task.vocab_size) == (256, 64, 8192)
        assert cfg.optim.batch_size == 256 and cfg.optim.steps == 6000
        based = cfg.model.mixer_options["based"]
        assert based["num_heads"] == 1 and "value_dim" not in based  # value width: d_model
        points.add((cfg.model.d_model, based["key_dim"]))
        assert run.key == f"mqar_based_fig2@d{cfg.model.d_model}_f{based['key_dim']}@steps=6000"
    assert points == {(d, f) for d in (48, 64, 128) for f in (8, 16, 24)}
    assert len(runs) == len(points)
    windows = []
    for run in GROUPS["based_fig2_swa"]:  # the figure's sliding-window model, same task
        cfg = run_config(run, False, tmp_path)[0]
        assert (cfg.model.mixer, cfg.model.d_model, cfg.task.num_kv_pairs) == (
            "base_conv,attention", 128, 64)
        attention = cfg.model.mixer_options["attention"]
        assert attention["num_heads"] == 1 and attention["rope"] is False
        windows.append(attention["window"])
    assert windows == [8, 16, 32, 64, 128]


def test_based_tradeoff_fig2_preset_draws_only_the_fig2_runs(tmp_path):
    """``--preset fig2 --from-runs`` takes the fig2 groups' runs (Based: one line per d_model;
    the sliding-window model) and passes over the recipe's; the recipe preset passes over the
    fig2 runs."""
    runs = [GROUPS["based_fig2_d48"][0], GROUPS["based_fig2_d48"][2], GROUPS["based_fig2_d128"][0],
            GROUPS["based_fig2_swa"][1], GROUPS["based_tradeoff"][0]]  # the last: the recipe's
    for accuracy, run in zip((0.1, 0.2, 0.3, 0.5, 0.4), runs, strict=True):
        run_dir = tmp_path / "runs" / run.key
        run_dir.mkdir(parents=True)
        write_config(run_dir, run_config(run, False, tmp_path)[0])
        (run_dir / SUMMARY_FILE).write_text(json.dumps({"test_accuracy": accuracy}))
    out = tmp_path / "out"
    based_tradeoff.main(["--out", str(out), "--preset", "fig2",
                         "--from-runs", str(tmp_path / "runs")])
    records = json.loads((out / "based_fig2.json").read_text())
    assert [(r["model"], r["d_model"], r["feature_dim"], r["window"], r["test_accuracy"])
            for r in records] == [("Based", 48, 8, None, 0.1), ("Based", 48, 24, None, 0.2),
                                  ("Based", 128, 8, None, 0.3),
                                  ("sliding window", 128, None, 16, 0.5)]
    assert records[0]["state"] < records[1]["state"] and records[0]["state"] < records[2]["state"]
    assert records[3]["state"] > 2 * 16 * 128  # the window's keys and values
    assert "reachable_queries" not in records[0]  # the window's bound: 0 of 64 pairs at w=16
    assert records[3]["reachable_queries"] == 0.0
    assert (out / "based_fig2.png").is_file()
    based_tradeoff.main(["--out", str(out), "--from-runs", str(tmp_path / "runs")])
    recipe = json.loads((out / "based_tradeoff.json").read_text())
    assert [(r["window"], r["feature_dim"], r["test_accuracy"]) for r in recipe] == [(4, 4, 0.4)]


def test_reachable_queries_counts_the_pairs_a_window_over_the_conv_can_see():
    """A query is reachable iff a position in the window holds, through the conv's K taps, an
    earlier (key, value) pair of the query: the value's position j within q - j <= w + K - 3.
    Hand-made rows: one query 2 tokens after its value, one 6 after (a lone copy of its value
    between, which does not count), one whose pair comes only after it (never reachable)."""
    inputs = np.array([[5, 9, 6, 8, 7, 6, 9, 5],
                       [1, 2, 3, 4, 3, 0, 3, 2]])
    targets = np.full(inputs.shape, -100)
    targets[0, 5], targets[0, 7], targets[1, 4] = 8, 9, 2  # distances 2, 6, none
    reach = based_tradeoff.reachable_queries
    assert reach(inputs, targets, [1, 2, 5, 6, 100]) == {
        1: 0.0, 2: 1 / 3, 5: 1 / 3, 6: 2 / 3, 100: 2 / 3}
    assert reach(inputs, targets, [2, 3, 7], kernel_size=2) == {2: 0.0, 3: 1 / 3, 7: 2 / 3}
    with pytest.raises(ValueError, match="kernel_size"):
        reach(inputs, targets, [8], kernel_size=1)
    # MQAR's rows: queries at even positions, values at odd ones, so an odd window reaches what
    # the even one below it does; a window as long as the row reaches every query
    data = mqar(40, 32, 8, 64, seed=3, cache_dir=None)["all"]
    shares = reach(data["inputs"], data["targets"], range(1, 33))
    assert all(shares[w] == shares[w - 1] for w in range(2, 33, 2))
    assert list(shares.values()) == sorted(shares.values()) and shares[32] == 1.0
    assert 0.0 < shares[16] < 1.0


def test_state_keeps_the_newest_checkpoint_and_unpacks_only_into_its_run(tmp_path):
    run_dir = tmp_path / "work" / "runs" / "mqar_attention_d64@lr=0.01"
    for folder in ("checkpoints/4/params", "checkpoints/12/params", "best/3", "best/12",
                   "best/13", "skipped/x"):
        (run_dir / folder).mkdir(parents=True)
        (run_dir / folder / "data").write_text(folder)
    for name in ("config.toml", "metrics.jsonl", "lock"):
        (run_dir / name).write_text(name)
    out = tmp_path / "out"
    out.mkdir()
    path = save_state(run_dir, run_dir.name, out)
    assert path.name == "state_mqar_attention_d64_lr_0.01.tar.gz"  # what the device returns
    work = tmp_path / "elsewhere"
    assert not unpack_state(out, "listops_s4d", work)
    assert unpack_state(out, run_dir.name, work)
    copied = work / "runs" / run_dir.name
    files = {str(p.relative_to(copied)) for p in copied.rglob("*") if p.is_file()}
    assert files == {"checkpoints/12/params/data", "best/12/data", "config.toml", "metrics.jsonl"}

    with tarfile.open(out / state_file("evil"), "w:gz") as archive:
        archive.add(run_dir / "config.toml", arcname="other/config.toml")
    with pytest.raises(ValueError, match="outside the folder 'evil'"):
        unpack_state(out, "evil", work)


def test_states_travel_in_packs_and_unpack_from_them(tmp_path, monkeypatch):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    keys = ["mqar_jrt_based@seed=0", "mqar_jrt_based@seed=1", "pathfinder_s4d"]
    for key, size in zip(keys, (40, 50, 200), strict=True):
        run_dir = tmp_path / "runs" / key
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "config.toml").write_text(key)
        (run_dir / "blob").write_bytes(os.urandom(size * 1024))  # incompressible
    archives = [save_state(tmp_path / "runs" / key, key, out) for key in keys]
    monkeypatch.setattr("experiments.repro.run.PACK_BYTES", 120 * 1024)
    packs = pack_states(archives, out)
    assert [p.name for p in packs] == ["states_1.tar", "states_2.tar"]  # 40 + 50; 200 alone
    assert sorted(p.name for p in out.iterdir()) == ["states_1.tar", "states_2.tar"]
    with tarfile.open(packs[0]) as pack:
        assert pack.getnames() == [state_file(keys[0]), state_file(keys[1])]
    for key in keys:
        assert unpack_state(out, key, work)
        assert (work / "runs" / key / "config.toml").read_text() == key
    assert not unpack_state(out, "listops_s4d", work)


def test_a_state_larger_than_a_returned_file_travels_in_parts(tmp_path, monkeypatch):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    key = "pathfinder_s4d@s4_official"
    run_dir = tmp_path / "runs" / key
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.toml").write_text(key)
    blob = os.urandom(250 * 1024)  # incompressible
    (run_dir / "blob").write_bytes(blob)
    monkeypatch.setattr("experiments.repro.run.PACK_BYTES", 100 * 1024)
    archive = save_state(run_dir, key, out)
    whole = archive.read_bytes()
    parts = split_large(archive)
    assert [p.name for p in parts] == [f"{state_file(key)}.part{i}" for i in range(3)]
    assert all(p.stat().st_size <= 100 * 1024 for p in parts) and not archive.exists()
    assert b"".join(p.read_bytes() for p in parts) == whole
    assert unpack_state(out, key, work)
    assert (work / "runs" / key / "blob").read_bytes() == blob
    parts[1].unlink()
    with pytest.raises(ValueError, match="one is missing"):
        unpack_state(out, key, work)
    small = out / "state_small.tar.gz"
    small.write_bytes(b"x" * 100 * 1024)
    assert split_large(small) == [small] and small.is_file()  # at the limit: kept whole


MIB = 2**20
MQAR_KEYS = [f"mqar_attention_d64@lr={lr}" for lr in ("0.000464", "0.01", "a", "b", "c")]


def test_states_are_planned_within_the_files_out_returns():
    """The call of 2026-12-06: 5 unfinished MQAR states of 31 MiB (3 parts each) and the
    unfinished Pathfinder state of 7.6 MiB selected last, beside 3 fixed files (the table, the
    archive, a curve). One MQAR state travels whole (3 parts) and the Pathfinder state after
    it, whole: at most 8 files, never some parts of a state; the others are named."""
    states = [State(key, 31 * MIB, False) for key in MQAR_KEYS]
    states.append(State("pathfinder_s4d@steps=125000", int(7.6 * MIB), False))
    slots = OUT_FILES - 3
    kept, dropped = plan_states(states, slots)
    assert [s.key for s in kept] == [MQAR_KEYS[0], "pathfinder_s4d@steps=125000"]
    assert [s.key for s in dropped] == MQAR_KEYS[1:]
    assert 3 + state_files([s.size for s in kept], slots) == 7 <= OUT_FILES  # 3 parts, 1 loose
    note = dropped_note(dropped[0], OUT_FILES)
    assert note.startswith(f"state of {MQAR_KEYS[1]} (31.0 MiB) not returned: OUT holds 8 files")
    assert f"--only {MQAR_KEYS[1]} --save-state" in note and "even alone" not in note
    assert "even alone it needs 7 files" in dropped_note(State("big", 100 * MIB, False), 8)


def test_states_that_all_fit_are_all_kept_loose_or_packed():
    states = [State(f"run{i}", (i + 1) * MIB, i % 2 == 0) for i in range(4)]
    assert plan_states(states, 5) == ([states[1], states[3], states[0], states[2]], [])
    assert state_files([s.size for s in states], 5) == 4  # one file each
    assert state_files([s.size for s in states], 3) == 1  # 10 MiB in one pack
    assert state_files([31 * MIB, 2 * MIB], 4) == 4  # 3 parts and one loose


def test_a_finished_runs_state_yields_its_slot_to_an_unfinished_one():
    """Listed first, the finished run's state is weighed after the unfinished one's."""
    done, going = State("done", 10 * MIB, True), State("going", 10 * MIB, False)
    assert plan_states([done, going], 1) == ([going], [done])
    assert plan_states([done, going], 2) == ([going, done], [])


def test_planned_states_are_placed_whole_and_unpack_from_out(tmp_path, monkeypatch):
    """``place_states`` writes what the plan counted (parts of the large state, a pack of the
    small ones where loose files would not fit) and every kept run unpacks from it."""
    monkeypatch.setattr("experiments.repro.run.PACK_BYTES", 100 * 1024)
    staging, out, work = tmp_path / "staging", tmp_path / "out", tmp_path / "work"
    staging.mkdir()
    out.mkdir()
    staged = []
    for key, size, done in (("big", 250, False), ("huge", 400, False), ("a", 30, True),
                            ("b", 40, False)):
        run_dir = tmp_path / "runs" / key
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "config.toml").write_text(key)
        (run_dir / "blob").write_bytes(os.urandom(size * 1024))  # incompressible
        archive = save_state(run_dir, key, staging)
        staged.append((State(key, archive.stat().st_size, done), archive))
    slots = 4
    kept, dropped = plan_states([s for s, _ in staged], slots)
    assert [s.key for s in kept] == ["big", "b", "a"] and [s.key for s in dropped] == ["huge"]
    placed = place_states([(s, path) for s, path in staged if s in kept], out, slots)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in placed) == [
        *(f"{state_file('big')}.part{i}" for i in range(3)), "states_1.tar"]
    assert len(placed) == state_files([s.size for s in kept], slots) <= slots
    for key in ("big", "a", "b"):
        assert unpack_state(out, key, work)
        assert (work / "runs" / key / "config.toml").read_text() == key
    assert not unpack_state(out, "huge", work)


def test_a_state_cut_short_is_refused_before_its_run_is_replaced(tmp_path, monkeypatch):
    """Part 0 of 3 alone (what the device tool returned on 2026-12-06, in alphabetical order)
    joins into an archive cut short: refused, and the run directory in WORK is kept."""
    monkeypatch.setattr("experiments.repro.run.PACK_BYTES", 100 * 1024)
    out, work, key = tmp_path / "out", tmp_path / "work", "pathfinder_s4d"
    run_dir = tmp_path / "runs" / key
    run_dir.mkdir(parents=True)
    out.mkdir()
    (run_dir / "blob").write_bytes(os.urandom(250 * 1024))
    parts = split_large(save_state(run_dir, key, out))
    for part in parts[1:]:
        part.unlink()
    (work / "runs" / key).mkdir(parents=True)
    (work / "runs" / key / "kept").write_text("")
    with pytest.raises(ValueError, match="incomplete"):
        unpack_state(out, key, work)
    assert (work / "runs" / key / "kept").is_file()
    assert PACK_BYTES == 15 * MIB  # the real limit, under the device tool's 16 MiB


@pytest.mark.slow
def test_a_run_saved_by_one_launch_continues_in_the_next(tmp_path):
    """``--save-state`` writes the run directory (newest checkpoint only); ``--resume-from``
    continues it where the first launch's deadline cut it, as on another machine."""
    first = _launch(tmp_path / "a", ["mqar_attention_d64"], "--save-state", minutes=1.02)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    state = tmp_path / "a" / "out" / "state_mqar_attention_d64.tar.gz"
    with tarfile.open(state) as archive:
        parts = [Path(name).parts for name in archive.getnames()]
    done = {p[2] for p in parts if len(p) > 2 and p[1] == "checkpoints"}
    assert len(done) == 1  # only the newest
    step = int(done.pop())
    assert step < 3  # the 1-second budget stopped it early

    second = _launch(tmp_path / "b", ["mqar_attention_d64"], "--resume-from", str(state.parent))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed mqar_attention_d64" in second.stdout and "| 3 (3) |" in second.stdout
    run_dir = tmp_path / "b" / "work" / "runs" / "mqar_attention_d64"
    resumes = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumes] == [step]
    train_steps = [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"]
    assert train_steps == [1, 2, 3]  # each step once, across the two launches


CURRICULUM = GROUPS["pathfinder_curriculum"][0]


def test_the_curriculum_starts_contour_14_from_the_contour_9_run(tmp_path):
    """The curriculum run is pathfinder_s4d at its own difficulty (contour 14) started from the
    contour-9 run of ``pathfinder_next``: the same model (the same variables) and memory."""
    source = BY_KEY[CURRICULUM.init_from]
    assert source in GROUPS["pathfinder_next"]
    cfg, source_cfg = (run_config(r, False, tmp_path)[0] for r in (CURRICULUM, source))
    default = load_experiment(CURRICULUM.experiment).task.difficulty
    assert cfg.task.difficulty == default == "curv_contour_length_14"
    assert source_cfg.task.difficulty == "curv_contour_length_9"
    assert cfg.model == source_cfg.model and cfg.optim == source_cfg.optim
    assert cfg.optim.steps == 50000 and CURRICULUM.memory_gb == source.memory_gb


def test_a_run_starts_from_its_source_in_work_or_a_state_and_resumes_without_it(tmp_path, capsys):
    """The source is looked for in WORK/runs, then in a --resume-from state (unpacked into
    WORK), and passed as --init-from; a resumed run needs none and is never initialised again;
    a source found nowhere, or trained in the same call, is refused."""
    work, states, source = tmp_path / "work", tmp_path / "states", CURRICULUM.init_from
    with pytest.raises(ValueError, match="nor was a --resume-from DIR given"):
        starting_points([CURRICULUM], set(), work, None)
    states.mkdir()
    with pytest.raises(ValueError, match=f"nor {states} a state of it"):
        starting_points([CURRICULUM], set(), work, states)
    assert starting_points([CURRICULUM], {CURRICULUM.key}, work, None) == {}  # resumed

    carried = tmp_path / "elsewhere" / source
    (carried / "checkpoints" / "7").mkdir(parents=True)
    (carried / "config.toml").write_text("")
    save_state(carried, source, states)
    points = starting_points([CURRICULUM], set(), work, states)
    assert points == {CURRICULUM.key: work / "runs" / source}
    assert (work / "runs" / source / "checkpoints" / "7").is_dir()  # unpacked
    assert starting_points([CURRICULUM], set(), work, None) == points  # now in WORK
    with pytest.raises(ValueError, match="which this call would train too"):
        starting_points([CURRICULUM, BY_KEY[source]], set(), work, None)

    run_dir = work / "runs" / CURRICULUM.key
    command = train_command(CURRICULUM, ["optim.steps=9"], run_dir, 5, init=points[CURRICULUM.key])
    assert command[command.index("--init-from") + 1] == str(work / "runs" / source)
    resumed = train_command(CURRICULUM, ["optim.steps=9"], run_dir, 5, resume=True)
    assert "--resume" in resumed and "--init-from" not in resumed

    with pytest.raises(SystemExit):  # the launcher refuses before it starts anything
        main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "fresh"),
              "--only", CURRICULUM.key])
    assert f"starts from the run {source}, but neither" in capsys.readouterr().err
    assert not (tmp_path / "fresh" / "logs" / f"{CURRICULUM.key}.log").exists()


@pytest.mark.slow
def test_a_toy_curriculum_trains_its_source_first_and_resumes_from_its_own_state(tmp_path):
    """A toy launch trains the curriculum's missing toy source first and starts the run from
    it; the next launch, given only the run's own state, resumes it without the source."""
    key = CURRICULUM.key
    first = _launch(tmp_path / "a", [key], "--save-state", minutes=10)
    table = _check_outputs(tmp_path / "a", first, [key])
    source_dir = tmp_path / "a" / "work" / "runs" / CURRICULUM.init_from
    assert f"--init-from {source_dir}" in table
    record = json.loads((tmp_path / "a" / "work" / "runs" / key / "init.json").read_text())
    assert record["run_dir"] == str(source_dir) and record["step"] == 3  # the toy's last step

    second = _launch(tmp_path / "b", [key], "--resume-from", str(tmp_path / "a" / "out"),
                     minutes=10)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resumed {key}" in second.stdout and "--init-from" not in second.stdout
    assert not (tmp_path / "b" / "work" / "runs" / CURRICULUM.init_from).exists()
    run_dir = tmp_path / "b" / "work" / "runs" / key
    resumes = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumes] == [3]
