"""Synthetic recall / copying tasks, as sequence labelling (targets (n, l), -100 = no label).

Every generator draws from ``np.random.default_rng(seed)``, returns a :class:`Dataset` with
one split ``"all"`` (build train and test sets with different seeds), and caches the arrays
under ``cache_dir`` (``None`` disables caching). Each has a ``check_*`` function for its
constraints between arguments (lengths, counts, vocabulary), which it runs before generating
anything; tasks run the same checks on their config, naming the config keys (see
:mod:`seqzoo.data.checks`). Labels follow the next-token convention of
the official generators: the label at position t is what the model must output after
reading token t.

* :func:`mqar` - multi-query associative recall, Zoology (Arora et al. 2023),
  ``zoology/data/multiquery_ar.py``.
* :func:`selective_copying` - Mamba (Gu & Dao 2023) section 4.1.1, the ``variable=True``
  copying task of ``state-spaces/s4`` ``src/dataloaders/datasets/copying.py``.
* :func:`induction_heads` - Mamba section 4.1.2, H3 / safari ``induction_head`` generator
  (``HazyResearch/safari`` ``src/dataloaders/synthetics.py``).
* :func:`associative_recall` - H3 (Fu et al. 2023), safari ``assoc_recall`` generator.
"""

import numpy as np

from seqzoo.data.cache import DEFAULT_CACHE_DIR, CacheDir, cached_splits
from seqzoo.data.checks import Arg, named, require
from seqzoo.data.dataset import IGNORE_INDEX, Dataset, make_split
from seqzoo.data.sampling import distinct_choice, weighted_distinct_choice


def _single_split(name, params, build, cache_dir, vocab_size, seq_len) -> Dataset:
    """The dataset of split ``"all"`` that ``build()`` returns as (inputs, targets), cached
    under ``name`` and ``params`` (whose ``n`` is the number of examples)."""
    require(params["n"] >= 0, f"num_examples must be >= 0, got {params['n']}")
    splits = cached_splits(name, params, lambda: {"all": make_split(*build())}, cache_dir)
    return Dataset(name, splits, vocab_size=vocab_size, num_classes=vocab_size, seq_len=seq_len)


REPEAT_SCOPES = ("context", "prompt")  # what JRT-Prompt repeats: the pairs, or pairs and queries


