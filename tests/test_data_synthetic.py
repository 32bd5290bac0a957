"""Synthetic tasks: shapes, label positions, labels recomputed from the inputs, ranges, seeds."""

import numpy as np
import pytest

from seqzoo.data.cache import cache_file_name
from seqzoo.data.sampling import distinct_choice, weighted_distinct_choice
from seqzoo.data.synthetic import associative_recall, induction_heads, mqar, selective_copying

IGNORE = -100


def _check_split(ds, n, seq_len):
    split = ds["all"]
    assert split["inputs"].shape == split["targets"].shape == split["mask"].shape == (n, seq_len)
    assert split["inputs"].dtype == split["targets"].dtype == np.int32
    assert split["mask"].all() and ds.seq_len == seq_len
    assert split["inputs"].min() >= 0 and split["inputs"].max() < ds.vocab_size
    labelled = split["targets"] != IGNORE
    assert split["targets"][labelled].max() < ds.num_classes
    return split["inputs"], split["targets"], labelled


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_labels_are_the_values_that_followed_the_queried_keys(random_non_queries):
    n, seq_len, kv, vocab = 200, 64, 8, 512
    ds = mqar(n, seq_len, kv, vocab_size=vocab, seed=3, random_non_queries=random_non_queries,
              cache_dir=None)
    inputs, targets, labelled = _check_split(ds, n, seq_len)
    keys, values = inputs[:, 0:2 * kv:2], inputs[:, 1:2 * kv:2]
    assert ((keys >= 1) & (keys < vocab // 2)).all() and (values >= vocab // 2).all()
    assert all(len(set(row)) == kv for row in keys)
    assert (labelled.sum(axis=1) == kv).all()
    rows, cols = np.nonzero(labelled)
    assert (cols >= 2 * kv).all() and ((cols - 2 * kv) % 2 == 0).all()
    for r, c in zip(rows, cols, strict=True):
        (slot,) = np.nonzero(keys[r] == inputs[r, c])
        assert targets[r, c] == values[r, slot[0]]
    if not random_non_queries:
        assert (inputs[~labelled] != 0).sum() == 2 * kv * n


def test_mqar_jrt_prompt_repeats_the_context_and_asks_the_same_questions():
    """JRT-Prompt (context_repeats=2): the pairs twice, then the query region of the plain rows
    (same seed, seq_len raised by one copy of the context)."""
    n, kv, vocab = 50, 6, 256
    plain = mqar(n, 48, kv, vocab_size=vocab, seed=4, random_non_queries=False, cache_dir=None)
    jrt = mqar(n, 60, kv, vocab_size=vocab, seed=4, random_non_queries=False, cache_dir=None,
               context_repeats=2)
    inputs, targets, _ = _check_split(jrt, n, 60)
    p_inputs, p_targets = plain["all"]["inputs"], plain["all"]["targets"]
    np.testing.assert_array_equal(inputs[:, : 2 * kv], p_inputs[:, : 2 * kv])
    np.testing.assert_array_equal(inputs[:, 2 * kv : 4 * kv], p_inputs[:, : 2 * kv])
    np.testing.assert_array_equal(inputs[:, 4 * kv :], p_inputs[:, 2 * kv :])
    np.testing.assert_array_equal(targets[:, 4 * kv :], p_targets[:, 2 * kv :])
    assert (targets[:, : 4 * kv] == IGNORE).all()
    with pytest.raises(ValueError, match="context_repeats"):
        mqar(1, 48, kv, vocab_size=vocab, cache_dir=None, context_repeats=4)


@pytest.mark.parametrize("repeats", [2, 3])
def test_mqar_jrt_prompt_repeats_the_whole_row_and_scores_only_the_plain_rows_questions(repeats):
    """The paper's JR-p prompt (repeat_scope="prompt"): x = (C Q)^r, x[t] = u[t mod L] for the
    plain row u of length L = seq_len / r drawn with the same seed (filler noise included);
    only the last copy is labelled, with exactly the plain row's targets."""
    n, kv, asked, vocab, length = 60, 6, 2, 256, 40
    plain = mqar(n, length, kv, vocab_size=vocab, seed=5, cache_dir=None, num_queries=asked)
    jrt = mqar(n, repeats * length, kv, vocab_size=vocab, seed=5, cache_dir=None,
               num_queries=asked, context_repeats=repeats, repeat_scope="prompt")
    inputs, targets, labelled = _check_split(jrt, n, repeats * length)
    p_inputs, p_targets = plain["all"]["inputs"], plain["all"]["targets"]
    for copy in range(repeats):
        np.testing.assert_array_equal(inputs[:, copy * length : (copy + 1) * length], p_inputs)
    np.testing.assert_array_equal(targets[:, (repeats - 1) * length :], p_targets)
    assert (targets[:, : (repeats - 1) * length] == IGNORE).all()
    assert (labelled.sum(axis=1) == asked).all()


def test_mqar_num_queries_asks_a_random_subset_of_the_keys():
    """num_queries = m < n: m distinct keys of the row, each labelled with its value, at even
    offsets of the query region; which pairs are asked varies (not always the first m)."""
    n, kv, asked, vocab, seq_len = 300, 8, 3, 512, 64
    ds = mqar(n, seq_len, kv, vocab_size=vocab, seed=2, cache_dir=None, num_queries=asked)
    inputs, targets, labelled = _check_split(ds, n, seq_len)
    keys, values = inputs[:, 0 : 2 * kv : 2], inputs[:, 1 : 2 * kv : 2]
    assert (labelled.sum(axis=1) == asked).all()
    rows, cols = np.nonzero(labelled)
    assert (cols >= 2 * kv).all() and ((cols - 2 * kv) % 2 == 0).all()
    slots = np.zeros((n, kv), bool)
    for r, c in zip(rows, cols, strict=True):
        (slot,) = np.nonzero(keys[r] == inputs[r, c])
        assert targets[r, c] == values[r, slot[0]] and not slots[r, slot[0]]
        slots[r, slot[0]] = True
    assert slots.any(axis=0).all() and (slots.mean(axis=0) > 0.2).all()  # every pair gets asked
    # 0 and n both mean every key, the plain generator's rows
    every = mqar(20, seq_len, kv, vocab_size=vocab, seed=2, cache_dir=None)
    same = mqar(20, seq_len, kv, vocab_size=vocab, seed=2, cache_dir=None, num_queries=kv)
    np.testing.assert_array_equal(every["all"]["inputs"], same["all"]["inputs"])
    np.testing.assert_array_equal(every["all"]["targets"], same["all"]["targets"])


def test_mqar_context_scope_with_few_queries_asks_the_plain_rows_questions():
    """repeat_scope="context" (the default) with num_queries: C^r Q, the query region and its
    targets those of the plain rows of the same seed and query region."""
    n, kv, asked, vocab = 40, 6, 2, 256
    plain = mqar(n, 40, kv, vocab_size=vocab, seed=7, cache_dir=None, num_queries=asked,
                 random_non_queries=False)
    jrt = mqar(n, 52, kv, vocab_size=vocab, seed=7, cache_dir=None, num_queries=asked,
               random_non_queries=False, context_repeats=2)
    inputs, targets, _ = _check_split(jrt, n, 52)
    p_inputs, p_targets = plain["all"]["inputs"], plain["all"]["targets"]
    np.testing.assert_array_equal(inputs[:, 2 * kv : 4 * kv], p_inputs[:, : 2 * kv])
    np.testing.assert_array_equal(inputs[:, 4 * kv :], p_inputs[:, 2 * kv :])
    np.testing.assert_array_equal(targets[:, 4 * kv :], p_targets[:, 2 * kv :])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(seq_len=64, num_queries=5), r"num_queries=5 must be between 1 and num_kv_pairs=4"),
        (dict(seq_len=64, num_queries=-1), r"num_queries=-1 must be between"),
        (dict(seq_len=64, repeat_scope="both"), r"repeat_scope='?both'? must be one of context, "),
        (dict(seq_len=66, context_repeats=2, repeat_scope="prompt"),
         r"seq_len=66 must be context_repeats=2 times an even length"),
        (dict(seq_len=28, context_repeats=2, repeat_scope="prompt"),
         r"seq_len / context_repeats = 14 is too short .* in each copy of the prompt"),
        (dict(seq_len=16, context_repeats=2, num_queries=1),
         r"seq_len=16 is too short .*>= 18 .*context_repeats times.*2 x num_queries=1 slots"),
    ],
)
def test_mqar_rejects_bad_query_and_repeat_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mqar(1, num_kv_pairs=4, vocab_size=128, cache_dir=None, **kwargs)


