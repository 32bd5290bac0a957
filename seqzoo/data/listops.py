"""ListOps (Nangia & Bowman 2018) as generated for Long Range Arena (Tay et al. 2021).

Follows ``lra_benchmarks/data/listops.py``: a tree node at depth < max_depth is an operator
with probability 0.25 (else a digit 0-9; at max_depth always a digit); an operator, one of
MIN, MAX, MED (median, rounded down) and SM (sum mod 10), takes 2..max_args uniformly many
children. Trees are kept when min_length < #tokens < max_length, de-duplicated, and split
in generation order into train / val / test (LRA: 96k / 2k / 2k, depth 10, 10 args,
500 < length < 2000). Tokens follow LRA's pipeline, which drops the parentheses and keeps
``]`` as a token: ids 0 pad, 1..10 digits 0..9, 11 ``[MIN``, 12 ``[MAX``, 13 ``[MED``,
14 ``[SM``, 15 ``]`` (vocab 16). Each split has inputs (n, max_length) int32 padded with 0,
targets (n,) int32 (the tree's value, 10 classes) and mask (n, max_length) bool.

Trees are drawn at random until enough distinct ones are found, so the generator first counts
the distinct trees that fit the lengths (:func:`distinct_expressions`) and refuses to ask for
more than half of them (collecting nearly all of them at random would take very long); as a
safety net, it also stops with an error when too few random trees fit the lengths or too
many draws bring too few new distinct trees.
"""

import functools
import math
from collections.abc import Callable

import numpy as np

from seqzoo.data.cache import (
    DEFAULT_CACHE_DIR,
    CacheDir,
    cached_arrays,
    compact_split,
    restore_split,
)
from seqzoo.data.dataset import Dataset, Split, pack_sequences
from seqzoo.data.parallel import chunk_rng, default_workers, map_chunks
from seqzoo.data.progress import Progress

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VOCAB = ("<pad>", *map(str, range(10)), *OPERATORS, END)
TOKEN_IDS = {token: i for i, token in enumerate(VOCAB)}
NUM_CLASSES = 10
OPERATOR_P = 0.25
SHORTEST_EXPRESSION = 4  # tokens of an operator with two digits, e.g. [MAX 2 9 ]
MAX_SHARE = 0.5  # the most of the distinct trees that fit the lengths the generator asks for
_FIRST_OP_ID = TOKEN_IDS[OPERATORS[0]]
_END_ID = TOKEN_IDS[END]
_CHUNK = 200  # accepted trees per work chunk
_BUFFER = 1 << 14
_MAX_DRAWS_PER_CHUNK = 1000 * _CHUNK  # safety net: fewer than 1 in 1000 random trees fit
_MAX_ACCEPTED_PER_EXAMPLE = 20  # safety net: the fitting trees drawn per example asked
_COUNT_CAP = 1e30  # tree counts saturate here (far above any dataset size)


