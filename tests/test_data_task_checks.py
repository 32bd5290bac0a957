"""Task configs a generator cannot serve fail before any data is generated, fast, naming the
config keys: every split's length (task.seq_len, task.test_seq_len) against the task's counts
and vocabulary, ListOps' room for enough distinct expressions (no hang), and the generators'
own safety nets."""

from __future__ import annotations

import contextlib
import signal
import time

import numpy as np
import pytest

from seqzoo import tasks
from seqzoo.cli import main
from seqzoo.config import TaskConfig
from seqzoo.data import listops, pathfinder
from seqzoo.data.listops import distinct_expressions, generate_listops
from seqzoo.data.synthetic import associative_recall, induction_heads, mqar, selective_copying

SMALL = dict(num_train=8, num_val=0, num_test=4)


@pytest.fixture(autouse=True)
def no_cache(monkeypatch):
    monkeypatch.setattr(tasks, "CACHE_DIR", None)


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---- ListOps ------------------------------------------------------------------------------


def test_listops_seq_len_3_fails_within_a_second_naming_the_minimum():
    started = time.perf_counter()
    with deadline(10), pytest.raises(ValueError) as err:
        tasks.build_task(TaskConfig(name="listops", seq_len=3))
    assert time.perf_counter() - started < 2
    message = str(err.value)
    assert message.startswith("task.seq_len=3 fits no ListOps expression")
    # 41,000 examples by default: 44,400 expressions fit below 7 tokens, 476,400 below 8
    assert "41,000 examples (task.num_train + task.num_val + task.num_test" in message
    assert message.endswith("use task.seq_len >= 8")


def test_listops_seq_len_3_stops_train_before_any_folder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "smoke", "task.name=listops", "task.seq_len=3", "--run-dir", str(run_dir)]
    with deadline(60):
        assert main(argv) == 2
    assert "task.seq_len=3 fits no ListOps expression" in capsys.readouterr().err
    assert not run_dir.exists()


@pytest.mark.parametrize("seq_len", [1, 2, 4])
def test_listops_without_room_for_an_operator_is_refused_even_for_few_examples(seq_len):
    # bare digits fit at 2 and 3 tokens, nothing at all at 4 (the generator looped forever)
    with deadline(10), pytest.raises(ValueError, match=rf"task.seq_len={seq_len} fits no .* "
                                                       r"use task.seq_len >= 5$"):
        tasks.build_task(TaskConfig(name="listops", seq_len=seq_len, **SMALL))


def test_listops_asking_for_more_than_half_the_distinct_expressions_names_the_counts():
    # below 6 tokens fit 400 expressions of 4 tokens and 4,000 of 5: room for 2,200 examples
    fits = TaskConfig(name="listops", seq_len=6, num_train=2100, num_val=50, num_test=50)
    tasks.check_task(fits)
    too_many = TaskConfig(name="listops", seq_len=6, num_train=2101, num_val=50, num_test=50)
    with pytest.raises(ValueError) as err:
        tasks.check_task(too_many)
    message = str(err.value)
    assert message.startswith("task.seq_len=6 leaves room for 4,400 distinct ListOps")
    assert "2,201 examples (task.num_train + task.num_val + task.num_test = 2101 + 50 + 50)" in (
        message
    )
    assert message.endswith("use task.seq_len >= 7, or ask for at most 2,200 examples")
    tasks.check_task(TaskConfig(name="listops", seq_len=7, num_train=2101, num_val=50,
                                num_test=50))


def test_listops_at_the_smallest_suggested_length_builds():
    cfg = TaskConfig(name="listops", seq_len=5, num_train=150, num_val=20, num_test=30)
    data = tasks.build_task(cfg)  # 200 of the 400 expressions of 4 tokens
    rows = [row.tobytes() for split in data.splits.values() for row in split["inputs"]]
    assert len(set(rows)) == 200 and data.seq_len == 5


