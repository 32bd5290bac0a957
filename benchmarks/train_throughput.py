"""End-to-end language-model training throughput: seqzoo (JAX) beside the PyTorch peers.

    PYTHONPATH=.:.peers/site python benchmarks/train_throughput.py \\
        [--archs attention,mamba2,hybrid,gla] [--sides jax,torch] [--steps 10] [--batch 8] \\
        [--layers 12] [--d-model 768] [--seq-len 2048] [--vocab 50277] [--mlp glu] [--budget 520] \\
        [--jax-impl gla=pallas_split]

Models (both sides alike, the parameter counts printed for both): token embedding (vocab 50277,
GPT-NeoX's, as Mamba's 125M), ``layers`` pre-norm residual blocks of mixer + SwiGLU MLP (width
2/3 of 4 d; ``--mlp none`` drops it, Mamba-2's paper models have none), final RMSNorm, an lm head
with a bias (untied). Mixers at d_model 768, their papers' 125M options:

    attention  12 heads of 64, causal, RoPE                     torch: SDPA (flash)
    mamba2     d_state 128, headdim 64, expand 2, chunk 256     torch: mamba_ssm Mamba2 (Triton SSD)
    gla        4 heads, key dim d/2, value dim d, gate rank 16   torch: fla GatedLinearAttention
    hybrid     mamba2, with attention at max(1, round(layers/6)) evenly spaced layers (3, 9 of 12)

JAX: seqzoo's ``SequenceModel(head="lm")``, float32 parameters, bfloat16 compute (``dtype``, the
lm head's matmul included, as autocast runs torch's), every ``impl`` left at "auto" (``--jax-impl
MIXER=IMPL,...`` names one per mixer: to time a path before ``auto`` takes it; the row says so),
``optax.adamw``, one jitted step with parameters and optimizer state donated. Torch: float32
parameters under bf16 autocast, ``AdamW(fused=True)`` on a GPU, eager (``--torch-compile``:
``torch.compile``). Both: lr 1e-3, betas (0.9, 0.95), weight decay 0.1 on every parameter, mean
next-token cross-entropy on one fixed batch of random tokens (the loss must fall: it memorises);
``loss_first`` / ``loss_last`` are the losses of the first and the last of the same 1 + 2 +
``--steps`` updates on both sides. Both sides initialise alike: seqzoo's (flax's) defaults, which
the torch twin copies (``torch_lm.seqzoo_init``: embedding std 1 / sqrt(d) where torch's is 1,
lecun-normal linears, zero biases). Before that the twins did not memorise at comparable speeds:
on one H100 (2026-12) the 12-layer attention LM's loss after the timed steps was 7.17 (JAX)
against 0.23 (torch, its own init), and JAX took one update fewer than torch.

Timing: the first step is compile (JAX: ``lower().compile()``; torch: the first eager step,
Triton compilation and autotuning included), two warm-up steps, then the median of ``--steps``
steps, each synchronised (``block_until_ready`` / ``cuda.synchronize``). tokens/s = batch *
seq_len / median step.

MFU = tokens/s * F / peak, F the training FLOPs per token:

    F = 6 (P - P_embed) + sum over layers of 3 * (forward sequence FLOPs per token)
    attention  2 L d_attn                      QK^T and PV, causal (half of 4 L d_attn)
    mamba2     Q (N G + E) + 4 N E             SSD chunk Q: C B^T and the masked (Q, Q) product
                                               (causal halves), chunk states B^T x and C h
    gla        C (D_k + D_v) + 4 D_k D_v / H   chunk C = 64: intra-chunk q k^T and P v (causal
                                               halves), state update k^T v and readout q S

with P - P_embed every parameter but the input embedding (the lm head's included), L the length,
E = expand d, N = d_state, G = ngroups, Q = min(chunk, L), D_k, D_v the total key and value
widths, H heads. (PaLM's 12 L d per attention layer does not halve for causality.) Peak: dense
bf16 of the device (H100 SXM, H200: 989.4 TFLOP/s); other devices print MFU as "-"
(``--peak-tflops`` sets it).

Every (arch, side) row runs in a child process (JAX preallocates the GPU's memory, and a row that
hangs, e.g. in fla's Triton autotuning, is cut after ``--row-timeout`` or at the end of
``--budget``) and prints a JSON line as soon as it is measured; a failed row prints why; a
markdown table closes the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ARCHS = ("attention", "mamba2", "hybrid", "gla")  # gla last: fla autotunes for minutes
SIDES = ("jax", "torch")
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}  # dense, SXM
WARMUP = 2
GLA_CHUNK = 64  # seqzoo's default and fla's chunk_gla block


# ---- models ---------------------------------------------------------------------------------
def layer_mixers(arch: str, n_layers: int) -> list[str]:
    """The registry name of each layer's mixer; ``hybrid``: mamba2 with attention at
    ``max(1, round(n_layers / 6))`` evenly spaced layers."""
    if arch in ("attention", "mamba2", "gla"):
        return [arch] * n_layers
    if arch != "hybrid":
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    n_attn = max(1, round(n_layers / 6))
    at = {int((j + 0.5) * n_layers / n_attn) for j in range(n_attn)}
    return ["attention" if i in at else "mamba2" for i in range(n_layers)]


def mixer_options(d_model: int, seq_len: int) -> dict[str, dict[str, Any]]:
    """seqzoo options per mixer: the 125M-class configs of the papers, scaled with ``d_model``."""
    gla_heads = 4
    return {
        "attention": {"num_heads": max(1, d_model // 64), "head_dim": min(64, d_model)},
        "mamba2": {"d_state": 128, "headdim": 64, "expand": 2, "chunk_size": min(256, seq_len)},
        "gla": {
            "num_heads": gla_heads,
            "key_dim": d_model // 2 // gla_heads,
            "value_dim": d_model // gla_heads,
            "gate_low_rank": 16,
            "chunk_size": GLA_CHUNK,
        },
    }


def sequence_flops(name: str, opts: dict[str, Any], d_model: int, seq_len: int) -> float:
    """Forward+backward FLOPs per token of one ``name`` layer's sequence mixing (not its
    projections, which 6 P counts); see the module docstring."""
    if name == "attention":
        return 3 * 2 * seq_len * opts["num_heads"] * opts["head_dim"]
    if name == "mamba2":
        e, n, q = opts["expand"] * d_model, opts["d_state"], min(opts["chunk_size"], seq_len)
        return 3 * (q * (n * opts.get("ngroups", 1) + e) + 4 * n * e)
    if name == "gla":
        h = opts["num_heads"]
        dk, dv, c = h * opts["key_dim"], h * opts["value_dim"], min(GLA_CHUNK, seq_len)
        return 3 * (c * (dk + dv) + 4 * dk * dv / h)
    raise ValueError(f"no FLOP count for mixer {name!r}")


def flops_per_token(args, arch: str, non_embedding_params: int) -> float:
    """``6 (P - P_embed) + sum of sequence_flops`` over the layers."""
    opts = mixer_options(args.d_model, args.seq_len)
    mixing = sum(
        sequence_flops(n, opts[n], args.d_model, args.seq_len)
        for n in layer_mixers(arch, args.layers)
    )
    return 6 * non_embedding_params + mixing


def peak_flops(device_kind: str, override_tflops: float | None) -> float | None:
    """Dense bf16 FLOP/s of ``device_kind`` (None when unknown: MFU prints as "-")."""
    if override_tflops:
        return override_tflops * 1e12
    kind = device_kind.upper()
    if "PCIE" in kind or "NVL" in kind:
        return None
    return next((v for k, v in PEAK_BF16.items() if k in kind), None)


# ---- JAX ------------------------------------------------------------------------------------
def jax_model(args, arch: str):
    """seqzoo's ``SequenceModel`` of ``arch``: float32 parameters, bfloat16 compute."""
    import jax.numpy as jnp

    from seqzoo.models.sequence_model import SequenceModel

    mixers = layer_mixers(arch, args.layers)
    opts = mixer_options(args.d_model, args.seq_len)
    for name, impl in args.jax_impl.items():
        opts[name] = {**opts[name], "impl": impl}
    return SequenceModel(
        d_model=args.d_model,
        n_layers=args.layers,
        mixer=tuple(mixers),
        mixer_config={n: opts[n] for n in set(mixers)},
        vocab_size=args.vocab,
        head="lm",
        mlp=args.mlp,
        dtype=jnp.bfloat16,
    )