def test_mqar_jrt_prompt_bounds_the_vocabulary_by_one_copy():
    """Zoology's vocab_size > length holds per copy of the prompt, so the JRT rows keep the
    plain rows' vocabulary (here 80 < seq_len 128)."""
    ds = mqar(4, 128, 8, vocab_size=80, cache_dir=None, num_queries=2, context_repeats=2,
              repeat_scope="prompt")
    assert ds["all"]["inputs"].shape == (4, 128)
    with pytest.raises(ValueError, match="vocab_size=64 must exceed seq_len / context_repeats"):
        mqar(4, 128, 8, vocab_size=64, cache_dir=None, context_repeats=2, repeat_scope="prompt")


def test_mqar_gaps_follow_the_power_law():
    ds = mqar(2000, 256, 4, vocab_size=1024, seed=0, cache_dir=None)
    gaps = (np.nonzero(ds["all"]["targets"] != IGNORE)[1] - 8) // 2
    space = (256 - 8) // 2
    # p(g) ~ (g + 1)^-0.99: about half the mass lies in the first ~sqrt(space) gaps.
    assert np.mean(gaps < 11) > 0.4 and gaps.max() < space and np.mean(gaps >= 62) > 0.05


def test_mqar_rejects_bad_arguments():
    with pytest.raises(ValueError, match="even"):
        mqar(1, 63, 4, cache_dir=None)
    with pytest.raises(ValueError, match="num_kv_pairs"):
        mqar(1, 64, 17, cache_dir=None)
    with pytest.raises(ValueError, match="vocab_size"):
        mqar(1, 64, 4, vocab_size=64, cache_dir=None)


