"""The selective scan's Pallas GPU backend: Mamba-1's scan, forward and backward, state on chip.

Per channel d (a block of ``width`` channels per program) and state index n, in float32:

    dt_t = softplus(delta_t + delta_bias)          (softplus optional)
    x_t  = keep_t exp(dt_t A) x_{t-1} + dt_t u_t B_t      x: (width, n), in registers
    y_t  = (C_t . x_t + D u_t) silu(z_t)                   (gate optional)

with keep_t = 0 where a packed segment starts (else 1). Discretisation, state, readout, skip
and gate are fused: the forward pass reads u, delta, z, B, C once and writes y, never the
(batch, length, d, n) states.

Backward (``jax.custom_vjp``): the forward pass, when differentiated, also saves the state
entering every chunk of ``chunk`` steps (checkpoints, (batch, length / chunk, d, n) float32).
The backward pass walks the chunks from the end; per chunk it recomputes the chunk's states
from its checkpoint (in registers), then runs the adjoint recurrence backwards through them:

    lam_t = mu_t + dy_t C_t,   mu_{t-1} = keep_t exp(dt_t A) lam_t,   dy_t = g_t silu(z_t)
    du_t = D dy_t + dt_t (lam_t . B_t),   ddt_t = (lam_t exp(dt_t A) keep_t x_{t-1}) . A
                                                   + u_t (lam_t . B_t)
    dA += dt_t lam_t exp(dt_t A) keep_t x_{t-1},   dD += dy_t u_t,   d delta_bias += d delta_t
    dB_t = sum_d lam_t dt_t u_t,   dC_t = sum_d dy_t x_t

dA, dD, d delta_bias accumulate per program; dB and dC are written per channel block
((batch, length, blocks, n) float32) and summed by the wrapper.

Tolerance: float32 throughout (the XLA path also computes in float32); the kernel's sequential
order differs from the associative scan's by rounding only: relative 1e-5 on outputs and
gradients in the tests (bf16 inputs: outputs rounded to bf16, 1e-2).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from seqzoo.kernels import approx_exp
from seqzoo.kernels.launch import pallas_call
from seqzoo.kernels.scan_loop import (
    ChannelBlock,
    Rows,
    chunked_loop,
    load,
    next_power_of_2,
    select_row,
    split_rows,
    store,
)
from seqzoo.kernels.softplus import softplus

Array = jax.Array
_F32 = jnp.float32
# The forward pass's launch (steps per chunk, channels and warps per program), and the launches
# when differentiating: the checkpoint interval (the backward holds a chunk of states in
# registers and spills them with 16), the backward's channels and warps per program, and those of
# the forward that saves the checkpoints (the backward's until timed apart): each the fastest of
# a sweep on an H100 (benchmarks/RESULTS.md, "Linear recurrence and selective scan").
CHUNK = 16
WIDTH = 32
NUM_WARPS = 4
CHECKPOINT = 8
GRAD_WIDTH = 8
GRAD_NUM_WARPS = 1
SAVE_WIDTH = GRAD_WIDTH
SAVE_NUM_WARPS = GRAD_NUM_WARPS


@dataclasses.dataclass(frozen=True)
class Config:
    """Static shapes, options and tuning of one kernel call (a ``custom_vjp`` nondiff arg)."""

    length: int
    channels: int  # d
    state: int  # n, a power of two
    group_size: int  # channels per B/C group (d when B, C are shared)
    softplus: bool
    gate: bool
    resets: bool
    chunk: int
    checkpoint: int
    width: int
    num_warps: int
    grad_width: int
    grad_num_warps: int
    save_width: int
    save_num_warps: int
    approx_exp: bool

    def saving(self) -> Config:
        """The launch of the forward pass that saves checkpoints (when differentiated)."""
        return dataclasses.replace(self, chunk=self.checkpoint, width=self.save_width,
                                   num_warps=self.save_num_warps)

    def backward(self) -> Config:
        """The launch of the backward pass."""
        return dataclasses.replace(self, chunk=self.checkpoint, width=self.grad_width,
                                   num_warps=self.grad_num_warps)

    @property
    def blocks(self) -> int:
        return -(-self.channels // self.width)

    @property
    def chunks(self) -> int:
        return -(-self.length // self.chunk)

    @property
    def ragged(self) -> bool:
        return self.length % self.chunk != 0

    @property
    def bc_parts(self) -> int:
        """The backward's dB, dC terms are kept a chunk long as (chunk, parts, n), each step's
        summed over width / parts channels, and over the parts once at the chunk's end: every
        channel apart (no per-step sum: shuffles and shared memory) where that holds at most
        32 values a thread, else one part per warp (a step's sums within warps)."""
        per_thread = self.chunk * self.width * self.state // (32 * self.num_warps)
        return self.width if per_thread <= 32 else min(self.num_warps, self.width)


class _Program:
    """One program's block of channels and its group's B, C; a chunk's tiles and rows."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.block = ChannelBlock.of_program(cfg.channels, cfg.width)
        self.group = self.block.start // cfg.group_size  # one group: width divides group_size

    def rows(self, start) -> Rows:
        return Rows(start, self.cfg.chunk, self.cfg.length, masked=self.cfg.ragged)

    def channels(self, ref, trailing=()):
        """A per-channel parameter (d, ...) of this block, in f32."""
        return self.block.load(ref, (), trailing=trailing).astype(_F32)

    def state(self, ref, lead=()):
        return self.block.load(ref, (self.block.batch, *lead), trailing=(self.cfg.state,))

    def store_state(self, ref, value, lead=()):
        self.block.store(ref, (self.block.batch, *lead), value)

    def load_chunk(self, start, seq_refs: dict, B, C, keep):
        """The chunk's tiles from row ``start``: {name: (chunk, width)} for the (batch, length,
        d) refs, B and C (chunk, n) of this group, keep (chunk,) or None: one load per array."""
        rows = self.rows(start)
        b = self.block.batch
        tiles = {name: self.block.load(r, (b,), rows) for name, r in seq_refs.items()}
        n = self.cfg.state
        for name, r in (("B", B), ("C", C)):
            tiles[name] = load(r, (b, rows.index, self.group, slice(None)), rows.mask((n,)))
        if keep is not None:
            tiles["keep"] = load(keep, (b, rows.index), rows.mask(()), fill=1.0)
        return tiles

    def discretize(self, start, tiles, bias, grad: bool = False):
        """dt = softplus(delta + bias) and dt u, (chunk, width), on whole tiles (neither depends
        on the state); dt is 0 on steps past the end, which then leave the state as it is.
        ``grad``: also d dt / d delta (softplus' derivative, or 1)."""
        dt, slope = tiles["delta"].astype(_F32) + bias[None], 1.0
        if self.cfg.softplus:
            dt, slope = softplus(dt, self.cfg.approx_exp, grad=True)
        if self.cfg.ragged:
            inside = start + jnp.arange(self.cfg.chunk) < self.cfg.length
            dt = jnp.where(inside[:, None], dt, 0.0)
        discrete = dt, dt * tiles["u"].astype(_F32)
        return (*discrete, slope) if grad else discrete

    @staticmethod
    def split(tiles) -> dict:
        """Rows in f32: {name: list over the chunk}; keep's rows are (1,)."""
        rows = {k: split_rows(v.astype(_F32)) for k, v in tiles.items() if k != "keep"}
        if "keep" in tiles:
            rows["keep"] = split_rows(tiles["keep"].astype(_F32)[:, None])
        return rows

    def decay(self, rows, j, A2):
        """keep exp(dt A) of step j, (width, n), as exp2(dt A log2(e)): libdevice's exp2f, or
        with ``approx_exp`` one ``ex2.approx.ftz`` (``seqzoo.kernels.approx_exp``)."""
        decay = approx_exp.exp2(rows["dt"][j][:, None] * A2, self.cfg.approx_exp)
        if "keep" in rows:
            decay = decay * rows["keep"][j][:, None]
        return decay


def _forward_kernel(*refs, cfg: Config, save: bool):
    refs = list(refs)
    u, delta, A, B, C, D, bias, x0 = (refs.pop(0) for _ in range(8))
    z = refs.pop(0) if cfg.gate else None
    keep = refs.pop(0) if cfg.resets else None
    out, last = refs.pop(0), refs.pop(0)
    ckpt = refs.pop(0) if save else None
    prog = _Program(cfg)
    A2 = prog.channels(A, (cfg.state,)) * approx_exp.LOG2E
    D_, bias_ = prog.channels(D), prog.channels(bias)
    seq_refs = {"u": u, "delta": delta} | ({"z": z} if cfg.gate else {})

    def run(start, tiles, x):
        if save:
            prog.store_state(ckpt, x, (start // cfg.chunk,))
        dt, dtu = prog.discretize(start, tiles, bias_)
        rows = prog.split({k: v for k, v in tiles.items() if k in ("B", "C", "keep")}
                          | {"dt": dt, "dtu": dtu})
        cx = jnp.zeros_like(dt)  # C_t . x_t, (chunk, width), a row a step
        for j in range(cfg.chunk):
            x = prog.decay(rows, j, A2) * x + rows["dtu"][j][:, None] * rows["B"][j][None, :]
            cx = select_row(cx, j, jnp.sum(x * rows["C"][j][None, :], axis=1))
        y = cx + D_[None] * tiles["u"].astype(_F32)
        if cfg.gate:
            y = y * jax.nn.silu(tiles["z"].astype(_F32))
        prog.block.store(out, (prog.block.batch,), y, prog.rows(start))
        return x

    x = chunked_loop(cfg.length, cfg.chunk,
                     lambda start: prog.load_chunk(start, seq_refs, B, C, keep), run,
                     prog.state(x0).astype(_F32))
    prog.store_state(last, x)


def _backward_kernel(*refs, cfg: Config):
    refs = list(refs)
    u, delta, A, B, C, D, bias, ckpt, g, g_last = (refs.pop(0) for _ in range(10))
    z = refs.pop(0) if cfg.gate else None
    keep = refs.pop(0) if cfg.resets else None
    du, ddelta = refs.pop(0), refs.pop(0)
    dz = refs.pop(0) if cfg.gate else None
    dB, dC, dA, dD, dbias, dx0 = refs
    prog = _Program(cfg)
    blk = prog.block
    A_ = prog.channels(A, (cfg.state,))
    A2, D_, bias_ = A_ * approx_exp.LOG2E, prog.channels(D), prog.channels(bias)
    seq_refs = {"u": u, "delta": delta, "g": g} | ({"z": z} if cfg.gate else {})

    def load_chunk(start):
        return (prog.load_chunk(start, seq_refs, B, C, keep),
                prog.state(ckpt, (start // cfg.chunk,)))

    def run(start, loaded, carry):
        tiles, x_in = loaded
        mu, dA_acc, dD_acc, dbias_acc = carry
        dt, dtu, slope = prog.discretize(start, tiles, bias_, grad=True)
        u_, g_ = tiles["u"].astype(_F32), tiles["g"].astype(_F32)
        if cfg.gate:  # out = y silu(z): dy = g silu(z), dz = g y silu'(z)
            z_ = tiles["z"].astype(_F32)
            sig = jax.nn.sigmoid(z_)
            dy = g_ * z_ * sig
        else:
            dy = g_
        rows = prog.split({k: v for k, v in tiles.items() if k in ("B", "C", "keep")}
                          | {"dt": dt, "dtu": dtu, "dy": dy})
        states = [x_in.astype(_F32)]  # x_{t-1} of the chunk's first step, then every x_t
        for j in range(cfg.chunk):  # recompute the chunk's states from its checkpoint
            states.append(prog.decay(rows, j, A2) * states[-1]
                          + rows["dtu"][j][:, None] * rows["B"][j][None, :])
        n, parts = cfg.state, cfg.bc_parts

        def by_part(terms):  # (width, n) -> (parts, n): summed over each part's channels
            return jnp.sum(terms.reshape(parts, -1, n), axis=1)

        grads = {name: jnp.zeros_like(dt) for name in ("cx", "lam_b", "d_dt")}
        grads |= {name: jnp.zeros((cfg.chunk, parts, n), _F32) for name in ("dB", "dC")}
        for j in reversed(range(cfg.chunk)):
            decay = prog.decay(rows, j, A2)
            x_prev, x_j = states[j], states[j + 1]
            b_j, c_j, dy_j = rows["B"][j], rows["C"][j], rows["dy"][j]
            lam = mu + dy_j[:, None] * c_j[None, :]
            d_decay = lam * decay * x_prev  # d(decay x_{t-1}) / d(dt A), per (channel, n)
            step_grads = {
                "cx": jnp.sum(x_j * c_j[None, :], axis=1),  # C . x_t, for dz
                "lam_b": jnp.sum(lam * b_j[None, :], axis=1),
                "d_dt": jnp.sum(d_decay * A_, axis=1),
                "dC": by_part(dy_j[:, None] * x_j),
                "dB": by_part(lam * rows["dtu"][j][:, None])}
            grads = {k: select_row(grads[k], j, v) for k, v in step_grads.items()}
            dA_acc = dA_acc + d_decay * rows["dt"][j][:, None]
            mu = decay * lam
        lam_b = grads["lam_b"]
        d_dt = (grads["d_dt"] + u_ * lam_b) * slope
        if cfg.ragged:
            inside = start + jnp.arange(cfg.chunk) < cfg.length
            d_dt = jnp.where(inside[:, None], d_dt, 0.0)
        rows_ = prog.rows(start)
        blk.store(du, (blk.batch,), D_[None] * dy + dt * lam_b, rows_)
        blk.store(ddelta, (blk.batch,), d_dt, rows_)
        if cfg.gate:
            y = grads["cx"] + D_[None] * u_
            blk.store(dz, (blk.batch,), g_ * y * sig * (1.0 + z_ * (1.0 - sig)), rows_)
        for ref, name in ((dB, "dB"), (dC, "dC")):
            index = (blk.batch, rows_.index, blk.start // cfg.width, slice(None))
            store(ref, index, grads[name].sum(1), rows_.mask((n,)))
        return (mu, dA_acc, dD_acc + jnp.sum(dy * u_, axis=0),
                dbias_acc + jnp.sum(d_dt, axis=0))

    zeros_w = jnp.zeros((cfg.width,), _F32)
    carry = (prog.state(g_last).astype(_F32), jnp.zeros((cfg.width, cfg.state), _F32), zeros_w,
             zeros_w)
    mu, dA_acc, dD_acc, dbias_acc = chunked_loop(cfg.length, cfg.chunk, load_chunk, run, carry,
                                                 reverse=True)
    prog.store_state(dx0, mu)
    prog.store_state(dA, dA_acc)
    blk.store(dD, (blk.batch,), dD_acc)
    blk.store(dbias, (blk.batch,), dbias_acc)


def _launch(kernel, cfg: Config, batch: int, out_specs, *args, **params):
    out_shape = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in out_specs]
    return pallas_call(functools.partial(kernel, cfg=cfg, **params), grid=(cfg.blocks, batch),
                       out_shape=out_shape, num_warps=cfg.num_warps)(*args)


def _forward(cfg: Config, inputs: tuple, save: bool):
    u = inputs[0]
    batch = u.shape[0]
    state = (batch, cfg.channels, cfg.state)
    specs = [(u.shape, u.dtype), (state, _F32)]
    if save:
        specs.append(((batch, cfg.chunks, cfg.channels, cfg.state), _F32))
    return _launch(_forward_kernel, cfg, batch, specs, *_present(inputs), save=save)


def _present(inputs: tuple) -> list:
    return [x for x in inputs if x is not None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg: Config, u, delta, A, B, C, D, bias, x0, z, keep):
    """(out, final state) of the scan from prepared inputs (see ``selective_scan``)."""
    return tuple(_forward(cfg, (u, delta, A, B, C, D, bias, x0, z, keep), save=False))


def _scan_fwd(cfg, u, delta, A, B, C, D, bias, x0, z, keep):
    inputs = (u, delta, A, B, C, D, bias, x0, z, keep)
    out, last, ckpt = _forward(cfg.saving(), inputs, save=True)
    return (out, last), (inputs, ckpt)


def _scan_bwd(cfg, residuals, cotangents):
    cfg = cfg.backward()
    (u, delta, A, B, C, D, bias, x0, z, keep), ckpt = residuals
    g, g_last = cotangents
    batch = u.shape[0]
    seq, state = u.shape, (batch, cfg.channels, cfg.state)
    partial_bc = (batch, cfg.length, cfg.blocks, cfg.state)
    specs = [(seq, u.dtype), (seq, delta.dtype)] + ([(seq, z.dtype)] if cfg.gate else []) + [
        (partial_bc, _F32), (partial_bc, _F32), (state, _F32), (state[:2], _F32),
        (state[:2], _F32), (state, _F32)]
    outs = _launch(_backward_kernel, cfg, batch, specs,
                   *_present((u, delta, A, B, C, D, bias, ckpt, g, g_last.astype(_F32), z, keep)))
    du, ddelta = outs[0], outs[1]
    dz = outs[2] if cfg.gate else None
    dB, dC, dA, dD, dbias, dx0 = outs[2 + cfg.gate:]

    def per_group(part, like):  # (batch, length, blocks, n) -> (batch, length, groups, n)
        groups = like.shape[2]
        return part.reshape(*part.shape[:2], groups, -1, part.shape[-1]).sum(3).astype(
            like.dtype)

    return (du, ddelta, dA.sum(0).astype(A.dtype), per_group(dB, B), per_group(dC, C),
            dD.sum(0).astype(D.dtype), dbias.sum(0).astype(bias.dtype), dx0.astype(x0.dtype),
            dz, None)


_scan.defvjp(_scan_fwd, _scan_bwd)


def _block_width(channels: int, group_size: int, width: int) -> int:
    """Channels per program: a power of two <= width, dividing the group size when B and C
    have groups (so that a program reads one group)."""
    w = min(width, next_power_of_2(channels))
    if group_size != channels:
        w = min(w, group_size & -group_size)  # the largest power of two dividing it
    return w


def selective_scan(u: Array, delta: Array, A: Array, B: Array, C: Array, D: Array | None = None,
                   z: Array | None = None, delta_bias: Array | None = None,
                   delta_softplus: bool = False, initial_state: Array | None = None,
                   resets: Array | None = None, *, chunk: int = CHUNK,
                   width: int = WIDTH, num_warps: int = NUM_WARPS,
                   checkpoint: int = CHECKPOINT, grad_width: int = GRAD_WIDTH,
                   grad_num_warps: int = GRAD_NUM_WARPS, save_width: int = SAVE_WIDTH,
                   save_num_warps: int = SAVE_NUM_WARPS, approx_exp: bool = True
                   ) -> tuple[Array, Array]:
    """Mamba-1's selective scan by the kernel; arguments as ``seqzoo.ops.selective_scan`` (the
    public entry point, ``impl="pallas"``, which validates them), except ``resets``:
    (batch, length) bool, True where the state is zeroed before the step (segment starts).

    chunk, width, num_warps: the forward pass's launch (steps per chunk, a power of two;
    channels and warps per program); when differentiated, the state is saved every
    ``checkpoint`` steps by a forward pass at ``save_width`` channels and ``save_num_warps``
    warps per program, and the backward pass runs at ``grad_width`` and ``grad_num_warps``
    (the checkpoints' layout does not depend on a launch); none changes results beyond
    rounding. approx_exp: the decays by ``seqzoo.kernels.approx_exp.exp2`` (its error bound;
    the default, faster on an H100: benchmarks/RESULTS.md) or libdevice's exp2f.
    Returns (out: (batch, length, d) in u's dtype, final state: (batch, d, n) float32).
    """
    batch, length, d = u.shape
    n = A.shape[1]
    n_pad = next_power_of_2(n)
    if B.ndim == 3:  # shared by all channels: one group
        B, C = B[:, :, None], C[:, :, None]
    group_size = d // B.shape[2]

    def pad_state(x):  # zeros past n: A = 0, B = C = 0 and x0 = 0 keep those states at 0
        return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n_pad - n)])

    # B and C in float32 before the kernels (d / group_size times smaller than u): every
    # thread holds all of a chunk's B and C rows for its states, so 16-bit tiles would be
    # unpacked element by element in every thread (benchmarks/RESULTS.md counts it).
    B, C = (pad_state(x).astype(_F32) for x in (B, C))

    x0 = jnp.zeros((batch, d, n), _F32) if initial_state is None else initial_state
    cfg = Config(
        length=length, channels=d, state=n_pad, group_size=group_size, softplus=delta_softplus,
        gate=z is not None, resets=resets is not None, chunk=chunk, checkpoint=checkpoint,
        width=_block_width(d, group_size, width), num_warps=num_warps,
        grad_width=_block_width(d, group_size, grad_width), grad_num_warps=grad_num_warps,
        save_width=_block_width(d, group_size, save_width), save_num_warps=save_num_warps,
        approx_exp=approx_exp,
    )
    out, last = _scan(
        cfg, u, delta, pad_state(A), B, C,
        jnp.zeros((d,), _F32) if D is None else D,
        jnp.zeros((d,), _F32) if delta_bias is None else delta_bias,
        pad_state(x0), z,
        None if resets is None else jnp.where(resets, 0.0, 1.0).astype(_F32),
    )
    return out, last[..., :n]

