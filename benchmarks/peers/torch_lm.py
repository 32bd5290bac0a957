"""PyTorch twins of seqzoo's ``SequenceModel`` language models, built from the peers' layers, for
``benchmarks/train_throughput.py``.

    h_0 = embed(tokens)
    h   = h + mixer(rms_norm(h))              mixer: SDPA attention | mamba_ssm Mamba2 | fla GLA
    h   = h + W_down(silu(W_gate h') * W_up h'),  h' = rms_norm(h)     (left out with mlp="none")
    logits = W_head rms_norm(h_N) + b_head

The same shapes and parameter counts as seqzoo's ``SequenceModel(head="lm", norm="rms")``:
RMSNorm eps 1e-5 with a scale, SwiGLU of width ``int(2 * int(4 d) / 3)`` without biases, an lm
head with a bias, no weight tying. The same initialisation as seqzoo's (flax's defaults), set by
``seqzoo_init`` on every weight this file builds (not on the mamba_ssm and fla layers, which keep
their own, as seqzoo's twins of them do):

    embedding          normal, std 1 / sqrt(d_model)        (torch's nn.Embedding: std 1)
    linear weights     lecun normal: normal truncated at 2 std, std 1 / sqrt(fan_in)
                       (torch's nn.Linear: uniform +-1 / sqrt(fan_in), std 1 / sqrt(3 fan_in))
    biases             0                                    (torch: uniform +-1 / sqrt(fan_in))
    RMSNorm scales     1

torch's own initialisation (a residual stream that starts as the unit-variance embedding) and
flax's (an embedding 1 / sqrt(d) as small) memorise a fixed batch at very different speeds, so the
twins' losses could not be compared before; ``TorchLM(init="torch")`` keeps torch's for checks.
Mixers are given by seqzoo's registry names and options and mapped to the peers' arguments by
``peer_mixer``:

    attention  q, k, v, o projections without bias, RoPE (half-split, theta 10000), causal
               ``F.scaled_dot_product_attention`` (flash attention on a GPU)
    mamba2     ``mamba_ssm.modules.mamba2.Mamba2`` (Triton SSD ``mamba_chunk_scan_combined``;
               ``use_mem_eff_path=False`` since causal_conv1d's CUDA extension is absent)
    gla        ``fla.layers.gla.GatedLinearAttention`` (mode "chunk", fla 0.6.0)

mamba_ssm and fla are imported only when a model uses them (they need triton; the peer site is
built by ``shared/anchors/make_peer_site.sh`` and ``benchmarks/peers/extend_peer_site.sh``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_width(d_model: int, ratio: float = 4.0) -> int:
    """seqzoo's ``mlp_width(d_model, "glu", ratio)``: two thirds of ``int(ratio * d_model)``."""
    return int(2 * int(ratio * d_model) / 3)


class SwiGLU(nn.Module):
    """``W_down (silu(W_gate x) * W_up x)`` without biases (seqzoo's ``MLP(kind="glu")``)."""

    def __init__(self, d_model: int, ratio: float = 4.0):
        super().__init__()
        hidden = swiglu_width(d_model, ratio)
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


def rope(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Half-split RoPE of ``x: (batch, heads, length, dim)`` at positions 0..length-1, in
    float32, returned in ``x``'s dtype (seqzoo's ``apply_rope``)."""
    dim, length = x.shape[-1], x.shape[-2]
    freqs = theta ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class SDPAttention(nn.Module):
    """Causal multi-head attention with RoPE through ``F.scaled_dot_product_attention``."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int):
        super().__init__()
        self.h, self.d = num_heads, head_dim
        self.q_proj = nn.Linear(d_model, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, num_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, num_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, d_model, bias=False)

    def forward(self, x):
        b, length, _ = x.shape

        def heads(t):
            return t.view(b, length, self.h, self.d).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, length, self.h * self.d))


