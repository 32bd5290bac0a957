"""Long sequences with few heads: the chunked kernel on P parallel segments (issue 24, item 2).

    python benchmarks/kernels.py --only chunked_segments [--quick]

At (2, 32768, 4, 64) and (1, 65536, 2, 128), bf16, no decay and a decay per head, forward and
forward+backward (gradients of ``sum(o * do)`` w.r.t. q, k, v and the decays): the reference
``pallas`` (``impl="pallas"``, no segments: one program per batch, head and value block walking
the whole sequence), then ``segments=P`` for every P of ``SEGMENTS`` (P = 1 times the wrapper
alone) and the proposal of ``seqzoo.ops.linear_attention.pallas_gpu.proposed_segments`` for
this GPU's SM count (labelled "auto" where ``impl="auto"`` takes it), and
flash-linear-attention's kernel where importable (the baseline then; otherwise
the kernel without segments). Issue 24's goal: at least as fast as fla; on the H200 at
(2, 32768, 4, 64) without decay the kernel took 1.041 / 3.123 ms against fla's
``chunk_linear_attn`` 0.471 / 1.819 ms.

A decay per key (GLA) runs the split form instead (``impl="pallas_split"``, what ``auto`` takes
there; ``segments=`` is its user's option, not taken by ``auto``): at the two shapes above and at
GLA's (4, 2048, 16, 128) with ``GLA_SEGMENTS`` (its 256 programs, two a multiprocessor of an
H100, times P; P = 32, one chunk of 64 per segment, is fla's ``chunk_gla`` structure: no walk,
every chunk's local state and outputs in parallel, the states entering the chunks in XLA, then
every chunk's ``q S_in`` in one batched matmul), beside fla's ``chunk_gla``.
"""

from __future__ import annotations

from kernel_harness import Case

from kernel_cases.chunked_linear_attention import (
    FLA,
    RTOL,
    _attention_floor,
    _jax_variant,
    attention_inputs,
    fla_variants,
)
from seqzoo.ops.linear_attention import linear_attention
from seqzoo.ops.linear_attention.pallas_gpu import AUTO_MIN_SEGMENTS, proposed_segments

SHAPES = [(2, 32768, 4, 64), (1, 65536, 2, 128)]
SEGMENTS = (1, 4, 8, 16, 32, 64)
GLA_SHAPE, GLA_SEGMENTS = (4, 2048, 16, 128), (1, 2, 4, 8, 32)
QUICK_SHAPES, QUICK_SEGMENTS = [(1, 80, 2, 16)], (1, 2, 4)


def segments_case(shape, kind, mode, counts) -> Case:
    """Linear attention, bf16, by the kernel (``impl="pallas"``; the split form for a decay per
    key) on each segment count of ``counts`` and the proposed one."""
    q, k, v, g, do = attention_inputs(shape, kind)
    args = (q, k, v) if g is None else (q, k, v, g)
    b, t, h, d = shape
    impl = "pallas_split" if kind == "key" else "pallas"
    proposed = proposed_segments(b, h, t, d)
    auto = impl == "pallas" and proposed >= AUTO_MIN_SEGMENTS
    label = " (proposed, auto)" if auto else " (proposed)"

    def op(segments):
        def fn(q, k, v, g=None):
            return linear_attention(q, k, v, log_decay=g, chunk_size=64, impl=impl,
                                    segments=segments)
        return fn

    variants = {impl: _jax_variant(op(None), args, do, mode)}
    for p in dict.fromkeys((*counts, proposed)):
        name = f"{impl} P{p}" + (label if p == proposed else "")
        variants[name] = _jax_variant(op(p), args, do, mode)
    fla = fla_variants(kind, mode, q, k, v, g, do)
    variants.update(fla)
    return Case(f"linear_attention {kind} {mode} segments", f"B{b} T{t} H{h} D{d} bf16",
                variants, baseline=f"fla {FLA[kind]}" if fla else impl,
                floor_ms=_attention_floor(shape, kind, mode), rtol=RTOL[mode])


def cases(quick: bool) -> list[Case]:
    shapes, counts = (QUICK_SHAPES, QUICK_SEGMENTS) if quick else (SHAPES, SEGMENTS)
    plan = [(shape, kind, counts) for shape in shapes for kind in ("none", "head", "key")]
    if not quick:
        plan.append((GLA_SHAPE, "key", GLA_SEGMENTS))
    return [segments_case(shape, kind, mode, counts) for shape, kind, counts in plan
            for mode in ("fwd", "fwd+bwd")]