def _enumerate_trees(depth: int, max_depth: int, max_args: int, limit: int) -> list[tuple]:
    """Every tree the generator can draw, rooted at ``depth``, of fewer than ``limit`` tokens."""
    trees = [(digit,) for digit in range(1, 11)]
    if depth < max_depth:
        children: dict[int, list[tuple]] = {}  # by length
        for child in _enumerate_trees(depth + 1, max_depth, max_args, limit):
            children.setdefault(len(child), []).append(child)

        def sequences(k, budget):  # k children of at most budget tokens in all
            if k == 0:
                yield ()
                return
            for length, group in children.items():
                if length <= budget - (k - 1):
                    for rest in sequences(k - 1, budget - length):
                        yield from (child + rest for child in group)

        for k in range(2, max_args + 1):
            for body in sequences(k, limit - 3):
                trees += [(op, *body, 15) for op in range(11, 15)]
    return trees


@pytest.mark.parametrize("max_depth, max_args, limit", [(1, 3, 6), (2, 2, 12), (2, 3, 8),
                                                         (3, 2, 10), (3, 3, 8)])
def test_distinct_expressions_counts_every_tree_the_generator_can_draw(max_depth, max_args,
                                                                        limit):
    trees = _enumerate_trees(1, max_depth, max_args, limit)
    for low in range(limit - 1):
        expected = sum(low < len(tree) for tree in trees)
        assert distinct_expressions(low, limit, max_depth, max_args) == expected


def test_distinct_expressions_stops_counting_once_there_are_enough():
    assert distinct_expressions(1, 7) == 44_400
    assert distinct_expressions(500, 2000, enough=200_000) >= 200_000
    started = time.perf_counter()
    distinct_expressions(500, 100_000, enough=200_000)
    assert time.perf_counter() - started < 1


def test_generate_listops_refuses_too_many_examples_before_generating(monkeypatch):
    monkeypatch.setattr(listops, "map_chunks", pytest.fail)  # nothing may be generated
    with pytest.raises(ValueError, match=r"num_train \+ num_val \+ num_test = 210 examples asked,"
                                         r" but only 400 distinct .* 1 < length < 5"):
        generate_listops(200, 5, 5, min_length=1, max_length=5, cache_dir=None)
    with pytest.raises(ValueError, match="must be >= 0"):
        generate_listops(-1, 0, 0, min_length=1, max_length=5, cache_dir=None)


def test_generate_listops_stops_when_fitting_trees_are_too_rare(monkeypatch):
    # depth 3 allows 122 tokens, but a random tree of more than 60 is very rare
    monkeypatch.setattr(listops, "_MAX_DRAWS_PER_CHUNK", 5000)
    with deadline(20), pytest.raises(ValueError, match=r"60 < length < 130 tokens are too rare "
                                                       r"at max_depth=3.*of 5,000 random trees"):
        generate_listops(10, 0, 0, max_depth=3, min_length=60, max_length=130, workers=1,
                         cache_dir=None, progress=False)


def test_generate_listops_stops_when_draws_bring_too_few_new_trees(monkeypatch):
    # the safety net behind the count: ask for all 400 trees of 4 tokens, allow 400 draws
    monkeypatch.setattr(listops, "MAX_SHARE", 1.0)
    monkeypatch.setattr(listops, "_MAX_ACCEPTED_PER_EXAMPLE", 1)
    with deadline(20), pytest.raises(ValueError, match=r"only \d+ distinct ListOps trees with "
                                                       r"1 < length < 5 tokens among 400 drawn"):
        generate_listops(400, 0, 0, min_length=1, max_length=5, workers=1, cache_dir=None,
                         progress=False)


# ---- synthetic tasks ----------------------------------------------------------------------

