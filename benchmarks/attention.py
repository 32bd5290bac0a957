"""Softmax attention on a GPU: what ``impl="auto"`` picks, its accuracy, speed and memory.

    python benchmarks/attention.py [--quick]

1. Accuracy: ``dot_product_attention`` with its defaults on bf16 inputs against the float32 XLA
   path on the same values (relative L2 error of the output and of dq, dk, dv), over padding
   masks (none, right, left, holes, an empty row), causal / not, a causal window, GQA.
2. Speed: forward and forward+backward (gradients of ``sum(o * cos(arange(d)))`` w.r.t. q, k,
   v) of ``auto``, of ``impl="xla"`` and of torch's ``scaled_dot_product_attention`` (when
   torch with CUDA is importable) on the same shapes, median of repeated timings.
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

from seqzoo.ops.attention import dot_product_attention  # noqa: E402
from seqzoo.ops.fused_attention import attention_impl  # noqa: E402


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


def loss_fn(impl, mask, options):
    def loss(q, k, v):
        o = dot_product_attention(q, k, v, mask=mask, impl=impl, **options)
        return jnp.sum(o.astype(jnp.float32) * jnp.cos(jnp.arange(o.shape[-1])))
    return loss


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def accuracy(shape) -> None:
    b, l, h, kv, d = shape
    print(f"## accuracy, bf16 auto vs float32 xla, {shape}")
    for causal, window, groups, names in [(True, None, 1, None), (False, None, 1, None),
                                          (True, l // 4, 1, ("right", "holes")),
                                          (True, None, 4, ("none", "left"))]:
        options = {"causal": causal, "window": window}
        q, k, v = qkv(b, l, h, h // groups, d, jnp.bfloat16)
        chosen, why = attention_impl("auto", jnp.bfloat16, d, **options)
        for name, mask in masks(b, l).items():
            if names is not None and name not in names:
                continue
            got = jax.jit(jax.value_and_grad(loss_fn("auto", mask, options), (0, 1, 2)))
            ref = jax.jit(jax.value_and_grad(loss_fn("xla", mask, options), (0, 1, 2)))
            o = jax.jit(functools.partial(dot_product_attention, mask=mask, **options))
            _, g = got(q, k, v)
            up = [x.astype(jnp.float32) for x in (q, k, v)]
            _, g_ref = ref(*up)
            o_ref = jax.jit(functools.partial(dot_product_attention, mask=mask, impl="xla",
                                              **options))(*up)
            errs = [rel(o(q, k, v).astype(jnp.float32), o_ref)]
            errs += [rel(x.astype(jnp.float32), y) for x, y in zip(g, g_ref, strict=True)]
            finite = all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32)))) for x in g)
            print(f"causal={causal} window={window} kv_heads={h // groups} mask={name} | "
                  f"{chosen} ({why}) | o {errs[0]:.1e} dq {errs[1]:.1e} dk {errs[2]:.1e} "
                  f"dv {errs[3]:.1e} | finite {finite}", flush=True)


def torch_sdpa(b, l, h, kv, d, causal):
    """(fwd, fwd+bwd) callables of torch's SDPA on the same layout, or None without CUDA."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    t = [torch.randn(b, n, l, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
         for n in (h, kv, kv)]
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


def speed(shapes, repeats) -> None:
    print("## speed (ms, median), bf16")
    print("| shape (b, l, heads, kv heads, d) | options | auto picks | auto fwd | auto fwd+bwd "
          "| xla fwd | xla fwd+bwd | torch sdpa fwd | torch sdpa fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape, causal, window, mask_name in shapes:
        b, l, h, kv, d = shape
        q, k, v = qkv(b, l, h, kv, d, jnp.bfloat16)
        mask = masks(b, l)[mask_name] if mask_name != "all valid" else jnp.ones((b, l), bool)
        options = {"causal": causal, "window": window}
        cells = [attention_impl("auto", jnp.bfloat16, d, **options)[0]]
        for impl in ("auto", "xla"):
            fwd = jax.jit(functools.partial(dot_product_attention, mask=mask, impl=impl,
                                            **options))
            fb = jax.jit(jax.grad(loss_fn(impl, mask, options), (0, 1, 2)))
            for fn in (fwd, fb):
                try:
                    ms = median_ms(functools.partial(fn, q, k, v), repeats=repeats, calls=5)
                    cells.append(f"{ms:.3f}")
                except Exception as e:  # e.g. XLA out of memory at long lengths
                    cells.append(f"failed ({type(e).__name__})")
        plain = window is None and mask_name == "none"
        peer = torch_sdpa(b, l, h, kv, d, causal) if plain else None
        cells += ([f"{median_ms(f, repeats=repeats, calls=5):.3f}" for f in peer] if peer
                  else ["-", "-"])
        label = f"causal={causal} window={window} mask={mask_name}"
        print(f"| {shape} | {label} | " + " | ".join(cells) + " |", flush=True)


def memory(lengths, heads=16, d=128) -> None:
    print("## memory: XLA temporary bytes of auto's forward+backward, batch 1, bf16")
    for l in lengths:
        q, k, v = qkv(1, l, heads, heads, d, jnp.bfloat16)
        mask = jnp.ones((1, l), bool)
        fb = jax.jit(jax.grad(loss_fn("auto", mask, {"causal": True}), (0, 1, 2)))
        stats = fb.lower(q, k, v).compile().memory_analysis()
        temp = getattr(stats, "temp_size_in_bytes", float("nan"))
        print(f"length {l}: temp {temp / 2**20:.1f} MiB, per token {temp / l:.0f} B", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (CPU smoke run)")
    args = parser.parse_args(argv)
    print(f"# {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
    if args.quick:
        accuracy((2, 64, 4, 4, 16))
        speed([((2, 128, 4, 4, 16), True, None, "none")], repeats=2)
        memory([128, 256], heads=2, d=16)
        return
    accuracy((2, 1024, 8, 8, 64))
    big = (4, 8192, 16, 16, 128)
    speed([(big, True, None, "none"), (big, True, None, "all valid"), (big, True, None, "left"),
           (big, True, 1024, "none"), ((4, 8192, 16, 4, 128), True, None, "none"),
           ((4, 8192, 16, 16, 128), False, None, "none")], repeats=3)
    memory([8192, 16384, 32768])


if __name__ == "__main__":
    main()