def test_selective_copying_targets_are_the_data_tokens_in_order():
    n, blanks, m, vocab = 100, 50, 6, 10
    ds = selective_copying(n, num_blanks=blanks, num_tokens=m, vocab_size=vocab, seed=1,
                           cache_dir=None)
    inputs, targets, labelled = _check_split(ds, n, blanks + 2 * m)
    context = inputs[:, :blanks + m]
    assert (inputs[:, blanks + m:] == vocab - 1).all()
    assert (labelled == (np.arange(blanks + 2 * m) >= blanks + m)).all()
    data = context[context != 0].reshape(n, m)  # data tokens, in order of appearance
    assert ((data >= 1) & (data <= vocab - 2)).all()
    np.testing.assert_array_equal(targets[:, blanks + m:], data)
    first_positions = np.argmax(context != 0, axis=1)
    assert len(np.unique(first_positions)) > 10  # positions are scattered, not fixed


@pytest.mark.parametrize("lm_targets", [False, True])
def test_induction_heads_target_is_the_token_after_the_first_special(lm_targets):
    n, seq_len, vocab = 300, 40, 16
    ds = induction_heads(n, seq_len=seq_len, vocab_size=vocab, seed=2, lm_targets=lm_targets,
                         cache_dir=None)
    inputs, targets, labelled = _check_split(ds, n, seq_len)
    special = vocab - 1
    assert ((inputs[:, :-1] == special).sum(axis=1) == 1).all() and (inputs[:, -1] == special).all()
    assert (inputs >= 1).all()
    first = np.argmax(inputs == special, axis=1)
    assert first.max() <= seq_len - 4
    np.testing.assert_array_equal(targets[:, -1], inputs[np.arange(n), first + 1])
    if lm_targets:
        np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])
    else:
        assert labelled.sum() == n