def check_mqar(seq_len: Arg, num_kv_pairs: Arg, vocab_size: Arg,
               context_repeats: Arg | None = None, num_queries: Arg | None = None,
               repeat_scope: Arg | None = None) -> None:
    """Raise ``ValueError`` naming the arguments unless :func:`mqar` can lay out its rows: an
    even length, 0 (every key) to ``num_kv_pairs`` queries, a known ``repeat_scope``, room for
    the key-value pairs and a query region of at least two slots a query, and a vocabulary
    larger than the length (as Zoology's generator asserts). With ``repeat_scope="prompt"`` the
    length is ``context_repeats`` copies of an even prompt, and each copy must fit the pairs, the
    query region and the vocabulary bound."""
    n = num_kv_pairs.value
    repeats = 1 if context_repeats is None else context_repeats.value
    asked = 0 if num_queries is None else num_queries.value
    scope = "context" if repeat_scope is None else repeat_scope.value
    require(seq_len.value % 2 == 0,
            f"{seq_len} must be even: MQAR lays out keys and values, queries and the slots "
            f"after them, in pairs")
    require(n >= 1, f"{num_kv_pairs} must be >= 1")
    require(repeats >= 1, f"{context_repeats} must be >= 1")
    require(0 <= asked <= n,
            f"{num_queries} must be between 1 and {num_kv_pairs} (the keys queried in a row), "
            f"or 0: every key")
    require(scope in REPEAT_SCOPES,
            f"{repeat_scope} must be one of {', '.join(REPEAT_SCOPES)}")
    m = asked or n
    length, copy = seq_len, ""
    if scope == "prompt" and repeats > 1:
        require(seq_len.value % (2 * repeats) == 0,
                f"{seq_len} must be {context_repeats} times an even length: with "
                f"{repeat_scope} the whole prompt (pairs and queries) is written "
                f"{context_repeats.name} times")
        length = Arg(f"{seq_len.name} / {context_repeats.name}", seq_len.value // repeats)
        copy = " in each copy of the prompt"
    context = repeats if scope == "context" else 1
    need = 2 * context * n + 2 * m
    times = "" if context == 1 else f" {context_repeats.name} times"
    region = "as long as one copy" if m == n else f"of at least 2 x {num_queries} slots"
    require(need <= length.value,
            f"{length} is too short for {num_kv_pairs}: MQAR needs {length.name} >= {need} "
            f"(the key-value pairs{times}, then a query region {region}){copy}")
    require(vocab_size.value > length.value,
            f"{vocab_size} must exceed {length}, as Zoology's MQAR generator requires")


def mqar(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int = 8192,
    power_a: float = 0.01,
    seed: int = 0,
    random_non_queries: bool = True,
    cache_dir: CacheDir = DEFAULT_CACHE_DIR,
    context_repeats: int = 1,
    num_queries: int = 0,
    repeat_scope: str = "context",
) -> Dataset:
    """Multi-query associative recall (MQAR), as Zoology's ``multiquery_ar``.

    Each row of ``inputs`` (num_examples, seq_len) starts with ``num_kv_pairs`` pairs
    ``k_i v_i`` (distinct keys from [1, V/2), distinct values from [V/2, V)). The rest is a
    query region of ``seq_len - 2 * num_kv_pairs`` slots; each key is queried once, at even
    offset ``2 * g_i`` in that region, with distinct gaps g_i drawn from
    p(g) ~ a * (g + 1)^(a - 1), g in [0, (seq_len - 2 * num_kv_pairs) / 2). ``targets`` holds
    v_i at the position of the query of k_i and -100 elsewhere. Other slots are 0, or uniform
    random tokens from [0, V) when ``random_non_queries`` (so token 0 occurs; the mask is all
    True). ``vocab_size = num_classes = V``.

    ``num_queries = m`` in [1, n) queries only m of the n keys, a uniformly random subset (in
    random order, at m gaps drawn as above; the query region needs >= 2m slots); 0 (the
    default) or n queries every key, Zoology's MQAR. This is the paper's general associative
    recall, GAR (Arora et al. 2024, "Just read twice", definition G.24): n pairs, then m
    queries, where a recurrent model reading once needs state for all n pairs.

    ``context_repeats = r > 1`` is JRT-Prompt (Arora et al. 2024, "Just read twice") with
    ``seq_len`` counting every copy; ``repeat_scope`` says what is repeated. Writing
    C = k_1 v_1 ... k_n v_n (2n tokens) and Q for the query region (L_q slots):

    * ``"context"`` (the default): ``x = C^r Q``, length 2rn + L_q: the pairs read r times,
      then the queries once (Zoology's ``multiquery_ar(num_passes=r)``). The model learns
      nothing on the second read that it could not on the first: the queries still come last.
      With the same seed and query region (raise ``seq_len`` by ``2 (r - 1) n``) the rows ask
      the same questions as with ``r = 1``.
    * ``"prompt"``: ``x = (C Q)^r``, length r (2n + L_q): the whole plain row, queries
      included, written r times, x[t] = u[t mod (seq_len / r)] for the plain row u of length
      seq_len / r (the paper's JR-p prompt, definition G.28, A(C, Q, C, Q) in section 3.2).
      Only the last copy is labelled: its targets are the plain row's, every earlier position
      is -100, so the scored questions are exactly those of the plain row drawn with the same
      seed at ``seq_len / r``. On the second read of C the model has seen which keys are
      queried, so it need store only those m pairs: state Omega(min(n, m) / r) instead of
      Omega(n) (the paper's proposition 3.1 / G.29). This is the paper's layout; with m = n
      (every key queried) it predicts no gain.
    """
    check_mqar(**named(seq_len=seq_len, num_kv_pairs=num_kv_pairs, vocab_size=vocab_size,
                       context_repeats=context_repeats, num_queries=num_queries,
                       repeat_scope=repeat_scope))
    require(power_a > 0, f"power_a must be > 0, got {power_a}")
    copies = context_repeats if repeat_scope == "prompt" else 1  # copies of the whole row
    length = seq_len // copies  # one copy of the row
    asked = num_queries or num_kv_pairs

    def build():
        rng = np.random.default_rng(seed)
        n, half, pairs = num_examples, vocab_size // 2, 2 * num_kv_pairs
        context = (1 if copies > 1 else context_repeats) * pairs  # "context": r reads
        keys = 1 + distinct_choice(rng, n, half - 1, num_kv_pairs)
        values = half + distinct_choice(rng, n, vocab_size - half, num_kv_pairs)
        space = (length - context) // 2
        probs = power_a * np.arange(1, space + 1) ** (power_a - 1)
        gaps = weighted_distinct_choice(rng, n, probs / probs.sum(), asked)
        queried, answers = keys, values
        if asked < num_kv_pairs:  # a random subset of the keys (plain rows draw nothing here)
            which = distinct_choice(rng, n, num_kv_pairs, asked)
            queried = np.take_along_axis(keys, which, axis=1)
            answers = np.take_along_axis(values, which, axis=1)

        inputs = np.zeros((n, length), np.int64)
        for start in range(0, context, pairs):
            inputs[:, start:start + pairs:2], inputs[:, start + 1:start + pairs:2] = keys, values
        query_pos = context + 2 * gaps
        np.put_along_axis(inputs, query_pos, queried, axis=1)
        targets = np.full((n, length), IGNORE_INDEX, np.int64)
        np.put_along_axis(targets, query_pos, answers, axis=1)
        if random_non_queries:
            noise = rng.integers(vocab_size, size=inputs.shape)
            inputs = np.where(inputs == 0, noise, inputs)
        if copies > 1:  # "prompt": the row r times, only the last copy labelled
            inputs = np.tile(inputs, (1, copies))
            unlabelled = np.full((n, length * (copies - 1)), IGNORE_INDEX, np.int64)
            targets = np.concatenate([unlabelled, targets], axis=1)
        return inputs, targets

    params = dict(n=num_examples, l=seq_len, kv=num_kv_pairs, v=vocab_size, a=power_a,
                  seed=seed, rnq=random_non_queries)
    if context_repeats != 1:  # the cache keys of plain MQAR stay as they were
        params["jrt"] = context_repeats
        if repeat_scope != "context":
            params["scope"] = repeat_scope
    if asked != num_kv_pairs:
        params["q"] = asked
    return _single_split("mqar", params, build, cache_dir, vocab_size, seq_len)


def check_selective_copying(num_blanks: Arg, num_tokens: Arg, vocab_size: Arg) -> None:
    """Raise ``ValueError`` naming the arguments unless :func:`selective_copying` can build its
    rows: no negative number of blanks, at least one data token, and a vocabulary with the
    blank, the marker and at least one data token."""
    require(num_blanks.value >= 0, f"{num_blanks} must be >= 0 (the number of blanks)")
    require(num_tokens.value >= 1, f"{num_tokens} must be >= 1")
    require(vocab_size.value >= 3,
            f"{vocab_size} must be >= 3 (the blank, the marker and at least one data token)")


def selective_copying(
    num_examples: int,
    num_blanks: int = 4096,
    num_tokens: int = 16,
    vocab_size: int = 16,
    seed: int = 0,
    cache_dir: CacheDir = DEFAULT_CACHE_DIR,
) -> Dataset:
    """Selective copying (Mamba 4.1.1; s4 ``torch_copying_data(L, M, A, variable=True)``).

    Row layout, length ``seq_len = num_blanks + 2 * num_tokens`` (L + 2M): the first L + M
    positions hold M data tokens, uniform from [1, A - 2], at M sorted random positions, and
    the blank token 0 elsewhere; then M marker tokens A - 1. ``targets`` holds the M data
    tokens in order at the M marker positions, -100 elsewhere. Mamba trains with L = 4096,
    M = 16, A = 16. ``vocab_size = num_classes = A`` (the blank shares id 0 with padding;
    the mask is all True).
    """
    check_selective_copying(
        **named(num_blanks=num_blanks, num_tokens=num_tokens, vocab_size=vocab_size)
    )
    seq_len = num_blanks + 2 * num_tokens

    def build():
        rng = np.random.default_rng(seed)
        n, context = num_examples, num_blanks + num_tokens
        tokens = rng.integers(1, vocab_size - 1, size=(n, num_tokens))
        positions = np.sort(distinct_choice(rng, n, context, num_tokens), axis=1)
        inputs = np.zeros((n, seq_len), np.int64)
        np.put_along_axis(inputs, positions, tokens, axis=1)
        inputs[:, context:] = vocab_size - 1
        targets = np.full((n, seq_len), IGNORE_INDEX, np.int64)
        targets[:, context:] = tokens
        return inputs, targets

    params = dict(n=num_examples, blanks=num_blanks, m=num_tokens, v=vocab_size, seed=seed)
    return _single_split("selective_copying", params, build, cache_dir, vocab_size, seq_len)


def check_induction_heads(seq_len: Arg, vocab_size: Arg) -> None:
    """Raise ``ValueError`` naming the arguments unless :func:`induction_heads` can build its
    rows: room for a trigger, the token after it, context and the final trigger (length >= 4),
    and a vocabulary with padding, the special token and a data token."""
    require(seq_len.value >= 4,
            f"{seq_len} must be >= 4 (a trigger, the token after it, one more context token "
            f"and the final trigger)")
    require(vocab_size.value >= 3,
            f"{vocab_size} must be >= 3 (padding, the special token and at least one data token)")


def induction_heads(
    num_examples: int,
    seq_len: int = 257,
    vocab_size: int = 16,
    seed: int = 0,
    lm_targets: bool = False,
    cache_dir: CacheDir = DEFAULT_CACHE_DIR,
) -> Dataset:
    """Induction heads (Mamba 4.1.2; safari ``generate_induction_head``, one trigger).

    Row layout, length ``seq_len``: ``seq_len - 1`` context tokens uniform from
    [1, V - 2], where the token at a uniform position p in [0, seq_len - 4] is replaced by the
    special token V - 1 (so the token at p + 1 is the one to recall); the last position
    holds V - 1 again. ``targets`` is -100 except at the last position, which holds the token
    that followed the first V - 1. With ``lm_targets``, every position t < seq_len - 1 is
    also labelled with token t + 1 (safari's training targets). Mamba trains with
    safari's input_seq_len 256 (seq_len 257 here), V = 16, and tests lengths up to 2^20.
    Id 0 is unused (it is padding). ``vocab_size = num_classes = V``.
    """
    check_induction_heads(**named(seq_len=seq_len, vocab_size=vocab_size))

    def build():
        rng = np.random.default_rng(seed)
        n, special, rows = num_examples, vocab_size - 1, np.arange(num_examples)
        inputs = rng.integers(1, special, size=(n, seq_len))
        trigger = rng.integers(seq_len - 3, size=n)
        inputs[rows, trigger] = special
        inputs[:, -1] = special
        targets = np.full((n, seq_len), IGNORE_INDEX, np.int64)
        if lm_targets:
            targets[:, :-1] = inputs[:, 1:]
        targets[:, -1] = inputs[rows, trigger + 1]
        return inputs, targets

    params = dict(n=num_examples, l=seq_len, v=vocab_size, seed=seed, lm=lm_targets)
    return _single_split("induction_heads", params, build, cache_dir, vocab_size, seq_len)


def check_associative_recall(seq_len: Arg, vocab_size: Arg) -> None:
    """Raise ``ValueError`` naming the arguments unless :func:`associative_recall` can build its
    rows: key-value pairs then the special token and the query (an even length >= 4), and a
    vocabulary with padding, the special token, a key and a value."""
    require(seq_len.value % 2 == 0 and seq_len.value >= 4,
            f"{seq_len} must be even and >= 4 (key-value pairs, then the special token and the "
            f"query key)")
    require(vocab_size.value >= 5,
            f"{vocab_size} must be >= 5 (padding, the special token, and at least one key and "
            f"one value)")


def associative_recall(
    num_examples: int,
    seq_len: int = 32,
    vocab_size: int = 20,
    seed: int = 0,
    lm_targets: bool = False,
    cache_dir: CacheDir = DEFAULT_CACHE_DIR,
) -> Dataset:
    """Single-query associative recall (H3; safari ``generate_assoc_recall``, one-token keys).

    The V - 2 data ids [1, V - 2] split into keys [1, K] and values [K + 1, V - 2], with
    K = (V - 2) // 2. Per row, each key gets a random value; the row holds
    (seq_len - 2) / 2 pairs ``k v`` with keys drawn uniformly with replacement, then the
    special token V - 1, then a query key drawn uniformly among the keys present.
    ``targets`` is -100 except at the last position (the query), which holds its value;
    ``lm_targets`` also labels every earlier position t with token t + 1. H3 uses safari's
    input_seq_len 30 (seq_len 32 here), V = 20. Id 0 is unused (padding).
    ``vocab_size = num_classes = V``.
    """
    check_associative_recall(**named(seq_len=seq_len, vocab_size=vocab_size))

    def build():
        rng = np.random.default_rng(seed)
        n, num_pairs, special = num_examples, (seq_len - 2) // 2, vocab_size - 1
        num_keys = (vocab_size - 2) // 2
        num_values = vocab_size - 2 - num_keys
        kv_map = 1 + num_keys + rng.integers(num_values, size=(n, num_keys + 1))
        keys = rng.integers(1, num_keys + 1, size=(n, num_pairs))
        present = np.zeros((n, num_keys + 1), bool)
        np.put_along_axis(present, keys, True, axis=1)
        query = np.argmax(np.where(present, rng.random(present.shape), -1.0), axis=1)
        inputs = np.empty((n, seq_len), np.int64)
        inputs[:, 0:-2:2] = keys
        inputs[:, 1:-2:2] = np.take_along_axis(kv_map, keys, axis=1)
        inputs[:, -2], inputs[:, -1] = special, query
        targets = np.full((n, seq_len), IGNORE_INDEX, np.int64)
        if lm_targets:
            targets[:, :-1] = inputs[:, 1:]
        targets[:, -1] = np.take_along_axis(kv_map, query[:, None], axis=1)[:, 0]
        return inputs, targets

    params = dict(n=num_examples, l=seq_len, v=vocab_size, seed=seed, lm=lm_targets)
    return _single_split("associative_recall", params, build, cache_dir, vocab_size, seq_len)
