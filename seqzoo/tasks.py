"""Tasks the trainer knows by name: each builds a ``Dataset`` with ``train``, ``val`` and ``test``
splits from a ``TaskConfig``.

Splits are as in ``seqzoo.data.dataset``: ``targets`` of shape (n,) are one label per sequence,
(n, length) per-position labels with -100 where there is none; classification splits carry a
mask (n, length), False on padding, for the classify head's masked-mean pooling. The synthetic
tasks draw the three splits from the task seed plus fixed offsets, so they never share a row
generator, and build the test split at ``task.test_seq_len`` when it is set (to measure length
extrapolation; the other tasks refuse it); ListOps and Pathfinder are generated (and cached in
``CACHE_DIR``) by their LRA generators; the other tasks read released files from
``task.data_dir`` (each reader names the file and line or record of bad data).

Before any data is read or generated, :func:`check_task` checks the config: every value in
its domain, options that belong to other tasks, and the task's constraints between values
(a synthetic task's lengths against its counts and vocabulary, for ``task.seq_len`` and
``task.test_seq_len`` alike; ListOps' room for enough distinct expressions), each error naming
the config keys. Every built dataset is then checked before any compute: labels in the task's
class range, inputs in its vocabulary (pixels in 0..255), no empty split or all-padding row.

Retrieval (``lra_retrieval``) is LRA's two-document matching task; here both documents sit in
one row (document 1 in the first half, document 2 in the second) and the model classifies the
concatenated sequence, not LRA's two-tower encoder with a combined representation.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

from seqzoo.config import TaskConfig, check_values
from seqzoo.data import Dataset
from seqzoo.data.cache import DEFAULT_CACHE_DIR
from seqzoo.data.checks import Arg, require
from seqzoo.data.listops import (
    MAX_SHARE,
    SHORTEST_EXPRESSION,
    distinct_expressions,
    generate_listops,
)
from seqzoo.data.lra_files import (
    load_lra_cifar10,
    load_lra_imdb,
    load_lra_listops,
    load_lra_pathfinder,
    load_lra_retrieval,
)
from seqzoo.data.mnist import FASHION_MNIST_DIR, load_mnist
from seqzoo.data.pathfinder import generate_pathfinder
from seqzoo.data.synthetic import (
    associative_recall,
    check_associative_recall,
    check_induction_heads,
    check_mqar,
    check_selective_copying,
    induction_heads,
    mqar,
    selective_copying,
)
from seqzoo.data.validate import check_dataset

SPLIT_SEED_OFFSETS = {"train": 0, "val": 2_000_003, "test": 1_000_003}
CACHE_DIR = DEFAULT_CACHE_DIR  # where generated ListOps / Pathfinder splits are cached
LISTOPS_MIN_LENGTH = 500  # LRA's; shorter for seq_len < 2000 (see the listops task)


@dataclasses.dataclass(frozen=True)
class Task:
    """A named task: ``build(cfg)`` returns its ``Dataset``; ``data_files`` describes what a
    file-based task expects in ``task.data_dir`` (empty for generated tasks); ``check(cfg,
    length)`` raises ValueError naming the config keys when the task cannot be built at
    ``length`` (``task.seq_len``, and ``task.test_seq_len`` where set), without any data."""

    build: Callable[[TaskConfig], Dataset]
    description: str
    data_files: str = ""
    default_dir: str = ""  # used when task.data_dir is not set
    test_lengths: bool = False  # whether task.test_seq_len applies
    images: bool = False  # whether task.normalize applies (pixel inputs)
    check: Callable[[TaskConfig, Arg], None] | None = None


def data_dir(cfg: TaskConfig) -> str:
    """The directory task ``cfg.name`` reads: ``cfg.data_dir``, else the task's default."""
    return cfg.data_dir or get_task(cfg.name).default_dir


def sized(build: Callable[..., Dataset]) -> Callable[[TaskConfig], Dataset]:
    """A builder from ``build(cfg, num_train=, num_val=, num_test=)`` (a generator of all three
    splits), without the splits asked to be empty."""

    def wrapped(cfg: TaskConfig) -> Dataset:
        sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
        data = build(cfg, **{f"num_{k}": v for k, v in sizes.items()})
        return dataclasses.replace(data, splits={k: v for k, v in data.splits.items() if sizes[k]})

    return wrapped