def test_induction_heads_builds_long_test_sequences():
    inputs, targets, _ = _check_split(induction_heads(2, seq_len=1 << 16, cache_dir=None), 2,
                                      1 << 16)
    first = np.argmax(inputs == 15, axis=1)
    np.testing.assert_array_equal(targets[:, -1], inputs[[0, 1], first + 1])


def test_associative_recall_target_is_the_value_of_the_query_key():
    n, seq_len, vocab = 300, 32, 20
    ds = associative_recall(n, seq_len=seq_len, vocab_size=vocab, seed=4, cache_dir=None)
    inputs, targets, labelled = _check_split(ds, n, seq_len)
    keys, values = inputs[:, 0:-2:2], inputs[:, 1:-2:2]
    num_keys = (vocab - 2) // 2
    assert ((keys >= 1) & (keys <= num_keys)).all()
    assert ((values > num_keys) & (values <= vocab - 2)).all()
    assert (inputs[:, -2] == vocab - 1).all() and labelled.sum() == n
    for row in range(n):
        mapping = {}
        for k, v in zip(keys[row], values[row], strict=True):
            assert mapping.setdefault(k, v) == v  # a key always maps to the same value
        assert targets[row, -1] == mapping[inputs[row, -1]]


@pytest.mark.parametrize("make", [
    lambda seed, cache: mqar(20, 32, 4, vocab_size=100, seed=seed, cache_dir=cache),
    lambda seed, cache: selective_copying(20, 30, 4, seed=seed, cache_dir=cache),
    lambda seed, cache: induction_heads(20, 30, seed=seed, cache_dir=cache),
    lambda seed, cache: associative_recall(20, 30, seed=seed, cache_dir=cache),
])
def test_seeded_and_cached(make, tmp_path):
    a, b, c = make(0, None)["all"], make(0, tmp_path)["all"], make(1, None)["all"]
    cached = make(0, tmp_path)["all"]  # second call reads the file the first wrote
    assert len(list(tmp_path.iterdir())) == 1
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], cached[key])
        assert cached[key].dtype == a[key].dtype
    assert not np.array_equal(a["inputs"], c["inputs"])


def test_cache_name_encodes_parameters():
    name = cache_file_name("mqar", dict(n=5, a=0.01, rnq=True))
    assert name == "mqar-v2-n=5-a=0.01-rnq=1.npz"
    long = cache_file_name("x", {f"p{i}": i for i in range(100)})
    assert len(long) < 220 and long != cache_file_name("x", {f"p{i}": i + 1 for i in range(100)})


@pytest.mark.parametrize("pool,k", [(1000, 5), (10, 8)])
def test_distinct_choice_rows_are_distinct_and_uniform(pool, k):
    draws = distinct_choice(np.random.default_rng(0), 4000, pool, k)
    assert all(len(set(row)) == k for row in draws) and draws.max() < pool
    if pool == 10:
        counts = np.bincount(draws[:, 0], minlength=pool) / 4000
        assert np.abs(counts - 0.1).max() < 0.03


def test_weighted_distinct_choice_matches_successive_sampling():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    draws = weighted_distinct_choice(np.random.default_rng(0), 20000, probs, 2)
    assert (draws[:, 0] != draws[:, 1]).all()
    np.testing.assert_allclose(np.bincount(draws[:, 0]) / 20000, probs, atol=0.015)
    # P(second = 1) = sum_i p_i * p_1 / (1 - p_i) over i != 1
    second = sum(probs[i] * probs[1] / (1 - probs[i]) for i in (0, 2, 3))
    assert abs(np.mean(draws[:, 1] == 1) - second) < 0.015
