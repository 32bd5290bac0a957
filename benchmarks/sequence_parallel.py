"""Sequence parallelism: communication per layer, weak scaling, ring vs all-gather attention,
Ulysses vs ring and ZeCO vs LASP-2.

    python benchmarks/sequence_parallel.py [--tokens 256] [--batch 2] [--d-model 64]
        [--layers linear_attention mamba2 ...] [--tables 1 2 3 4]

With one accelerator (or none) give JAX 8 fake CPU devices first:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python benchmarks/sequence_parallel.py

Four markdown tables (the numbers in benchmarks/RESULTS.md come from here):

1. Communication per layer on all devices, P of them: each mixer's forward (and forward +
   backward) inside ``shard_map`` under ``sequence_parallel``, the bytes each device receives
   read off the compiled HLO's collectives, against the bytes the algorithm predicts, at
   ``--tokens`` and 4x as many tokens per device (the state-passing layers' bytes do not grow
   with the length; ring attention's K and V do).
2. Weak scaling: forward + backward time of each layer with ``--tokens`` tokens per device on
   1, 2, 4, 8 devices (1 = the plain layer, no sharding).
3. Causal attention on P devices: the ring (P - 1 ``ppermute`` steps, one block of K/V in memory)
   against all-gather (the whole K/V at once): bytes, compiled temporary memory, time.
4. The exchange schemes of ``sequence_parallel`` on 2, 4, 8 devices with ``--tokens`` tokens per
   device: causal attention (8 heads) by the ring or by DeepSpeed-Ulysses (``attention=``), and
   linear attention, Mamba-2 (SSD) and the delta rule (DeltaNet, Gated DeltaNet: matrix
   transitions) carrying their states by LASP-2's all-gather or ZeCO's all-scan (``carry=``),
   those of them in ``--layers``: bytes (predicted, the static HLO text, and with each
   ``while`` body counted its trip count times: the all-scan's permutes sit in a loop),
   compiled temporary memory of forward + backward, and its time.

Bytes received per device: an all-gather's result (every result of a combined async one) minus
its own part, a collective-permute's result, ``2 (g - 1) / g`` of an all-reduce (ring),
``g - 1`` times a reduce-scatter's result.
Times are medians of ``--repeats`` jitted calls after a warm-up; on fake CPU devices they time
one CPU doing the work of all devices, so only the bytes are meaningful there.
"""

from __future__ import annotations

import argparse
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from kernel_harness import median_ms  # benchmarks/ is on sys.path when a script runs

import seqzoo
from seqzoo.layers.ssm import delta_head_dims
from seqzoo.ops.attention.sequence_parallel import sharded_attention
from seqzoo.ops.attention.ulysses import communication_bytes
from seqzoo.parallel import sequence_parallel, shard_map

F32 = 4
HEADS, STATE, HEADDIM, CHUNK = 4, 16, 16, 64
LAYERS = {  # registry name: options (d_model from --d-model)
    "attention": {"num_heads": HEADS},
    "linear_attention": {"num_heads": HEADS, "chunk_size": CHUNK},
    "gla": {"num_heads": HEADS, "chunk_size": CHUNK},
    "mamba": {"d_state": STATE},
    "mamba2": {"d_state": STATE, "headdim": HEADDIM, "chunk_size": CHUNK},
    "hydra": {"d_state": STATE, "headdim": HEADDIM, "chunk_size": CHUNK},
    "delta_net": {"num_heads": HEADS, "chunk_size": CHUNK},  # dk = dv = d_model / HEADS
    "gated_deltanet": {"num_heads": HEADS, "head_dim": HEADDIM, "chunk_size": CHUNK},  # dv = 2 dk
}
COLLECTIVES = ("all-gather", "collective-permute", "all-reduce", "reduce-scatter", "all-to-all")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_INSTRUCTION = re.compile(
    r"=\s*(\(.*?\)|\S+\[[^\]]*\]\S*)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\("
)
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_GROUP = re.compile(r"replica_groups=\{\{([\d,]+)\}")
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLEE = re.compile(
    r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)"
)
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


# ---- bytes from the compiled HLO -----------------------------------------------------------------
def _array_bytes(text: str) -> list[int]:
    return [
        DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
        for dtype, dims in _ARRAY.findall(text)
    ]


