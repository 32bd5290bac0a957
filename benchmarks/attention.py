"""Softmax attention on a GPU: what ``impl="auto"`` picks, its accuracy, speed and memory.

    python benchmarks/attention.py [--quick]

1. Accuracy: ``dot_product_attention`` with its defaults on bf16 inputs against the float32 XLA
   path on the same values (relative L2 error of the output and of dq, dk, dv), over padding
   masks (none, right, left, holes, an empty row), causal / not, a causal window, GQA.
2. Speed: forward and forward+backward (gradients of ``sum(o * cos(arange(d)))`` w.r.t. q, k,
   v) of ``auto``, of ``impl="parallel"``, of torch's ``scaled_dot_product_attention`` (when torch
   with CUDA is importable) and of tokamax's kernels (``mosaic``, ``triton``: when tokamax is
   importable) on the same shapes, median of repeated timings; bf16, and float32 rows.
3. Memory: XLA's temporary allocation for forward+backward of ``auto`` at growing lengths.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from kernel_harness import median_ms  # noqa: E402

from seqzoo.ops.attention import (  # noqa: E402
    attention_impl,
    dot_product_attention,
)
from seqzoo.ops.attention.tokamax_gpu import tokamax_installed  # noqa: E402

OURS = ("auto", "parallel", "tokamax") if tokamax_installed() else ("auto", "parallel")


def qkv(b, l, h, kv, d, dtype, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return tuple(jax.random.normal(kk, (b, l, n, d), jnp.float32).astype(dtype)
                 for kk, n in zip(keys, (h, kv, kv), strict=True))


def masks(b, l):
    """name -> (batch, length) bool padding mask (or None)."""
    pos = jnp.arange(l)
    lengths = jnp.array([l - l // 3 * (i % 2) for i in range(b)])
    right = pos[None] < lengths[:, None]
    holes = right & (pos % 7 != 3)[None]
    return {"none": None, "right": right, "left": right[:, ::-1], "holes": holes,
            "empty row": right.at[0].set(False)}


def weighted_sum(attend):
    def loss(q, k, v):
        o = attend(q, k, v)
        return jnp.sum(o.astype(jnp.float32) * jnp.cos(jnp.arange(o.shape[-1])))
    return loss


def loss_fn(impl, mask, options):
    return weighted_sum(functools.partial(dot_product_attention, mask=mask, impl=impl, **options))


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def accuracy(shape, impl="auto", dtype=jnp.bfloat16) -> None:
    b, l, h, kv, d = shape
    print(f"## accuracy, {jnp.dtype(dtype).name} {impl} vs float32 xla, {shape}")
    for causal, window, groups, names in [(True, None, 1, None), (False, None, 1, None),
                                          (True, l // 4, 1, ("right", "holes")),
                                          (True, None, 4, ("none", "left"))]:
        options = {"causal": causal, "window": window}
        q, k, v = qkv(b, l, h, h // groups, d, dtype)
        chosen, why = attention_impl(impl, dtype, d, **options)
        for name, mask in masks(b, l).items():
            if names is not None and name not in names:
                continue
            got = jax.jit(jax.value_and_grad(loss_fn(impl, mask, options), (0, 1, 2)))
            ref = jax.jit(jax.value_and_grad(loss_fn("parallel", mask, options), (0, 1, 2)))
            o = jax.jit(functools.partial(dot_product_attention, mask=mask, impl=impl, **options))
            _, g = got(q, k, v)
            up = [x.astype(jnp.float32) for x in (q, k, v)]
            _, g_ref = ref(*up)
            o_ref = jax.jit(functools.partial(dot_product_attention, mask=mask, impl="parallel",
                                              **options))(*up)
            errs = [rel(o(q, k, v).astype(jnp.float32), o_ref)]
            errs += [rel(x.astype(jnp.float32), y) for x, y in zip(g, g_ref, strict=True)]
            finite = all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32)))) for x in g)
            print(f"causal={causal} window={window} kv_heads={h // groups} mask={name} | "
                  f"{chosen} ({why}) | o {errs[0]:.1e} dq {errs[1]:.1e} dk {errs[2]:.1e} "
                  f"dv {errs[3]:.1e} | finite {finite}", flush=True)


def peer_accuracy(shape) -> None:
    """tokamax's kernels, causal without a mask, against the float32 XLA path."""
    b, l, h, kv, d = shape
    print(f"## accuracy of tokamax, causal, against float32 xla, {shape}")
    ref = jax.jit(jax.value_and_grad(loss_fn("parallel", None, {"causal": True}), (0, 1, 2)))
    for implementation, dtype in [("mosaic", jnp.bfloat16), ("triton", jnp.bfloat16),
                                  ("triton", jnp.float32)]:
        attend = tokamax_attention(implementation, True, None)
        if attend is None:
            return
        q, k, v = qkv(b, l, h, kv, d, dtype)
        up = [x.astype(jnp.float32) for x in (q, k, v)]
        try:
            o = jax.jit(attend)(q, k, v)
            _, g = jax.jit(jax.value_and_grad(weighted_sum(attend), (0, 1, 2)))(q, k, v)
        except Exception as e:  # an unsupported case: say so and go on
            print(f"{implementation} {jnp.dtype(dtype).name}: failed ({type(e).__name__}: "
                  f"{str(e).splitlines()[0][:80]})", flush=True)
            continue
        o_ref = jax.jit(functools.partial(dot_product_attention, causal=True, impl="parallel"))(*up)
        errs = [rel(o.astype(jnp.float32), o_ref)]
        errs += [rel(x.astype(jnp.float32), y) for x, y in zip(g, ref(*up)[1], strict=True)]
        print(f"{implementation} {jnp.dtype(dtype).name}: o {errs[0]:.1e} dq {errs[1]:.1e} "
              f"dk {errs[2]:.1e} dv {errs[3]:.1e}", flush=True)


