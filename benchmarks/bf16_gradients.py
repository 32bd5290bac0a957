"""bf16 accuracy of every Pallas kernel, output and each gradient apart, against float32.

    python benchmarks/bf16_gradients.py [--quick] [--only ssd,quasiseparable,...] [--rounded]

For every kernel: inputs drawn in float32, rounded to bf16; the kernel (``impl="pallas"``; for
"keydecay split" linear attention's ``impl="pallas_split"``; the "segments" rows with and without
``segments=``) runs
on the bf16 inputs, the reference (the op's XLA path, ``impl`` below) on the same rounded values
in float32. Printed: the relative L2 error ``||got - ref|| / ||ref||`` of the output and of every
gradient of ``sum(out * g)`` separately. Where the peer is importable (mamba_ssm's Triton SSD,
``mamba_chunk_scan_combined``, for Mamba-2), it runs on the same bf16 inputs and cotangent and
is scored against the same float32 reference. ``--quick``: small shapes (CPU: interpret mode).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.ops.linear_attention import linear_attention
from seqzoo.ops.quasiseparable import quasiseparable
from seqzoo.ops.scan import linear_recurrence, selective_scan
from seqzoo.ops.ssd import ssd

BF16 = jnp.bfloat16


def rel(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


ROUNDED = False  # ``--rounded``: score against the reference rounded to each result's dtype


def errors(fn, ref_fn, args: dict, diff: tuple[str, ...], g, f32=()) -> dict[str, float]:
    """Relative errors of ``fn`` on ``args`` rounded to bf16 (but those named in ``f32``: step
    sizes and decays, which the layers pass in float32) against ``ref_fn`` on the same values
    in float32: the output ``y`` and ``d<name>`` for every name in ``diff``. With ``ROUNDED``
    the cotangent ``g`` holds bf16 values (a bf16 output's cotangent is rounded to bf16 on its
    way in) and the reference is rounded to each result's dtype: a correctly rounded result
    scores 0, so what is left is the rounding inside the kernel."""
    if ROUNDED:
        g = g.astype(BF16).astype(jnp.float32)

    def value_and_grads(f, a, g):  # every array an argument: none is folded as a constant
        def loss(d):
            y = f(**{**a, **d})
            return jnp.sum(y.astype(jnp.float32) * g), y
        (_, y), grads = jax.value_and_grad(loss, has_aux=True)({n: a[n] for n in diff})
        return y, grads

    low = {n: (x if n in f32 or x.ndim < 2 else x.astype(BF16)) for n, x in args.items()}
    up = {n: (x.astype(jnp.float32) if x.dtype == BF16 else x) for n, x in low.items()}
    y, grads = jax.jit(functools.partial(value_and_grads, fn))(low, g)
    y_ref, grads_ref = jax.jit(functools.partial(value_and_grads, ref_fn))(up, g)

    def score(got, ref):
        if ROUNDED:
            ref = ref.astype(got.dtype)
        return rel(got.astype(jnp.float32), ref.astype(jnp.float32))

    out = {"y": score(y, y_ref)}
    out.update({f"d{n}": score(grads[n], grads_ref[n]) for n in diff})
    return out


def normal(key, shape):
    return jax.random.normal(key, shape, jnp.float32)


def ssd_case(shape):
    b, l, h, p, n = shape
    k = jax.random.split(jax.random.PRNGKey(0), 6)
    args = dict(x=normal(k[0], (b, l, h, p)), dt=normal(k[1], (b, l, h)) - 2.0,
                A=-jnp.exp(jax.random.uniform(k[2], (h,)) * 2.7),
                B=normal(k[3], (b, l, 1, n)), C=normal(k[4], (b, l, 1, n)))
    extra = dict(dt_bias=jnp.zeros((h,)), dt_softplus=True, chunk_size=64)
    return args, ("x", "dt", "B", "C"), normal(k[5], (b, l, h, p)), extra


def run_ssd(shape, peers: bool):
    args, diff, g, extra = ssd_case(shape)
    ours = errors(functools.partial(ssd, impl="pallas", **extra),
                  functools.partial(ssd, impl="chunked", **extra), args, diff, g, ("dt",))
    rows = [("seqzoo pallas (auto on GPU)", ours)]
    rows.append(("seqzoo XLA chunked, bf16", errors(
        functools.partial(ssd, impl="chunked", **extra),
        functools.partial(ssd, impl="chunked", **extra), args, diff, g, ("dt",))))
    if peers:
        peer = mamba_errors(args, diff, g, extra)
        if peer is not None:
            rows.append(("mamba_ssm Triton, bf16", peer))
    return rows


def mamba_errors(args, diff, g, extra):
    """mamba_chunk_scan_combined on the same bf16 inputs, scored against our float32 op."""
    try:
        import torch
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as e:
        print(f"  mamba_ssm not importable ({e}); peer column skipped", flush=True)
        return None
    low = {n: (x if n == "dt" or x.ndim < 2 else x.astype(BF16)) for n, x in args.items()}
    up = {n: x.astype(jnp.float32) for n, x in low.items()}

    def loss(d, g):
        y = ssd(**{**up, **d}, impl="chunked", **extra)
        return jnp.sum(y * g), y

    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, y_ref), grads_ref = grad_fn({n: up[n] for n in diff}, g)

    def tensor(x):
        arr = np.asarray(x.astype(jnp.float32))
        t = torch.tensor(arr, device="cuda")
        return t.to(torch.bfloat16) if x.dtype == BF16 else t

    t = {n: tensor(x).requires_grad_(n in diff) for n, x in low.items()}
    y = mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], extra["chunk_size"],
                                  dt_bias=tensor(extra["dt_bias"]), dt_softplus=True)
    (y.float() * tensor(g)).sum().backward()
    out = {"y": rel(y.float().detach().cpu().numpy(), y_ref)}
    for n in diff:
        out[f"d{n}"] = rel(t[n].grad.float().cpu().numpy(), grads_ref[n])
    return out


def run_quasiseparable(shape):
    b, l, h, p, n = shape
    k = jax.random.split(jax.random.PRNGKey(1), 10)
    args = dict(x=normal(k[0], (b, l, h, p)), dt_fwd=normal(k[1], (b, l, h)) - 2.0,
                dt_bwd=normal(k[2], (b, l, h)) - 2.0,
                A=-jnp.exp(jax.random.uniform(k[3], (h,)) * 2.7),
                B_fwd=normal(k[4], (b, l, 1, n)), C_fwd=normal(k[5], (b, l, 1, n)),
                B_bwd=normal(k[6], (b, l, 1, n)), C_bwd=normal(k[7], (b, l, 1, n)))
    extra = dict(dt_bias=jnp.zeros((h,)), dt_softplus=True, chunk_size=64)
    diff = ("x", "dt_fwd", "dt_bwd", "B_fwd", "C_fwd", "B_bwd", "C_bwd")
    g = normal(k[8], (b, l, h, p))
    return [("seqzoo pallas", errors(functools.partial(quasiseparable, impl="pallas", **extra),
                                     functools.partial(quasiseparable, impl="chunked", **extra),
                                     args, diff, g, ("dt_fwd", "dt_bwd")))]


def run_segments(shape, decay: str, impl: str):
    """``impl`` with and without ``segments=`` (P = min(32, T / 64): ``auto``'s count at
    (2, 32768, 4, 64), one chunk of 64 per segment at (4, 2048, 16, 128) and at the quick
    shape), each scored against the float32 XLA op."""
    segments = min(32, shape[1] // 64)
    return [row for parts in (None, segments)
            for row in run_linear_attention(shape, decay, impl, parts)]


def run_linear_attention(shape, decay: str | None, impl: str = "pallas",
                         segments: int | None = None):
    b, l, h, d = shape
    k = jax.random.split(jax.random.PRNGKey(2), 5)
    args = dict(q=normal(k[0], (b, l, h, d)) * d ** -0.5, k=normal(k[1], (b, l, h, d)),
                v=normal(k[2], (b, l, h, d)))
    diff = ("q", "k", "v")
    if decay is not None:
        gshape = (b, l, h) if decay == "head" else (b, l, h, d)
        args["log_decay"] = jax.nn.log_sigmoid(normal(k[3], gshape) + 3.0)
        diff += ("log_decay",)
    g = normal(k[4], (b, l, h, d))
    label = f"seqzoo {impl}" + ("" if segments is None else f", {segments} segments")
    return [(label, errors(functools.partial(linear_attention, impl=impl, segments=segments),
                           functools.partial(linear_attention, impl="chunked"),
                           args, diff, g, ("log_decay",)))]


def run_selective_scan(shape):
    b, l, d, n = shape
    k = jax.random.split(jax.random.PRNGKey(3), 8)
    args = dict(u=normal(k[0], (b, l, d)), delta=normal(k[1], (b, l, d)) - 2.0,
                A=-jnp.exp(normal(k[2], (d, n))), B=normal(k[3], (b, l, n)),
                C=normal(k[4], (b, l, n)), D=normal(k[5], (d,)), z=normal(k[6], (b, l, d)))
    diff = ("u", "delta", "B", "C", "z")
    g = normal(k[7], (b, l, d))
    return [("seqzoo pallas", errors(
        functools.partial(selective_scan, delta_softplus=True, impl="pallas"),
        functools.partial(selective_scan, delta_softplus=True, impl="associative"),
        args, diff, g, ("delta",)))]


def run_recurrence(shape):
    b, l, d = shape
    k = jax.random.split(jax.random.PRNGKey(4), 3)
    args = dict(a=jax.nn.sigmoid(normal(k[0], (b, l, d)) + 4.0), b=normal(k[1], (b, l, d)))
    g = normal(k[2], (b, l, d))
    return [("seqzoo pallas", errors(functools.partial(linear_recurrence, impl="pallas"),
                                     functools.partial(linear_recurrence, impl="associative"),
                                     args, ("a", "b"), g))]


# kernel -> (shapes on a GPU: the and one smaller, a --quick shape)
SHAPES = {
    "ssd": ([(2, 4096, 32, 64, 128), (4, 1024, 8, 64, 64)], (1, 200, 2, 16, 16)),
    "quasiseparable": ([(2, 4096, 8, 64, 128)], (1, 100, 2, 16, 16)),
    "linear_attention nodecay": ([(4, 2048, 16, 128)], (1, 100, 2, 16)),
    "linear_attention headdecay": ([(4, 2048, 16, 128)], (1, 100, 2, 16)),
    "linear_attention keydecay": ([(2, 1024, 4, 64)], (1, 100, 2, 16)),
    "linear_attention keydecay split": ([(2, 1024, 4, 64)], (1, 100, 2, 16)),
    "linear_attention headdecay segments": ([(2, 32768, 4, 64)], (1, 512, 2, 64)),
    "linear_attention keydecay split segments": ([(4, 2048, 16, 128)], (1, 512, 2, 64)),
    "selective_scan": ([(4, 2048, 1024, 16)], (1, 100, 8, 4)),
    "linear_recurrence": ([(8, 4096, 2048)], (1, 100, 8)),
}
RUNS = {
    "ssd": run_ssd,
    "quasiseparable": lambda shape, peers: run_quasiseparable(shape),
    "linear_attention nodecay": lambda shape, peers: run_linear_attention(shape, None),
    "linear_attention headdecay": lambda shape, peers: run_linear_attention(shape, "head"),
    "linear_attention keydecay": lambda shape, peers: run_linear_attention(shape, "key"),
    "linear_attention keydecay split": lambda shape, peers: run_linear_attention(
        shape, "key", "pallas_split"),
    "linear_attention headdecay segments": lambda shape, peers: run_segments(
        shape, "head", "pallas"),
    "linear_attention keydecay split segments": lambda shape, peers: run_segments(
        shape, "key", "pallas_split"),
    "selective_scan": lambda shape, peers: run_selective_scan(shape),
    "linear_recurrence": lambda shape, peers: run_recurrence(shape),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated kernel names (prefixes)")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--rounded", action="store_true",
                        help="against the float32 reference rounded to each result's dtype")
    args = parser.parse_args(argv)
    global ROUNDED
    ROUNDED = args.rounded
    print(f"# {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
    for name, (shapes, quick) in SHAPES.items():
        if args.only and not any(name.startswith(o) for o in args.only.split(",")):
            continue
        for shape in [quick] if args.quick else shapes:
            for path, errs in RUNS[name](shape, not args.no_peers):
                cells = ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
                print(f"{name} {shape} | {path} | {cells}", flush=True)


if __name__ == "__main__":
    main()