BAD = [  # task, config values, the start of the error
    ("mqar", dict(seq_len=63), "task.seq_len=63 must be even"),
    ("mqar", dict(test_seq_len=33), "task.test_seq_len=33 must be even"),
    ("mqar", dict(num_kv_pairs=17),
     "task.seq_len=64 is too short for task.num_kv_pairs=17: MQAR needs task.seq_len >= 68 "
     "(the key-value pairs, then a query region as long as one copy)"),
    ("mqar", dict(test_seq_len=32, num_kv_pairs=12),
     "task.test_seq_len=32 is too short for task.num_kv_pairs=12"),
    ("mqar", dict(vocab_size=64), "task.vocab_size=64 must exceed task.seq_len=64"),
    ("mqar", dict(test_seq_len=256), "task.vocab_size=128 must exceed task.test_seq_len=256"),
    ("selective_copying", dict(seq_len=20),
     "task.seq_len - 2 * task.num_tokens = -12 must be >= 0"),
    ("selective_copying", dict(seq_len=40, test_seq_len=30),
     "task.test_seq_len - 2 * task.num_tokens = -2 must be >= 0"),
    ("selective_copying", dict(seq_len=40, vocab_size=2), "task.vocab_size=2 must be >= 3"),
    ("induction_heads", dict(seq_len=3), "task.seq_len=3 must be >= 4"),
    ("induction_heads", dict(test_seq_len=2), "task.test_seq_len=2 must be >= 4"),
    ("induction_heads", dict(vocab_size=2), "task.vocab_size=2 must be >= 3"),
    ("associative_recall", dict(seq_len=31), "task.seq_len=31 must be even and >= 4"),
    ("associative_recall", dict(seq_len=2), "task.seq_len=2 must be even and >= 4"),
    ("associative_recall", dict(test_seq_len=65), "task.test_seq_len=65 must be even and >= 4"),
    ("associative_recall", dict(vocab_size=4), "task.vocab_size=4 must be >= 5"),
]


@pytest.mark.parametrize("task, values, message", BAD)
def test_synthetic_constraints_name_the_keys_before_any_split_is_generated(
    task, values, message, monkeypatch
):
    generated = []  # the task's generator (named as the task) records each split it makes
    real = getattr(tasks, task)
    monkeypatch.setattr(tasks, task, lambda *a, **k: generated.append(a) or real(*a, **k))
    with pytest.raises(ValueError) as err:
        tasks.build_task(TaskConfig(name=task, **{**SMALL, **values}))
    assert str(err.value).startswith(message)
    assert generated == []  # not even the train split


def test_generators_called_directly_name_their_own_arguments():
    with pytest.raises(ValueError, match=r"^seq_len=63 must be even"):
        mqar(1, 63, 4, cache_dir=None)
    with pytest.raises(ValueError, match=r"^num_blanks=-1 must be >= 0"):
        selective_copying(1, num_blanks=-1, cache_dir=None)
    with pytest.raises(ValueError, match=r"^seq_len=3 must be >= 4"):
        induction_heads(1, seq_len=3, cache_dir=None)
    with pytest.raises(ValueError, match=r"^vocab_size=4 must be >= 5"):
        associative_recall(1, vocab_size=4, cache_dir=None)
    with pytest.raises(ValueError, match=r"^num_examples must be >= 0"):
        mqar(-1, 64, 4, cache_dir=None)
    with pytest.raises(ValueError, match=r"^power_a must be > 0"):
        mqar(1, 64, 4, power_a=0.0, cache_dir=None)


# ---- other tasks --------------------------------------------------------------------------


def test_retrieval_needs_an_even_seq_len_before_reading_files(tmp_path):
    # the empty directory would be a FileNotFoundError once files are read
    with pytest.raises(ValueError, match=r"^task.seq_len=33 must be even: lra_retrieval"):
        tasks.build_task(TaskConfig(name="lra_retrieval", seq_len=33, data_dir=str(tmp_path)))


@pytest.mark.parametrize("values, message", [
    (dict(name="pathfinder", resolution=48), "task.resolution must be one of 32, 64, 128"),
    (dict(name="mqar", num_train=0), "task.num_train must be >= 1"),
])
def test_build_task_checks_each_value_domain(values, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        tasks.build_task(TaskConfig(**values))


def test_pathfinder_names_resolution_and_length_when_snakes_do_not_fit(monkeypatch):
    monkeypatch.setattr(pathfinder, "_MAX_TARGET_TRIALS", 0)
    with pytest.raises(RuntimeError, match="two target snakes of 14 paddles in a 32x32 image"):
        pathfinder.render_scene(np.random.default_rng(0), pathfinder.LRA_CONFIGS[32], 14, 1)
