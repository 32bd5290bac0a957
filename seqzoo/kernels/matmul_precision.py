"""The float32 matmul precision of the chunked Triton kernel: speed or accuracy, a user's choice.

For float32 inputs every matmul of every pass (forward, dq, dv, dk) runs at one of

    "highest"  IEEE float32 (Triton ``input_precision="ieee"``): no tensor cores.
    "tf32x3"   3xTF32 (``"tf32x3"``): each operand split as ``hi + lo`` in TF32 and multiplied
               as ``hi hi + hi lo + lo hi`` on tensor cores, about float32's accuracy. The
               default: as accurate as "highest" and several times faster (linear attention at
               (4, 2048, 16, 128) on an H100: relative L2 5.7e-7 against XLA's IEEE form,
               "highest" 7.4e-7; benchmarks/RESULTS.md, issue 24 item 3).
    "tf32"     one TF32 tensor-core pass (``"tf32"``): operands rounded to 10 mantissa bits,
               ~1e-3 relative error.

given to Pallas as ``lax.Precision.HIGHEST``, ``lax.DotAlgorithmPreset.TF32_TF32_F32_X3`` and
``TF32_TF32_F32`` (``jax/_src/pallas/triton/lowering.py``, ``_dot_general_lowering``).

At ``"tf32"`` the matmuls that split a float32 intermediate (scores, states, decayed keys) for
the decays' gradient run at ``"tf32x3"``: those of the dq and dk passes of decayed kernels
(``split``), whose outputs enter ``dg`` through differences of ``q.dq`` and ``k.dk``. That is
the ``hi + lo`` split bf16 inputs get there (``chunked_pass._dot``), with TF32 parts: "tf32"
rounds the inputs and the other matmuls' operands once, never the cancelling terms of ``dg``.

``precision=None`` follows ``jax.default_matmul_precision`` as Pallas' own dots read it on a
GPU: ``"float32"`` / ``"highest"`` / ``"F32_F32_F32"`` give "highest", ``"tensorfloat32"`` /
``"high"`` / ``"bfloat16"`` / ``"default"`` / ``"TF32_TF32_F32"`` give "tf32",
``"TF32_TF32_F32_X3"`` gives "tf32x3"; unset, the kernel's default "tf32x3"; a preset with no
TF32 form (bf16, fp8, fp16, fp64 ones), "highest". (The ops' XLA forms pass
``Precision.HIGHEST`` to every einsum: IEEE float32 whatever the context, so "highest" is the
like-for-like kernel.)

bf16 and fp16 inputs are unaffected (their matmuls take 16-bit operands), and so are interpret
mode (no GPU: float32 matmuls run at IEEE whatever the precision; the CPU's dot has no TF32) and
the Mosaic-TPU kernel (float32 at ``Precision.HIGHEST``; TF32 is a GPU format).
"""

from __future__ import annotations

import jax
from jax import lax

PRECISIONS = ("highest", "tf32x3", "tf32")
DEFAULT = "tf32x3"  # where neither the call nor jax.default_matmul_precision names one
_DOT = {
    "highest": lax.Precision.HIGHEST,
    "tf32x3": lax.DotAlgorithmPreset.TF32_TF32_F32_X3,
    "tf32": lax.DotAlgorithmPreset.TF32_TF32_F32,
}
# jax.default_matmul_precision's values -> the kernel's (the other presets: "highest").
_FROM_CONTEXT = {
    "highest": "highest", "float32": "highest", "F32_F32_F32": "highest",
    "TF32_TF32_F32_X3": "tf32x3",
    "tensorfloat32": "tf32", "high": "tf32", "bfloat16": "tf32", "default": "tf32",
    "TF32_TF32_F32": "tf32",
}


def resolve_precision(precision: str | None) -> str:
    """``precision`` checked (a ValueError naming the valid ones), or for None the one that
    ``jax.default_matmul_precision`` asks for (module docstring), read now: the caller resolves
    once, before tracing forward and backward passes that may run outside the context."""
    if precision is None:
        context = jax.config.jax_default_matmul_precision
        return DEFAULT if context is None else _FROM_CONTEXT.get(context, "highest")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    return precision


def dot_precision(precision: str, *, split: bool = False):
    """What a float32 ``lax.dot_general`` inside the kernel takes for ``precision``; with
    ``split`` (a pass whose outputs enter the decays' gradient) at least 3xTF32."""
    if split and precision == "tf32":
        precision = "tf32x3"
    return _DOT[precision]
