"""Draws replays numpy Generator draws from PCG64's raw output: same numbers, same state."""

import numpy as np
import pytest

from seqzoo.data.pcg64_draws import Draws, replayed


def _mixed(rng, ops):
    """Results of a sequence of draws; ``rng`` is a Generator or a Draws."""
    out = []
    for op, arg in ops:
        if op == "random":
            out.append(float(rng.random()))
        elif op == "integers":
            out.append(int(rng.integers(*arg)))
        else:
            values = list(range(arg))
            rng.shuffle(values)
            out.append(values)
    return out


def _ops(seed, n=3000):
    pick = np.random.default_rng(seed)
    kinds = [("random", None), ("integers", (-180, 180)), ("integers", (0, 360)),
             ("integers", (2,)), ("integers", (1,)), ("integers", (5, 6)),
             ("integers", (1000 + seed,)), ("integers", (2**32 - 1,)),
             ("integers", (3 * 2**30,)), ("shuffle", 2), ("shuffle", 7), ("shuffle", 1)]
    return [kinds[i] for i in pick.integers(len(kinds), size=n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_draws_equal_numpy_and_leave_the_same_state(seed):
    """Mixed draws (buffered 32-bit halves, Lemire rejections near 2^32, spans of 1 that
    draw nothing) give numpy's numbers, and sync() leaves numpy's state, pending half included."""
    numpy_rng, replay_rng = np.random.default_rng([seed, 9]), np.random.default_rng([seed, 9])
    for rng in (numpy_rng, replay_rng):  # start with a pending 32-bit half
        rng.integers(10)
    assert replay_rng.bit_generator.state["has_uint32"] == 1
    ops = _ops(seed)
    draws = Draws(replay_rng)
    assert _mixed(draws, ops) == _mixed(numpy_rng, ops)
    draws.sync()
    assert replay_rng.bit_generator.state == numpy_rng.bit_generator.state
    assert replay_rng.random() == numpy_rng.random()


def test_replayed_syncs_back_and_passes_other_generators_through():
    numpy_rng, replay_rng = np.random.default_rng(4), np.random.default_rng(4)
    ops = _ops(4, 50)
    with replayed(replay_rng) as draws:
        assert isinstance(draws, Draws)
        got = _mixed(draws, ops)
    assert got == _mixed(numpy_rng, ops)
    assert replay_rng.bit_generator.state == numpy_rng.bit_generator.state
    other = np.random.Generator(np.random.MT19937(0))
    with replayed(other) as draws:
        assert draws is other
    with pytest.raises(TypeError, match="PCG64"):
        Draws(other)
    with pytest.raises(ValueError, match="span"):
        Draws(np.random.default_rng(0)).integers(3, 3)
