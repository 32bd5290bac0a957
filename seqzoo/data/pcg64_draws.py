"""numpy ``Generator`` draws replayed from a PCG64 bit generator's raw output, in Python.

``Generator.integers`` costs about 1.5 us a call, mostly argument handling; a generator that
makes hundreds of scalar draws per sample (the Pathfinder painter) spends much of its time
there. :class:`Draws` gives the same numbers from the same state at a fifth of the cost, for
the methods it implements (numpy 1.17+ algorithms, checked against numpy in the tests):

- ``random()``: (next64 >> 11) * 2^-53;
- ``integers(low, high)`` for spans below 2^32: Lemire's multiply-shift on 32-bit words with
  rejection of ``leftover < (2^32 - span) % span``; a span of 1 draws nothing;
- ``shuffle(list)``: for i = n - 1 .. 1 swap x[i] with x[j], j the first of the 32-bit words
  masked to i's bit length that is <= i.

32-bit words come from splitting a 64-bit output, low half first, the high half kept for the
next 32-bit request (PCG64's ``next_uint32``). Raw outputs are read in blocks; ``sync()``
leaves the bit generator as if numpy had made the same draws (state advanced by the outputs
used, the pending half word restored).
"""

import contextlib
from collections.abc import Iterator

import numpy as np

_BLOCK = 256
_WORD = 0xFFFFFFFF


class Draws:
    """Replays ``rng``'s draws (see the module docstring); call ``sync()`` before using
    ``rng`` itself again. ``rng`` must use the PCG64 bit generator (``default_rng``'s)."""

    def __init__(self, rng: np.random.Generator):
        self._bitgen = rng.bit_generator
        if type(self._bitgen) is not np.random.PCG64:
            raise TypeError(f"Draws replays PCG64 only, got {type(self._bitgen).__name__}")
        self._start = self._bitgen.state
        self._half, self._word = self._start["has_uint32"], self._start["uinteger"]
        self._raw: list[int] = []
        self._next = 0  # index into _raw
        self._used = 0  # 64-bit outputs taken before _raw

    def _next64(self) -> int:
        if self._next == len(self._raw):
            self._used += len(self._raw)
            self._raw, self._next = self._bitgen.random_raw(_BLOCK).tolist(), 0
        self._next += 1
        return self._raw[self._next - 1]

    def _next32(self) -> int:
        if self._half:
            self._half = 0
            return self._word
        value = self._next64()
        self._half, self._word = 1, value >> 32
        return value & _WORD

    def random(self) -> float:
        """A float in [0, 1) with 53 random bits."""
        return (self._next64() >> 11) * (1.0 / 9007199254740992.0)

    def integers(self, low: int, high: int | None = None) -> int:
        """An int in [low, high) ([0, low) without ``high``)."""
        if high is None:
            low, high = 0, low
        span = high - low
        if not 0 < span <= _WORD:
            raise ValueError(f"span {span} must be in 1 .. 2^32 - 1")
        if span == 1:
            return low
        product = self._next32() * span
        if product & _WORD < span:
            threshold = (_WORD + 1 - span) % span
            while product & _WORD < threshold:
                product = self._next32() * span
        return low + (product >> 32)

    def shuffle(self, values: list) -> None:
        """Shuffles ``values`` in place, as ``Generator.shuffle`` does a list."""
        for i in range(len(values) - 1, 0, -1):
            mask = (1 << i.bit_length()) - 1
            j = self._next32() & mask
            while j > i:
                j = self._next32() & mask
            values[i], values[j] = values[j], values[i]

    def sync(self) -> None:
        """Sets the bit generator to where numpy's own draws would have left it."""
        self._bitgen.state = self._start
        self._bitgen.advance(self._used + self._next)
        state = self._bitgen.state
        state["has_uint32"], state["uinteger"] = self._half, self._word
        self._bitgen.state = state


@contextlib.contextmanager
def replayed(rng: np.random.Generator) -> Iterator["Draws | np.random.Generator"]:
    """:class:`Draws` over ``rng``, synced back on exit, if ``rng`` uses PCG64; else ``rng``."""
    if type(rng.bit_generator) is not np.random.PCG64:
        yield rng
        return
    draws = Draws(rng)
    try:
        yield draws
    finally:
        draws.sync()