def from_files(load: Callable[..., Dataset], **options: Callable[[TaskConfig], object]) -> Callable:
    """A builder calling ``load(data_dir, **{key: option(cfg)})``."""
    return lambda cfg: load(data_dir(cfg), **{k: f(cfg) for k, f in options.items()})


def _arg(cfg: TaskConfig, field: str) -> Arg:
    """Config value ``task.<field>`` as an :class:`Arg` named by its key."""
    return Arg(f"task.{field}", getattr(cfg, field))


def _lengths(cfg: TaskConfig) -> list[Arg]:
    """The sequence lengths a task is built at: ``task.seq_len``, and ``task.test_seq_len`` (the
    test split's) when set."""
    return [_arg(cfg, "seq_len")] + ([_arg(cfg, "test_seq_len")] if cfg.test_seq_len else [])


def listops_lengths(seq_len: int) -> dict[str, int]:
    """``min_length`` and ``max_length`` of the listops task's expressions: longer than
    min(500, seq_len // 4) tokens and shorter than ``seq_len``."""
    return {"min_length": min(LISTOPS_MIN_LENGTH, seq_len // 4), "max_length": seq_len}


def _listops_expressions(seq_len: int, examples: int) -> int:
    """The number of distinct expressions with an operator that the listops task can draw at
    ``seq_len``, or a number >= ``examples / MAX_SHARE`` when there are enough for them."""
    if seq_len <= SHORTEST_EXPRESSION:
        return 0  # at most bare digits fit
    return distinct_expressions(**listops_lengths(seq_len), enough=examples / MAX_SHARE)


def _check_listops(cfg: TaskConfig, length: Arg) -> None:
    """Fail unless ``task.seq_len`` leaves room for task.num_train + task.num_val +
    task.num_test examples: the generator takes at most half of the distinct expressions that
    fit (see ``generate_listops``), and each needs an operator."""
    counts = [_arg(cfg, f"num_{split}") for split in ("train", "val", "test")]
    examples = sum(c.value for c in counts)
    found = _listops_expressions(length.value, examples)
    if MAX_SHARE * found >= examples:
        return
    shortest = next(n for n in itertools.count(SHORTEST_EXPRESSION + 1)
                    if MAX_SHARE * _listops_expressions(n, examples) >= examples)
    asked = (f"{examples:,} examples ({' + '.join(c.name for c in counts)} = "
             f"{' + '.join(str(c.value) for c in counts)})")
    if found == 0:
        problem = (f"fits no ListOps expression (the task keeps expressions shorter than "
                   f"{length.name}, and the shortest, like [MAX 2 9 ], has "
                   f"{SHORTEST_EXPRESSION} tokens)")
    else:
        shortest_kept = listops_lengths(length.value)["min_length"] + 1
        problem = (f"leaves room for {found:,} distinct ListOps expressions (of "
                   f"min({LISTOPS_MIN_LENGTH}, {length.name} // 4) + 1 = {shortest_kept} to "
                   f"{length.name} - 1 = {length.value - 1} tokens), and the generator, drawing "
                   f"them at random, takes at most half of them: {int(MAX_SHARE * found):,}")
    fewer = f", or ask for at most {int(MAX_SHARE * found):,} examples" if found else ""
    raise ValueError(f"{length} {problem}; for {asked} use {length.name} >= {shortest}{fewer}")


def _check_retrieval(cfg: TaskConfig, length: Arg) -> None:
    """Fail unless ``task.seq_len`` splits into two documents of equal length."""
    require(length.value % 2 == 0,
            f"{length} must be even: lra_retrieval puts two documents of {length.name} / 2 "
            f"tokens in each row")


def _pathfinder_options(cfg: TaskConfig) -> dict:
    return dict(
        resolution=cfg.resolution,
        difficulty=cfg.difficulty,
        seed=cfg.seed,
        normalize=cfg.normalize,
        cache_dir=CACHE_DIR,
    )


def _mnist(name: str, default_dir: str = "") -> Task:
    return Task(
        lambda c: load_mnist(
            data_dir(c), permuted=c.permuted, permutation_seed=c.seed, normalize=c.normalize,
            name=name,
        ),
        f"sequential {name} (784 pixel tokens, 10 classes); permuted, normalize, data_dir",
        "the IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (each optionally .gz)",
        default_dir,
        images=True,
    )


def generated(generate: Callable[[TaskConfig, int, int], Dataset]) -> Callable:
    """A task builder from ``generate(cfg, num_examples, seed)`` (a one-split generator); the
    test split is generated at ``cfg.test_seq_len`` when that is set."""

    def build(cfg: TaskConfig) -> Dataset:
        sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
        configs = {split: cfg for split in sizes}
        configs["test"] = dataclasses.replace(cfg, seq_len=cfg.test_seq_len or cfg.seq_len)
        parts = {
            split: generate(configs[split], n, cfg.seed + SPLIT_SEED_OFFSETS[split])
            for split, n in sizes.items()
            if n > 0
        }
        first = parts["train"]
        return dataclasses.replace(first, splits={s: d["all"] for s, d in parts.items()})

    return build


TASKS: dict[str, Task] = {
    "mqar": Task(
        generated(
            lambda c, n, seed: mqar(
                n, c.seq_len, c.num_kv_pairs, c.vocab_size, seed=seed,
                random_non_queries=c.random_non_queries, cache_dir=None,
            )
        ),
        "multi-query associative recall (Zoology); seq_len, num_kv_pairs, vocab_size, "
        "random_non_queries",
        test_lengths=True,
        check=lambda c, length: check_mqar(
            length, _arg(c, "num_kv_pairs"), _arg(c, "vocab_size")
        ),
    ),
    "induction_heads": Task(
        generated(
            lambda c, n, seed: induction_heads(n, c.seq_len, c.vocab_size, seed, cache_dir=None)
        ),
        "induction heads (Mamba 4.1.2): recall the token after the trigger; seq_len, vocab_size",
        test_lengths=True,
        check=lambda c, length: check_induction_heads(length, _arg(c, "vocab_size")),
    ),
    "selective_copying": Task(
        generated(
            lambda c, n, seed: selective_copying(
                n, c.seq_len - 2 * c.num_tokens, c.num_tokens, c.vocab_size, seed, cache_dir=None
            )
        ),
        "selective copying (Mamba 4.1.1): copy the scattered tokens in order; seq_len = blanks "
        "+ 2 num_tokens (Mamba: 4096 + 32), num_tokens, vocab_size (Mamba: 16)",
        test_lengths=True,
        check=lambda c, length: check_selective_copying(
            Arg(f"{length.name} - 2 * task.num_tokens", length.value - 2 * c.num_tokens),
            _arg(c, "num_tokens"),
            _arg(c, "vocab_size"),
        ),
    ),
    "associative_recall": Task(
        generated(
            lambda c, n, seed: associative_recall(n, c.seq_len, c.vocab_size, seed, cache_dir=None)
        ),
        "single-query associative recall (H3); seq_len, vocab_size",
        test_lengths=True,
        check=lambda c, length: check_associative_recall(length, _arg(c, "vocab_size")),
    ),
    "listops": Task(
        sized(
            lambda c, **sizes: generate_listops(
                **sizes,
                **listops_lengths(c.seq_len),
                seed=c.seed,
                cache_dir=CACHE_DIR,
            )
        ),
        "LRA ListOps, generated (10 classes, vocab 16); seq_len = max length (LRA: 2000), "
        "min length min(500, seq_len // 4)",
        check=_check_listops,
    ),
    "pathfinder": Task(
        sized(lambda c, **sizes: generate_pathfinder(**sizes, **_pathfinder_options(c))),
        "LRA Pathfinder, generated (pixel tokens, 2 classes); resolution, difficulty, normalize",
        images=True,
    ),
    "smnist": _mnist("mnist"),
    "sfashion_mnist": _mnist("fashion_mnist", FASHION_MNIST_DIR),
    "lra_listops": Task(
        from_files(load_lra_listops, max_length=lambda c: c.seq_len),
        "LRA ListOps release files (10 classes); seq_len (LRA: 2000), data_dir",
        "basic_train.tsv, basic_val.tsv, basic_test.tsv (LRA's listops-1000)",
    ),
    "lra_retrieval": Task(
        from_files(load_lra_retrieval, max_length=lambda c: c.seq_len // 2),
        "LRA Retrieval (AAN), bytes, both documents in one row of seq_len (LRA: 2 x 4000) "
        "classified as one sequence; data_dir",
        "new_aan_pairs.train.tsv, new_aan_pairs.eval.tsv, new_aan_pairs.test.tsv",
        check=_check_retrieval,
    ),
    "lra_imdb": Task(
        from_files(load_lra_imdb, max_length=lambda c: c.seq_len),
        "LRA Text: byte-level IMDB (2 classes); seq_len (LRA: 4096), data_dir",
        "aclImdb/{train,test}/{pos,neg}/*.txt",
    ),
    "lra_cifar10": Task(
        from_files(load_lra_cifar10, normalize=lambda c: c.normalize),
        "LRA Image: grayscale CIFAR-10, 1024 pixel tokens (10 classes); normalize, data_dir",
        "cifar-10-batches-bin/data_batch_1.bin..data_batch_5.bin and test_batch.bin (the binary "
        "version, cifar-10-binary.tar.gz; the pickled python version is refused)",
        images=True,
    ),
    "lra_pathfinder": Task(
        lambda c: load_lra_pathfinder(data_dir(c), **_pathfinder_options(c)),
        "LRA Pathfinder release images; resolution, difficulty, data_dir",
        "pathfinder{resolution}/{difficulty}/metadata/*.npy and .../imgs/*/sample_*.png",
        images=True,
    ),
}


def get_task(name: str) -> Task:
    """The task ``name``; an unknown name lists the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def check_data_dir(cfg: TaskConfig) -> None:
    """For a file-based task, fail unless ``cfg.data_dir`` is a directory (no data is read)."""
    task = get_task(cfg.name)
    directory = data_dir(cfg)
    if task.data_files and not (directory and Path(directory).expanduser().is_dir()):
        where = repr(directory) if directory else "(not set)"
        raise FileNotFoundError(
            f"task {cfg.name!r} reads {task.data_files} from task.data_dir, which is {where}: "
            f"not a directory. Put the files in a directory and pass task.data_dir=PATH."
        )


def _tasks_with(flag: str) -> str:
    """The names of the tasks whose ``Task.<flag>`` is set, comma-separated."""
    return ", ".join(name for name, t in sorted(TASKS.items()) if getattr(t, flag))


def check_task(cfg: TaskConfig) -> None:
    """Everything about task ``cfg`` that can be checked without reading or generating data:
    every value in its domain, the data directory of a file-based task, no option of another
    task set, and the task's own constraints at each length it is built at (``Task.check``).
    Errors are ValueErrors (FileNotFoundError for the directory) naming the config keys."""
    check_values(cfg, "task.")
    check_data_dir(cfg)
    task = get_task(cfg.name)
    if cfg.test_seq_len and not task.test_lengths:
        raise ValueError(
            f"task.test_seq_len is for the synthetic tasks ({_tasks_with('test_lengths')}), "
            f"not {cfg.name!r}"
        )
    if not cfg.random_non_queries and cfg.name != "mqar":
        raise ValueError(f"task.random_non_queries is MQAR's option, not {cfg.name!r}'s")
    if cfg.normalize and not task.images:
        raise ValueError(
            f"task.normalize is for the image tasks ({_tasks_with('images')}), not {cfg.name!r}"
        )
    if task.check:
        for length in _lengths(cfg):
            task.check(cfg, length)


def build_task(cfg: TaskConfig) -> Dataset:
    """The ``Dataset`` of task ``cfg.name`` (splits ``train``, ``val`` if it has one, ``test``):
    the config is checked first (:func:`check_task`, before any data is read or generated),
    the data after (:func:`check_dataset`: labels, input range, no empty split or row)."""
    check_task(cfg)
    return check_dataset(get_task(cfg.name).build(cfg), cfg.name)