class FirstOutput(nn.Module):
    """fla's layers return ``(out, attentions, cache)``: keep ``out``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)[0]


def peer_mixer(name: str, d_model: int, options: dict[str, Any], layer_idx: int) -> nn.Module:
    """The peer layer for seqzoo mixer ``name`` with seqzoo's ``options`` (keys as seqzoo's)."""
    if name == "attention":
        head_dim = options.get("head_dim") or d_model // options["num_heads"]
        return SDPAttention(d_model, options["num_heads"], head_dim)
    if name == "mamba2":
        from mamba_ssm.modules.mamba2 import Mamba2

        return Mamba2(
            d_model,
            d_state=options["d_state"],
            headdim=options["headdim"],
            expand=options["expand"],
            chunk_size=options["chunk_size"],
            use_mem_eff_path=False,
            layer_idx=layer_idx,
        )
    if name == "gla":
        from fla.layers.gla import GatedLinearAttention

        h = options["num_heads"]
        return FirstOutput(
            GatedLinearAttention(
                mode="chunk",
                hidden_size=d_model,
                expand_k=options["key_dim"] * h / d_model,
                expand_v=options["value_dim"] * h / d_model,
                num_heads=h,
                gate_low_rank_dim=options["gate_low_rank"],
                layer_idx=layer_idx,
            )
        )
    raise ValueError(f"no torch peer for mixer {name!r}")


class Block(nn.Module):
    """Pre-norm residual block: mixer, then (unless ``mlp == "none"``) SwiGLU."""

    def __init__(self, d_model: int, mixer: nn.Module, mlp: str):
        super().__init__()
        self.norm_mix = nn.RMSNorm(d_model, eps=1e-5)
        self.mix = mixer
        self.mlp = None if mlp == "none" else SwiGLU(d_model)
        self.norm_mlp = None if mlp == "none" else nn.RMSNorm(d_model, eps=1e-5)

    def forward(self, x):
        x = x + self.mix(self.norm_mix(x))
        return x if self.mlp is None else x + self.mlp(self.norm_mlp(x))


# flax's truncated normal: the std of a standard normal truncated at +-2
TRUNCATED_STD = 0.87962566103423978


@torch.no_grad()
def seqzoo_init(module: nn.Module) -> None:
    """seqzoo's (flax's default) initialisation of ``module``'s own weights (module docstring):
    an ``nn.Embedding`` normal with std ``1 / sqrt(dim)`` (flax ``Embed``), an ``nn.Linear``
    lecun normal (flax ``Dense``), biases 0."""
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.embedding_dim ** -0.5)
    elif isinstance(module, nn.Linear):
        std = module.in_features ** -0.5 / TRUNCATED_STD
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class TorchLM(nn.Module):
    """Token ids ``(batch, length)`` -> logits ``(batch, length, vocab)``.

    ``init``: ``"seqzoo"`` (the default: seqzoo's initialisation of the embedding, the lm head,
    the attention and MLP projections; ``seqzoo_init``) or ``"torch"`` (torch's defaults)."""

    def __init__(self, mixers: list[str], options: dict[str, dict], d_model: int, vocab: int,
                 mlp: str = "glu", init: str = "seqzoo"):
        super().__init__()
        if mlp not in ("glu", "none"):
            raise ValueError(f"the torch peers have mlp glu or none, got {mlp!r}")
        if init not in ("seqzoo", "torch"):
            raise ValueError(f"init must be seqzoo or torch, got {init!r}")
        self.embed = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, peer_mixer(name, d_model, options[name], i), mlp)
            for i, name in enumerate(mixers)
        )
        self.final_norm = nn.RMSNorm(d_model, eps=1e-5)
        self.lm_head = nn.Linear(d_model, vocab, bias=True)
        if init == "seqzoo":
            for module in self.modules():
                if isinstance(module, (TorchLM, Block, SwiGLU, SDPAttention)):
                    for child in module.children():
                        seqzoo_init(child)

    def forward(self, tokens):
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.final_norm(h))