def torch_sdpa(b, l, h, kv, d, causal, dtype):
    """(fwd, fwd+bwd) callables of torch's SDPA on the same layout, or None without CUDA."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    t = [torch.randn(b, n, l, d, device="cuda", dtype=getattr(torch, jnp.dtype(dtype).name),
                     requires_grad=True) for n in (h, kv, kv)]
    w = torch.cos(torch.arange(d, device="cuda", dtype=torch.float32))

    def fwd():
        return torch.nn.functional.scaled_dot_product_attention(
            *t, is_causal=causal, enable_gqa=kv != h)

    def fb():
        for x in t:
            x.grad = None
        (fwd().float() * w).sum().backward()
        return t[0].grad

    return fwd, fb


def tokamax_attention(implementation, causal, window):
    """``o(q, k, v)`` through ``tokamax.dot_product_attention``, or None without tokamax."""
    try:
        import tokamax
    except ImportError:
        return None
    sides = None if window is None else (window - 1, 0)
    return functools.partial(tokamax.dot_product_attention, is_causal=causal,
                             local_window_size=sides, implementation=implementation)


def timed_cells(fwd, loss, args, repeats) -> list[str]:
    """``[fwd ms, fwd+bwd ms]`` of jitted ``fwd`` and ``grad(loss)``, or why each failed."""
    cells = []
    for fn in (jax.jit(fwd), jax.jit(jax.grad(loss, (0, 1, 2)))):
        try:
            cells.append(f"{median_ms(functools.partial(fn, *args), repeats=repeats, calls=5):.3f}")
        except Exception as e:  # e.g. XLA out of memory at long lengths, an unsupported case
            cells.append(f"failed ({type(e).__name__}: {str(e).splitlines()[0][:60]})")
    return cells


def speed(shapes, repeats) -> None:
    print("## speed (ms, median)")
    ours = "".join(f"| {i} fwd | {i} fwd+bwd " for i in OURS)
    print("| shape (b, l, heads, kv heads, d) | dtype | options | auto picks " + ours +
          "| torch sdpa fwd | torch sdpa fwd+bwd "
          "| tokamax mosaic fwd | fwd+bwd | tokamax triton fwd | fwd+bwd |")
    print("|---" * (10 + 2 * len(OURS)) + "|")
    for shape, causal, window, mask_name, dtype in shapes:
        b, l, h, kv, d = shape
        q, k, v = qkv(b, l, h, kv, d, dtype)
        mask = masks(b, l)[mask_name] if mask_name != "all valid" else jnp.ones((b, l), bool)
        options = {"causal": causal, "window": window}
        cells = [attention_impl("auto", dtype, d, **options)[0]]
        for impl in OURS:
            attend = functools.partial(dot_product_attention, mask=mask, impl=impl, **options)
            cells += timed_cells(attend, loss_fn(impl, mask, options), (q, k, v), repeats)
        plain = mask_name == "none"
        peer = torch_sdpa(b, l, h, kv, d, causal, dtype) if plain and window is None else None
        cells += ([f"{median_ms(f, repeats=repeats, calls=5):.3f}" for f in peer] if peer
                  else ["-", "-"])
        for implementation in ("mosaic", "triton"):
            attend = tokamax_attention(implementation, causal, window) if plain else None
            cells += (timed_cells(attend, weighted_sum(attend), (q, k, v), repeats) if attend
                      else ["-", "-"])
        label = f"causal={causal} window={window} mask={mask_name}"
        row = [str(shape), jnp.dtype(dtype).name, label, *cells]
        print("| " + " | ".join(row) + " |", flush=True)


def memory(lengths, heads=16, d=128, impl="auto", dtype=jnp.bfloat16) -> None:
    print(f"## memory: XLA temporary bytes of {impl}'s forward+backward, batch 1, "
          f"{jnp.dtype(dtype).name}, padding mask")
    for l in lengths:
        q, k, v = qkv(1, l, heads, heads, d, dtype)
        mask = jnp.ones((1, l), bool)
        fb = jax.jit(jax.grad(loss_fn(impl, mask, {"causal": True}), (0, 1, 2)))
        stats = fb.lower(q, k, v).compile().memory_analysis()
        temp = getattr(stats, "temp_size_in_bytes", float("nan"))
        print(f"length {l}: temp {temp / 2**20:.1f} MiB, per token {temp / l:.0f} B", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (CPU smoke run)")
    parser.add_argument("--float32", action="store_true",
                        help="only the float32 speed rows (where auto's choice is open)")
    args = parser.parse_args(argv)
    print(f"# {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
    if args.quick:
        accuracy((2, 64, 4, 4, 16))
        speed([((2, 128, 4, 4, 16), True, None, "none", jnp.bfloat16),
               ((2, 128, 4, 4, 16), True, 32, "none", jnp.float32)], repeats=2)
        memory([128, 256], heads=2, d=16)
        return
    big, bf16, f32 = (4, 8192, 16, 16, 128), jnp.bfloat16, jnp.float32
    float32_rows = [(big, True, None, "none", f32), (big, False, 1024, "none", f32),
                    ((4, 2048, 16, 16, 128), True, None, "none", f32)]
    if args.float32:
        speed(float32_rows, repeats=3)
        return
    accuracy((2, 1024, 8, 8, 64))
    if tokamax_installed():
        accuracy((2, 1024, 8, 8, 64), "tokamax", jnp.float32)
    memory([8192, 16384, 32768])
    if tokamax_installed():
        memory([8192, 16384, 32768], impl="tokamax", dtype=jnp.float32)
    speed([(big, True, None, "none", bf16), float32_rows[0],
           (big, True, None, "left", bf16), (big, True, 1024, "none", bf16),
           ((4, 8192, 16, 4, 128), True, None, "none", bf16), (big, False, None, "none", bf16),
           float32_rows[1], (big, True, None, "all valid", bf16),
           ((4, 2048, 16, 16, 128), True, None, "none", bf16),
           float32_rows[2]],
          repeats=3)
    peer_accuracy((2, 1024, 8, 8, 64))

if __name__ == "__main__":
    main()
