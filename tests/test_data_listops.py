"""LRA ListOps generator: lengths, label re-evaluation, balance, uniqueness, seeds, workers."""

import numpy as np
import pytest

from seqzoo.data.listops import VOCAB, apply_operator, generate_listops, tokenize

# one worker runs this module (--dist loadgroup): its tests share module-scoped fixtures
pytestmark = pytest.mark.xdist_group("test_data_listops")

OPS = {"[MIN": min, "[MAX": max, "[SM": lambda v: sum(v) % 10,
       "[MED": lambda v: int(np.floor(np.median(v)))}


def _evaluate(tokens):
    """Independent stack evaluator; returns (value, max depth, arities)."""
    stack, depth, arities = [], 0, []
    for token in (VOCAB[t] for t in tokens):
        if token in OPS:
            stack.append([token])
            depth = max(depth, len(stack))
        elif token == "]":
            op, *args = stack.pop()
            arities.append(len(args))
            value = OPS[op](args)
            if not stack:
                return value, depth, arities
            stack[-1].append(value)
        else:
            stack[-1].append(int(token))
    raise AssertionError("expression did not close")


@pytest.fixture(scope="module")
def lra_sized():
    return generate_listops(num_train=300, num_val=50, num_test=50, seed=0, workers=1,
                            cache_dir=None, progress=False)


def test_splits_lengths_and_padding(lra_sized):
    assert lra_sized.vocab_size == 16 and lra_sized.num_classes == 10
    assert lra_sized.seq_len == 2000
    for name, n in (("train", 300), ("val", 50), ("test", 50)):
        split = lra_sized[name]
        assert split["inputs"].shape == split["mask"].shape == (n, 2000)
        assert split["targets"].shape == (n,) and split["targets"].dtype == np.int32
        lengths = split["mask"].sum(axis=1)
        assert lengths.min() > 500 and lengths.max() < 2000
        assert (split["mask"] == (np.arange(2000) < lengths[:, None])).all()
        assert (split["inputs"][~split["mask"]] == 0).all()
        assert (split["inputs"][split["mask"]] > 0).all()


def test_labels_match_an_independent_evaluation(lra_sized):
    for name in ("train", "val", "test"):
        split = lra_sized[name]
        for row, target in zip(split["inputs"], split["targets"], strict=True):
            value, depth, arities = _evaluate(row[row > 0])
            assert value == target
            assert depth <= 9  # operators sit at depths 1..9; depth 10 is digits only
            assert min(arities) >= 2 and max(arities) <= 10


def test_label_distribution(lra_sized):
    """LRA ListOps is skewed toward 0 and 9 (MIN / MAX of many digits), ~17% each; the
    other eight classes get ~8% each."""
    freq = np.bincount(lra_sized["train"]["targets"], minlength=10) / 300
    assert freq[0] > 0.11 and freq[9] > 0.11 and freq[0] + freq[9] > 0.25
    assert (freq[1:9] > 0.03).all() and (freq[1:9] < 0.15).all()


def test_examples_are_unique_across_splits(lra_sized):
    rows = np.concatenate([lra_sized[s]["inputs"] for s in ("train", "val", "test")])
    assert len({row.tobytes() for row in rows}) == len(rows)


def test_worker_count_and_seed(tmp_path):
    kwargs = dict(num_train=250, num_val=10, num_test=10, min_length=20, max_length=120,
                  progress=False)
    one = generate_listops(seed=5, workers=1, cache_dir=None, **kwargs)
    two = generate_listops(seed=5, workers=2, cache_dir=tmp_path, **kwargs)
    cached = generate_listops(seed=5, workers=2, cache_dir=tmp_path, **kwargs)
    other = generate_listops(seed=6, workers=1, cache_dir=None, **kwargs)
    for split in ("train", "val", "test"):
        for field in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(one[split][field], two[split][field])
            np.testing.assert_array_equal(one[split][field], cached[split][field])
    assert not np.array_equal(one["train"]["inputs"], other["train"]["inputs"])


def test_tokenize_lra_tsv_form_and_operators():
    ids = tokenize("( ( ( [MAX 2 ) 9 ) ] )")
    assert [VOCAB[i] for i in ids] == ["[MAX", "2", "9", "]"]
    assert apply_operator("[MED", [1, 2, 7, 9]) == 4 and apply_operator("[SM", [7, 8]) == 5
    with pytest.raises(ValueError, match="unknown ListOps token"):
        tokenize("[FOO 1 ]")
    with pytest.raises(ValueError, match="min_length"):
        generate_listops(min_length=10, max_length=5, cache_dir=None)