def run_jax(args, arch: str) -> dict[str, Any]:
    """Train seqzoo's model of ``arch``; returns the row (params, step ms, compile s, losses)."""
    import jax
    import optax

    model = jax_model(args, arch)
    key = jax.random.PRNGKey(0)
    tokens = jax.random.randint(key, (args.batch, args.seq_len + 1), 0, args.vocab)
    params = jax.jit(model.init)(key, tokens[:1, :16])["params"]  # no shape depends on length
    n_params = sum(x.size for x in jax.tree.leaves(params))
    n_embed = params["embed"]["embedding"].size
    optimizer = optax.adamw(args.lr, b1=0.9, b2=0.95, weight_decay=0.1)
    opt_state = optimizer.init(params)

    def loss_fn(p, batch):
        logits = model.apply({"params": p}, batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    def step(p, state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    start = time.perf_counter()
    step_fn = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, tokens).compile()
    compile_s = time.perf_counter() - start
    params, opt_state, loss = step_fn(params, opt_state, tokens)  # torch's first (compile) step
    losses, times = [float(loss)], []
    for i in range(WARMUP + args.steps):
        start = time.perf_counter()
        params, opt_state, loss = step_fn(params, opt_state, tokens)
        losses.append(float(jax.block_until_ready(loss)))
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    device = jax.devices()[0]
    return row(args, arch, "jax", n_params, n_embed, times, compile_s, losses,
               f"{device.device_kind} ({device.platform}), jax {jax.__version__}")


# ---- torch ----------------------------------------------------------------------------------
def run_torch(args, arch: str) -> dict[str, Any]:
    """Train the torch peer model of ``arch`` (``benchmarks/peers/torch_lm.py``)."""
    import torch
    import torch.nn.functional as F

    here = os.path.dirname(os.path.abspath(__file__))
    # benchmarks/kernels.py would shadow the `kernels` package that transformers (which fla
    # imports) looks for: take this folder off the path, put peers/ on it.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.path.insert(0, os.path.join(here, "peers"))
    from torch_lm import TorchLM

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    opts = mixer_options(args.d_model, args.seq_len)
    model = TorchLM(layer_mixers(arch, args.layers), opts, args.d_model, args.vocab, args.mlp)
    model = model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.embed.weight.numel()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=cuda
    )
    forward = torch.compile(model) if args.torch_compile else model
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), device=dev)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16):
            logits = forward(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # synchronises

    start = time.perf_counter()
    losses = [step()]
    compile_s = time.perf_counter() - start
    times = []
    for i in range(WARMUP + args.steps):
        start = time.perf_counter()
        losses.append(step())
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    return row(args, arch, "torch", n_params, n_embed, times, compile_s, losses,
               f"{name}, torch {torch.__version__}" + (" compiled" if args.torch_compile else ""))


# ---- rows -----------------------------------------------------------------------------------
def row(args, arch, side, n_params, n_embed, times, compile_s, losses, device) -> dict[str, Any]:
    """The result of one (arch, side): tokens/s from the median step, MFU where the peak is
    known."""
    step_s = statistics.median(times)
    tokens_per_s = args.batch * args.seq_len / step_s
    flops = flops_per_token(args, arch, n_params - n_embed)
    peak = peak_flops(device, args.peak_tflops)
    return {
        "arch": arch,
        "side": side,
        "impl": ",".join(f"{k}={v}" for k, v in args.jax_impl.items()) if side == "jax" else "",
        "params": n_params,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops / peak if peak else None,
        "step_ms": step_s * 1e3,
        "compile_s": compile_s,
        "flops_per_token": flops,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "device": device,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: one line per row, the jax rows with their tokens/s over torch's."""
    torch_tps = {r["arch"]: r["tokens_per_s"] for r in rows if r.get("side") == "torch"
                 and "tokens_per_s" in r}
    lines = [
        "| arch | side | params | tokens/s | MFU | step ms | compile s | jax/torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['side']} | failed: {r['error'][:120]} |||||||")
            continue
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        side = f"{r['side']} ({r['impl']})" if r.get("impl") else r["side"]
        ratio = "-"
        if r["side"] == "jax" and r["arch"] in torch_tps:
            ratio = f"{r['tokens_per_s'] / torch_tps[r['arch']]:.2f}x"
        lines.append(
            f"| {r['arch']} | {side} | {r['params'] / 1e6:.1f}M | {r['tokens_per_s']:,.0f} "
            f"| {mfu} | {r['step_ms']:.1f} | {r['compile_s']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def run_row(args, arch: str, side: str) -> dict[str, Any]:
    return run_jax(args, arch) if side == "jax" else run_torch(args, arch)


def child_row(argv: list[str], arch: str, side: str, timeout: float) -> dict[str, Any]:
    """Run one row in a child process, echoing its output; the row from its ``ROW`` line."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--row", f"{arch}:{side}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        sys.stdout.write(out)
        return {"arch": arch, "side": side, "error": f"timed out after {timeout:.0f} s"}
    found = [line for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    sys.stdout.write("".join(f"{line}\n" for line in proc.stdout.splitlines() if line not in found))
    if found:
        return json.loads(found[-1][4:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"arch": arch, "side": side, "error": f"exit {proc.returncode}: {tail}"}


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=50277)
    parser.add_argument("--mlp", choices=("glu", "none"), default="glu")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--budget", type=float, default=520.0, help="seconds for all rows")
    parser.add_argument("--row-timeout", type=float, default=300.0, help="seconds for one row")
    parser.add_argument("--in-process", action="store_true", help="no child processes")
    parser.add_argument("--jax-impl", default="", help="MIXER=IMPL,...: seqzoo's impl per mixer")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # arch:side, in a child
    args = parser.parse_args(argv)
    pairs = [p.split("=", 1) for p in args.jax_impl.split(",") if p]
    names = sorted(mixer_options(8, 8))
    if any(len(p) != 2 or p[0] not in names for p in pairs):
        parser.error(f"--jax-impl takes MIXER=IMPL pairs, MIXER among {names}, "
                     f"got {args.jax_impl!r}")
    args.jax_impl = dict(pairs)
    args.archs = [a for a in args.archs.split(",") if a]
    args.sides = [s for s in args.sides.split(",") if s]
    for a in args.archs:
        layer_mixers(a, 1)
    bad = sorted(set(args.sides) - set(SIDES))
    if bad:
        parser.error(f"--sides must be among {SIDES}, got {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.row:  # a child: one row, as a JSON line
        arch, side = args.row.split(":")
        print("ROW " + json.dumps(run_row(args, arch, side)), flush=True)
        return 0
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} layers {args.layers}, d_model {args.d_model}, "
          f"length {args.seq_len}, batch {args.batch}, vocab {args.vocab}, mlp {args.mlp}, "
          f"{args.steps} timed steps", flush=True)
    deadline = time.monotonic() + args.budget
    rows = []
    for arch in args.archs:
        for side in args.sides:
            left = deadline - time.monotonic()
            if left < 5:
                r = {"arch": arch, "side": side, "error": "no time left in --budget"}
            elif args.in_process:
                try:
                    r = run_row(args, arch, side)
                except Exception as e:  # noqa: BLE001 - a failed row is printed, the rest run
                    r = {"arch": arch, "side": side, "error": f"{type(e).__name__}: {e}"}
            else:
                r = child_row(argv, arch, side, min(left, args.row_timeout))
            rows.append(r)
            print(json.dumps(r), flush=True)
            print(markdown([r]).splitlines()[-1], flush=True)
    print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