def apply_operator(op: str, values: list[int]) -> int:
    """The value of operator ``op`` (e.g. ``"[MED"``) applied to digits ``values``."""
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[SM":
        return sum(values) % 10
    if op == "[MED":
        ordered, mid = sorted(values), len(values) // 2
        return ordered[mid] if len(values) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
    raise ValueError(f"unknown ListOps operator {op!r}; expected one of {OPERATORS}")


def tokenize(source: str) -> list[int]:
    """Token ids of a ListOps expression in LRA's TSV form, e.g. ``( ( [MAX 2 ) 9 ] )``."""
    try:
        return [TOKEN_IDS[t] for t in source.replace("(", " ").replace(")", " ").split()]
    except KeyError as err:
        raise ValueError(f"unknown ListOps token {err.args[0]!r} in {source[:80]!r}") from None


class _TooLong(Exception):
    pass


class _Uniforms:
    """Scalar uniforms from a numpy generator, drawn in blocks for speed."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.block, self.next_index = rng, [], 0

    def __call__(self) -> float:
        if self.next_index == len(self.block):
            self.block, self.next_index = self.rng.random(_BUFFER).tolist(), 0
        self.next_index += 1
        return self.block[self.next_index - 1]


def _grow(uniform: _Uniforms, depth: int, max_depth: int, max_args: int, max_length: int,
          out: list[int]) -> int:
    """Appends a random subtree's token ids to ``out`` and returns its value."""
    if len(out) >= max_length:
        raise _TooLong
    if depth >= max_depth or uniform() > OPERATOR_P:
        value = int(uniform() * 10)
        out.append(value + 1)
        return value
    op_index = int(uniform() * len(OPERATORS))
    out.append(_FIRST_OP_ID + op_index)
    num_args = 2 + int(uniform() * (max_args - 1))
    values = [_grow(uniform, depth + 1, max_depth, max_args, max_length, out)
              for _ in range(num_args)]
    out.append(_END_ID)
    return apply_operator(OPERATORS[op_index], values)


def _tree_counts(length: int, max_depth: int, max_args: int) -> np.ndarray:
    """(length,) float64: entry n is the number of distinct trees of n tokens the generator can
    draw (rooted at depth 1; operators at depths below ``max_depth``), saturating at
    ``_COUNT_CAP``. Trees and token sequences correspond one to one (``]`` closes each
    operator), so these are also the distinct examples."""
    digits = np.zeros(length)
    digits[1:2] = 10
    counts = digits  # trees rooted at depth max_depth: digits only
    for _ in range(max_depth - 1):  # trees rooted one level higher
        power, arguments = counts, np.zeros(length)
        for _ in range(2, max_args + 1):  # power: sequences of k subtrees, by total length
            power = np.minimum(np.convolve(power, counts)[:length], _COUNT_CAP)
            arguments += power
        operators = np.zeros(length)
        operators[2:] = len(OPERATORS) * arguments[:length - 2]  # operator token and ]
        counts = np.minimum(digits + operators, _COUNT_CAP)
    return counts


def distinct_expressions(min_length: int, max_length: int, max_depth: int = 10,
                         max_args: int = 10, enough: float = math.inf) -> int:
    """The number of distinct trees with ``min_length < tokens < max_length`` that the
    generator can draw at ``max_depth`` and ``max_args``; once that is known to be at least
    ``enough``, a number >= ``enough`` (counting stops early: trees longer than the shortest
    that fit are counted only as far as needed)."""
    length = min(max_length, min_length + 65)
    while True:
        found = _tree_counts(length, max_depth, max_args)[min_length + 1:].sum()
        if found >= enough or length == max_length:
            return int(min(found, _COUNT_CAP))
        length = min(max_length, 2 * length)


def _generate_chunk(chunk: int, seed: int, max_depth: int, max_args: int, min_length: int,
                    max_length: int) -> list[tuple[bytes, int]]:
    """``_CHUNK`` accepted trees as (uint8 token bytes, value), from ``chunk_rng(seed, chunk)``;
    a ValueError when fewer than 1 in 1000 random trees fit the lengths."""
    uniform = _Uniforms(chunk_rng(seed, chunk))
    accepted, draws = [], 0
    while len(accepted) < _CHUNK:
        if draws == _MAX_DRAWS_PER_CHUNK:
            raise ValueError(
                f"ListOps trees with {min_length} < length < {max_length} tokens are too rare "
                f"at max_depth={max_depth}, max_args={max_args}: {len(accepted)} of "
                f"{draws:,} random trees fit; widen the lengths"
            )
        draws += 1
        tokens: list[int] = []
        try:
            value = _grow(uniform, 1, max_depth, max_args, max_length, tokens)
        except _TooLong:
            continue
        if min_length < len(tokens) < max_length:
            accepted.append((bytes(tokens), value))
    return accepted


def generate_listops(
    num_train: int = 96_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    max_depth: int = 10,
    max_args: int = 10,
    min_length: int = 500,
    max_length: int = 2000,
    seed: int = 0,
    workers: int | None = None,
    cache_dir: CacheDir = DEFAULT_CACHE_DIR,
    progress: bool = True,
) -> Dataset:
    """Generates LRA ListOps splits ``train`` / ``val`` / ``test`` (see the module docstring).

    The distinct trees come in one stream: work runs in chunks of 200 accepted trees, chunk i
    seeded by ``[seed, i]``, over ``workers`` processes (default: all cores), and a tree seen
    before is skipped; train holds the stream's first ``num_train`` trees, val the next
    ``num_val``, test the next ``num_test``. The result depends only on the arguments that
    enter the cache file names, not on ``workers``. Each split is cached in its own file,
    keyed by its place in the stream (start, count) and the generation settings, with the
    stream's position after it; so changing ``num_test`` keeps train and val, and changing
    ``num_val`` keeps train. Lengths count tokens without parentheses, as LRA's generator
    does; inputs are padded to ``max_length``.

    Raises ValueError before generating when the counts ask for more than half of the
    distinct trees that fit the lengths (see the module docstring).
    """
    if not (1 <= max_depth and 2 <= max_args and 0 <= min_length < max_length - 1):
        raise ValueError(f"need max_depth >= 1, max_args >= 2 and min_length < max_length - 1;"
                         f" got {max_depth}, {max_args}, {min_length}, {max_length}")
    sizes = {"train": num_train, "val": num_val, "test": num_test}
    if min(sizes.values()) < 0:
        raise ValueError(f"num_train, num_val and num_test must be >= 0, got {num_train}, "
                         f"{num_val}, {num_test}")
    total = sum(sizes.values())
    distinct = distinct_expressions(min_length, max_length, max_depth, max_args,
                                    enough=total / MAX_SHARE)
    if total > MAX_SHARE * distinct:
        raise ValueError(
            f"num_train + num_val + num_test = {total:,} examples asked, but only {distinct:,} "
            f"distinct ListOps trees have {min_length} < length < {max_length} tokens at "
            f"max_depth={max_depth}, max_args={max_args}, and the generator asks for at most "
            f"half of them ({int(MAX_SHARE * distinct):,}); ask for fewer or raise max_length"
        )
    stream = _TreeStream(
        functools.partial(_generate_chunk, seed=seed, max_depth=max_depth, max_args=max_args,
                          min_length=min_length, max_length=max_length),
        default_workers() if workers is None else workers,
        total,
        f"{min_length} < length < {max_length} tokens",
    )
    settings = dict(depth=max_depth, args=max_args, minlen=min_length, maxlen=max_length,
                    seed=seed)
    splits: dict[str, Split] = {}
    cursor, start = np.zeros(2, np.int64), 0
    for name, size in sizes.items():
        build = functools.partial(stream.split, name, size, cursor, list(splits.values()),
                                  max_length, progress)
        params = dict(split=name, start=start, n=size, **settings)
        arrays = cached_arrays("listops", params, build, cache_dir if size else None)
        splits[name], cursor, start = restore_split(arrays), arrays["cursor"], start + size
    return Dataset("listops", splits, vocab_size=len(VOCAB), num_classes=NUM_CLASSES,
                   seq_len=max_length)


class _TreeStream:
    """The stream of distinct trees: the accepted trees of chunks 0, 1, ... in order, each tree
    seen before skipped. A place in the stream is a cursor ``(chunk, index)``: the next tree to
    look at is entry ``index`` of chunk ``chunk``'s accepted trees. ``examples`` (the number of
    trees asked in all) and ``fits`` (the lengths kept, in words) are for the safety net on
    too few distinct trees."""

    def __init__(self, generate: Callable[[int], list[tuple[bytes, int]]], workers: int,
                 examples: int, fits: str):
        self.generate, self.workers, self.examples, self.fits = generate, workers, examples, fits

    def split(self, name: str, size: int, cursor: np.ndarray, before: list[Split],
              max_length: int, progress: bool) -> dict[str, np.ndarray]:
        """The stored arrays of split ``name``: the ``size`` trees after ``cursor`` (``before``:
        the splits holding the stream's trees up to it), padded to ``max_length``, and the
        cursor after them as ``cursor``."""
        seen = {row[:length].astype(np.uint8).tobytes() for split in before if size
                for row, length in zip(split["inputs"], split["mask"].sum(axis=1), strict=True)}
        with Progress(size, f"ListOps {name}", enabled=progress and size > 0) as bar:
            trees, cursor = self.take(size, cursor, seen, bar.update)
        split = pack_sequences(list(trees), list(trees.values()), max_length)
        return {**compact_split(split), "cursor": cursor}

    def take(self, count: int, cursor: np.ndarray, seen: set[bytes],
             update: Callable[[], None]) -> tuple[dict[bytes, int], np.ndarray]:
        """The next ``count`` trees from ``cursor`` not in ``seen`` (token bytes -> value), and
        the cursor after them; ``update()`` is called once per tree."""
        found: dict[bytes, int] = {}
        chunk, index = (int(c) for c in cursor)
        while len(found) < count:
            if chunk * _CHUNK >= _MAX_ACCEPTED_PER_EXAMPLE * self.examples:
                raise ValueError(
                    f"only {len(seen) + len(found):,} distinct ListOps trees with {self.fits} "
                    f"among {chunk * _CHUNK:,} drawn, of the {self.examples:,} examples asked; "
                    f"ask for fewer or raise max_length"
                )
            chunks = range(chunk, chunk + -(-(count - len(found) + index) // _CHUNK))
            for accepted in map_chunks(self.generate, chunks, self.workers):
                while index < len(accepted) and len(found) < count:
                    tokens, value = accepted[index]
                    index += 1
                    if tokens not in seen and tokens not in found:
                        found[tokens] = value
                        update()
                if index == len(accepted):
                    chunk, index = chunk + 1, 0
                if len(found) == count:
                    break
        return found, np.array([chunk, index])