def _instruction_bytes(line: str, devices: int) -> int:
    """Bytes one device receives in the collective on HLO line ``line`` (0 for other lines)."""
    match = _INSTRUCTION.search(line)
    if not match:
        return 0
    result, op, start = match.groups()
    sizes = _array_bytes(result)
    if start and op == "all-gather":  # (operands..., results...): XLA may combine gathers
        size = sum(sizes[len(sizes) // 2:])
    elif start:  # a permute's (operand, result, contexts): the result is the largest
        size = max(sizes)
    else:
        size = sum(sizes)
    group = _GROUP.search(line)
    g = len(group.group(1).split(",")) if group else devices
    return {
        "all-gather": size * (g - 1) // g,
        "collective-permute": size,
        "all-reduce": 2 * size * (g - 1) // g,
        "reduce-scatter": size * (g - 1),
        "all-to-all": size * (g - 1) // g,
    }[op]


def received_bytes(hlo: str, devices: int, loops: bool = True) -> int:
    """Bytes one device receives in the collectives of compiled HLO text (see module doc).

    With ``loops``, a ``while`` body's collectives count its known trip count times (XLA's
    ``known_trip_count``; once where unknown) and every computation counts as often as it is
    called; without, each collective instruction in the module counts once (the static text).
    """
    if not loops:
        return sum(_instruction_bytes(line, devices) for line in hlo.splitlines())
    own: dict[str, int] = {}  # computation: bytes of its own collectives
    calls: dict[str, list[tuple[str, int]]] = {}  # computation: (callee, times)
    entry = name = ""
    for line in hlo.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            name = header.group(2)
            entry = name if header.group(1) else entry
            own[name], calls[name] = 0, []
            continue
        if not name:
            continue
        own[name] += _instruction_bytes(line, devices)
        trips = _TRIPS.search(line)
        for key, callee in _CALLEE.findall(line):
            times = int(trips.group(1)) if key == "body" and trips else 1
            calls[name].append((callee, times))

    def total(computation: str) -> int:
        return own.get(computation, 0) + sum(
            times * total(callee) for callee, times in calls.get(computation, ())
        )

    return total(entry)


# ---- what the algorithms send (seqzoo.parallel's module docstrings) -----------------------------
def carried_bytes(state: tuple[int, ...], decay: int, p: int, carry: str = "all_gather",
                  matrix: bool = False) -> int:
    """Bytes one device receives carrying a state of shape ``state`` (and ``decay`` elements of
    total decay, or of the transition matrices) across ``p`` shards: LASP-2's ``all_gather`` of
    both, or ZeCO's ``all_scan``, ``P + K - 2`` permutes of ``1 / K`` of each row's state
    (``K = min(8, m)`` chunks of ``ceil(m / K)`` of its ``m`` elements, or with ``matrix`` of
    its last axis' ``m`` columns; the decay stays home, and the final state's ``psum`` is
    dropped where unused)."""
    elements = int(np.prod(state))
    if carry == "all_gather":
        return (elements + decay) * (p - 1) * F32
    m = state[-1] if matrix else elements // state[0]
    k = min(8, m)
    return (p + k - 2) * (elements // m) * -(-m // k) * F32


def predicted_bytes(name: str, mixer, b: int, length: int, p: int,
                    carry: str = "all_gather") -> int:
    """Forward bytes one device receives for mixer ``name`` with local length ``length``."""
    d = mixer.d_model
    if name == "attention":  # per ring step: k, v (f32) + positions (int32) + validity (bool)
        kv = 2 * b * length * d * F32 + b * length * (4 + 1)
        # the position offsets (an all_gather of (b,) int32) are constants here: the mask is
        # all valid, and XLA folds them
        return (p - 1) * kv
    if name in ("linear_attention", "gla"):  # state (b, h, dk, dv) and decay (b, h, 1 or dk)
        dk = dv = d // HEADS
        dv += int(mixer.normalize)  # the normaliser rides along as a value column
        decay = dk if mixer.decay == "gla" else 1  # per key dimension, or per head
        return carried_bytes((b, HEADS, dk, dv), b * HEADS * decay, p, carry)
    if name in ("delta_net", "gated_deltanet"):  # conv halo of q, k, v; transition and state
        dk, dv = delta_head_dims(d, mixer.num_heads, mixer.head_dim, mixer.expand_k,
                                 mixer.expand_v)
        h = mixer.num_heads
        halo = (mixer.conv_size - 1) * b * F32 * h * (2 * dk + dv)
        # transition P_i: (b, h, dk, dk) on state F_i: (b, h, dk, dv)
        return halo + carried_bytes((b, h, dk, dv), b * h * dk * dk, p, carry, matrix=True)
    inner = int(mixer.expand * d)
    halo = (mixer.d_conv - 1) * b * F32  # conv taps reaching into the neighbours, per channel
    if name == "mamba":  # decay and state, (b, E, N) each
        return halo * inner + carried_bytes((b, inner, STATE), b * inner * STATE, p, carry)
    heads = inner // HEADDIM
    state = carried_bytes((b, heads, HEADDIM, STATE), b * heads, p, carry)
    if name == "mamba2":
        return halo * (inner + 2 * STATE) + state
    channels = inner + 4 * STATE  # hydra: both directions' B, C; the halo on both sides
    return halo * channels + 2 * state + 2 * b * STATE * F32  # + the neighbours' C rows


# ---- running the layers --------------------------------------------------------------------------
def sequence_mesh(p: int) -> Mesh:
    return Mesh(np.array(jax.devices()[:p]), ("seq",))


def layer_functions(name: str, d_model: int, p: int, attention: str = "ring",
                    carry: str = "all_gather", **options):
    """``(mixer, forward, forward + backward)`` jitted over ``p`` sequence shards (plain for 1),
    exchanging by the ``attention`` and ``carry`` schemes of ``sequence_parallel``; ``options``
    override the layer's ``LAYERS`` options."""
    mixer = seqzoo.get_mixer(name, d_model=d_model, **{**LAYERS[name], **options})

    def local_forward(params, x):
        with sequence_parallel("seq" if p > 1 else None, attention=attention, carry=carry):
            return mixer.apply(params, x)

    def loss(params, x):  # this shard's part of sum(y^2); gradients stay per-device partials
        return jnp.sum(local_forward(params, x) ** 2)

    forward, grad = local_forward, jax.grad(loss, argnums=(0, 1))
    if p > 1:
        mesh, x_spec = sequence_mesh(p), P(None, "seq")
        forward = shard_map(forward, mesh, in_specs=(P(), x_spec), out_specs=x_spec)
        grad = shard_map(grad, mesh, in_specs=(P(), x_spec), out_specs=(P(), x_spec))
    return mixer, jax.jit(forward), jax.jit(grad)


def inputs(mixer, batch: int, length: int):
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, length, mixer.d_model))
    return mixer.init(jax.random.PRNGKey(1), x[:, :CHUNK]), x


def communication_table(args, p: int) -> list[str]:
    rows = ["| layer | tokens/device | predicted fwd bytes | measured fwd bytes | measured fwd+bwd "
            "bytes |", "|---|---|---|---|---|"]
    for name in args.layers:
        for tokens in (args.tokens, 4 * args.tokens):
            mixer, forward, grad = layer_functions(name, args.d_model, p)
            params, x = inputs(mixer, args.batch, tokens * p)
            fwd = received_bytes(forward.lower(params, x).compile().as_text(), p)
            both = received_bytes(grad.lower(params, x).compile().as_text(), p)
            want = predicted_bytes(name, mixer, args.batch, tokens, p)
            rows.append(f"| {name} | {tokens} | {want:,} | {fwd:,} | {both:,} |")
    return rows


def scaling_table(args) -> list[str]:
    """Per layer and device count: ms per forward + backward, and the weak-scaling efficiency
    ``t(1) / t(P)`` (1 = the P-times longer sequence costs no more time on P devices)."""
    counts = [p for p in (1, 2, 4, 8) if p <= jax.device_count()]
    rows = ["| layer | " + " | ".join(f"{p} dev ms" for p in counts) + " | " +
            " | ".join(f"eff. {p}" for p in counts[1:]) + " |",
            "|---|" + "---|" * (2 * len(counts) - 1)]
    for name in args.layers:
        times = []
        for p in counts:
            mixer, _, grad = layer_functions(name, args.d_model, p)
            params, x = inputs(mixer, args.batch, args.tokens * p)
            times.append(median_ms(partial(grad, params, x), repeats=args.repeats, calls=1))
        cells = [f"{ms:.2f}" for ms in times] + [f"{times[0] / ms:.2f}" for ms in times[1:]]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def attention_table(args, p: int) -> list[str]:
    rows = ["| schedule | tokens/device | fwd bytes | fwd temp memory | fwd+bwd ms |",
            "|---|---|---|---|---|"]
    spec = P(None, "seq")
    for schedule in ("ring", "all_gather"):
        def forward(q, k, v, schedule=schedule):
            return sharded_attention(q, k, v, axis="seq", causal=True, schedule=schedule)

        def loss(q, k, v, forward=forward):
            return jnp.sum(forward(q, k, v) ** 2)

        mesh = sequence_mesh(p)
        fwd = jax.jit(shard_map(forward, mesh, in_specs=(spec,) * 3, out_specs=spec))
        grad = jax.jit(shard_map(jax.grad(loss, argnums=(0, 1, 2)), mesh, in_specs=(spec,) * 3,
                                 out_specs=(spec,) * 3))
        for tokens in (args.tokens, 4 * args.tokens):
            shape = (args.batch, tokens * p, HEADS, args.d_model // HEADS)
            q, k, v = (jax.random.normal(jax.random.PRNGKey(i), shape) for i in range(3))
            compiled = fwd.lower(q, k, v).compile()
            sent = received_bytes(compiled.as_text(), p)
            temp = compiled.memory_analysis().temp_size_in_bytes
            ms = median_ms(partial(grad, q, k, v), repeats=args.repeats, calls=1)
            rows.append(f"| {schedule} | {tokens} | {sent:,} | {temp:,} | {ms:.1f} |")
    return rows


SCHEMES = {  # table 4: layer: (sequence_parallel keyword, its schemes, extra layer options)
    "attention": ("attention", ("ring", "ulysses"), {"num_heads": 8}),  # Ulysses: P divides H
    "linear_attention": ("carry", ("all_gather", "all_scan"), {}),
    "mamba2": ("carry", ("all_gather", "all_scan"), {}),
    "delta_net": ("carry", ("all_gather", "all_scan"), {}),
    "gated_deltanet": ("carry", ("all_gather", "all_scan"), {}),
}


def scheme_prediction(name: str, mixer, scheme: str, b: int, length: int, p: int) -> int:
    """Forward bytes one device receives under ``scheme`` (table 4)."""
    if scheme == "ulysses":  # all-to-all operands, (P - 1) / P of each crosses; no mask here
        dh = mixer.d_model // mixer.num_heads
        sent = communication_bytes(b, length, mixer.num_heads, mixer.num_heads, dh, np.float32,
                                   p, mask=False)
        return sent * (p - 1) // p
    return predicted_bytes(name, mixer, b, length, p, **({} if scheme == "ring" else
                                                          {"carry": scheme}))


def scheme_table(args) -> list[str]:
    """Ulysses vs ring attention and ZeCO's all-scan vs LASP-2's all-gather carry, on 2, 4, 8
    devices with ``--tokens`` per device: bytes, compiled temporary memory, time."""
    rows = ["| layer | scheme | devices | predicted fwd bytes | static HLO fwd bytes | fwd bytes "
            "(loops x trips) | fwd+bwd bytes (loops x trips) | fwd+bwd temp memory | "
            "fwd+bwd ms |", "|---|---|---|---|---|---|---|---|---|"]
    for name, (keyword, schemes, options) in SCHEMES.items():
        if name not in args.layers:
            continue
        for scheme in schemes:
            for p in (2, 4, 8):
                if p > jax.device_count():
                    continue
                mixer, forward, grad = layer_functions(name, args.d_model, p,
                                                       **{keyword: scheme}, **options)
                params, x = inputs(mixer, args.batch, args.tokens * p)
                fwd_text = forward.lower(params, x).compile().as_text()
                compiled = grad.lower(params, x).compile()
                want = scheme_prediction(name, mixer, scheme, args.batch, args.tokens, p)
                cells = (want, received_bytes(fwd_text, p, loops=False),
                         received_bytes(fwd_text, p), received_bytes(compiled.as_text(), p),
                         compiled.memory_analysis().temp_size_in_bytes)
                ms = median_ms(partial(grad, params, x), repeats=args.repeats, calls=1)
                rows.append(f"| {name} | {scheme} | {p} | " +
                            " | ".join(f"{c:,}" for c in cells) + f" | {ms:.1f} |")
            print("\n".join(rows[-3:]), flush=True)  # progress: a slow run still shows rows
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens per device")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS),
                        help="layers of tables 1, 2 and 4 (default all)")
    parser.add_argument("--tables", nargs="+", type=int, choices=(1, 2, 3, 4),
                        default=(1, 2, 3, 4))
    args = parser.parse_args()
    p = jax.device_count()
    print(f"{p} x {jax.devices()[0].device_kind}, jax {jax.__version__}, batch {args.batch}, "
          f"d_model {args.d_model}\n")
    tables = (  # each printed when done: a later one may fail or run out of time
        (f"Communication per layer, {p} sequence shards", lambda: communication_table(args, p)),
        (f"Weak scaling, {args.tokens} tokens per device, forward + backward",
         lambda: scaling_table(args)),
        (f"Causal attention over {p} shards: ring vs all-gather",
         lambda: attention_table(args, p)),
        (f"Ulysses vs ring, ZeCO all-scan vs LASP-2 all-gather, {args.tokens} tokens per "
         "device", lambda: scheme_table(args)),
    )
    for number, (title, table) in enumerate(tables, 1):
        if number not in args.tables:
            continue
        print(f"### {title}\n")
        print("\n".join(table()) + "\n", flush=True)


if __name__ == "__main__":
    main()
