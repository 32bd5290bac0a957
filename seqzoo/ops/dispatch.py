"""One ``impl`` vocabulary for every op, and the one policy table behind ``impl="auto"``.

Every op with several implementations takes ``impl=`` from one vocabulary, one meaning per name:

    auto          the first rule of the op's policy (``POLICY``) that applies
    chunked       chunk-wise XLA: quadratic inside a chunk, a recurrence over chunks
    parallel      the dense (quadratic) XLA form; for attention, jax.nn's XLA softmax
    sequential    ``lax.scan``, step by step (the op's reference form)
    associative   ``lax.associative_scan``, a parallel prefix scan
    pallas        our Pallas kernel for the platform (``seqzoo/ops/<op>/pallas_gpu*.py`` on a GPU,
                  ``pallas_tpu*.py`` on a TPU)
    pallas_split  the GPU kernel for what crosses chunks, the intra-chunk terms in XLA parallel
                  over chunks (linear attention, for per-key decays: ``pallas_gpu_split.py``)
    cudnn         cuDNN's fused (flash) attention
    splash        jax's splash attention (a Pallas kernel for TPUs)
    tokamax       tokamax's flash attention (Pallas kernels for GPUs; an optional dependency)

Each op supports a subset (``POLICY[op].supported``). Renamed names keep working for one release
with a ``DeprecationWarning`` (``RENAMED``): linear attention's ``"chunk"`` and ``"recurrent"``
(now ``"chunked"`` and ``"sequential"``) and attention's ``"xla"`` (now ``"parallel"``).

``resolve(op, impl, **facts)`` is the one resolver: ``Choice(impl, why, measured)``. For
``"auto"`` it is the first rule of ``POLICY[op]`` whose condition holds on the facts (platform,
dtypes, widths, options); an explicit name is kept ("asked for") unless a rule overrides it where
the op cannot run it (``"pallas"`` with packed ``segment_ids`` takes the chunked XLA path), or a
rule for explicit names only sends it elsewhere first (Based's closed form: ``"pallas"`` on a GPU
is its fused kernel, packed ``segment_ids`` included; ``"auto"`` never consults such a rule). Each
rule decided by a measurement links the section of ``benchmarks/RESULTS.md`` holding the numbers
(``measured``); the numbers live there, not here. The platform is ``jax.default_backend()``
unless a ``platform`` fact is given. ``explain`` says the same in a sentence.

The platform a computation runs on is the one it is *lowered* for, which need not be the default
backend (``jax.jit(f).trace(*args).lower(lowering_platforms=("tpu",))`` on a CPU machine).
``on_platform`` runs an op's choice for the default backend and, where a TPU would choose
otherwise, its TPU choice beside it under ``lax.platform_dependent``: each platform lowers only
its own branch.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunked_tiling import device_limit, padded_width, resolve_tiling
from seqzoo.kernels.launch import GPU_BACKENDS
from seqzoo.kernels.mosaic_tpu_common import building_for_tpu

IMPLS = ("auto", "chunked", "parallel", "sequential", "associative", "pallas", "pallas_split",
         "cudnn", "splash", "tokamax")
RENAMED = {
    "linear_attention": {"chunk": "chunked", "recurrent": "sequential"},
    "attention": {"xla": "parallel"},
}
# The widest padded key / value width the chunked kernel has been compiled, checked and timed at
# on a GPU; wider ones run only when asked for.
MEASURED_WIDTH = 128
FUSED_DTYPES = (jnp.bfloat16, jnp.float16)  # the dtypes cuDNN's flash attention takes

_RESULTS = "benchmarks/RESULTS.md#"
CHUNKED_KERNELS = _RESULTS + "chunked-linear-attention-kernels-issue-7-kernels-3-and-4-bf16"
PER_KEY_SPLIT = _RESULTS + "glas-per-key-decay-split-in-two-implpallas_split-issue-24-item-1"
FLOAT32_KERNEL = _RESULTS + "float32-the-chunked-kernel-at-each-matmul-precision-issue-24-item-3"
E2E_THROUGHPUT = _RESULTS + "end-to-end-lm-training-throughput-issue-24-item-5"
SCAN_KERNELS = _RESULTS + "linear-recurrence-and-selective-scan-kernels-issue-7-kernels-1-and-2"
TPU_MODEL = _RESULTS + "tpu-predicted-not-measured"
FUSED_ATTENTION = _RESULTS + (
    "fused-attention-as-auto-and-the-remaining-kernels-bf16-gradients-issue-20-2026-12-05"
)
TAYLOR_PARALLEL = _RESULTS + "baseds-taylor-kernel-in-closed-form-the-quadratic-form-by-length"
TAYLOR_FUSED = _RESULTS + "baseds-taylor-kernel-fused-on-a-gpu-pallas_gpu_taylorpy"
# The longest sequence at which Based's closed-form quadratic form in XLA is measured faster than
# its features through the chunked form, forward and forward+backward (TAYLOR_PARALLEL): on a
# CPU (float32) and on a GPU (float32 and bf16; on a GPU 16-bit inputs, and float32 at a
# tensor-core precision, take the fused kernel first, TAYLOR_FUSED). Longer sequences keep the
# features (the XLA form holds (B, H, T, T) scores).
TAYLOR_PARALLEL_CPU_LENGTH = 512
TAYLOR_PARALLEL_GPU_LENGTH = 1024


@dataclasses.dataclass(frozen=True)
class Choice:
    """What an op runs: ``impl`` (a name of ``IMPLS``), ``why``, and ``measured``: the section of
    ``benchmarks/RESULTS.md`` behind the rule ("" where no measurement decided it)."""

    impl: str
    why: str
    measured: str = ""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of an op's policy: run ``impl`` when ``when(facts)`` holds, because ``why``
    (formatted with the facts). ``overrides``: explicit impls the rule replaces too (an op that
    cannot run them under this condition); otherwise only ``"auto"`` consults it. ``auto``:
    False for a rule of the explicit ``overrides`` only (a kernel ``"auto"`` does not take)."""

    impl: str
    when: Callable[[dict], bool]
    why: str
    measured: str = ""
    overrides: tuple[str, ...] = ()
    auto: bool = True


@dataclasses.dataclass(frozen=True)
class Policy:
    """An op's implementations, the facts its rules read (a function of keyword facts returning
    the dict the rules see) and its ordered rules; the last one always applies."""

    supported: tuple[str, ...]
    facts: Callable[..., dict]
    rules: tuple[Rule, ...]


def _platform(platform: str | None) -> str:
    return jax.default_backend() if platform is None else platform


def _given(flag) -> bool:
    """A fact that may be passed as an array or None (``segment_ids``) or as a bool."""
    return flag is not None and flag is not False


def _chunked_kernel_facts(*, dims: tuple[int, int], dtypes: tuple = (), dtype=None,
                          segment_ids=False, per_key: bool = False, platform: str | None = None,
                          shared_memory: int | None = None, precision: str = "highest",
                          closed_form: bool = False, length: int = 0) -> dict:
    """Facts of the chunked linear-attention kernel: ``dims`` the key and value widths (SSD: state
    and head widths), ``dtypes`` of the matmul inputs (or one ``dtype``), packed ``segment_ids``,
    ``per_key`` decays, the GPU's ``shared_memory`` per block (default: the first device's) and
    the kernel's float32 matmul ``precision`` (resolved: ``seqzoo.kernels.matmul_precision``).
    ``closed_form``: the features are Based's Taylor map with no decay, whose quadratic form
    needs no features (``taylor_parallel.py``), on a sequence of ``length``."""
    dtypes = tuple(dtypes) + (() if dtype is None else (dtype,))
    widths = tuple(padded_width(d) for d in dims)
    limit = device_limit() if shared_memory is None else shared_memory
    itemsize = max((jnp.dtype(d).itemsize for d in dtypes), default=2)
    tiling, tiling_why = resolve_tiling(None, *widths, limit, itemsize=itemsize)
    return dict(
        dims=tuple(dims), widths=widths, measured_width=MEASURED_WIDTH, per_key=per_key,
        segment_ids=_given(segment_ids), gpu=_platform(platform) in GPU_BACKENDS,
        tpu=_platform(platform) == "tpu",
        all_16bit=all(jnp.dtype(d).itemsize == 2 for d in dtypes),
        all_float32=bool(dtypes) and all(jnp.dtype(d) == jnp.float32 for d in dtypes),
        precision=precision, tiling=tiling, tiling_why=tiling_why,
        closed_form=closed_form, length=length,
        closed_form_limit=_closed_form_limit(platform),
    )


def _closed_form_limit(platform: str | None) -> int:
    """The longest sequence at which Based's closed form in XLA is measured faster than the
    features on ``platform`` (0: not measured there, so never)."""
    platform = _platform(platform)
    if platform in GPU_BACKENDS:
        return TAYLOR_PARALLEL_GPU_LENGTH
    return TAYLOR_PARALLEL_CPU_LENGTH if platform == "cpu" else 0


def _scan_facts(*, platform: str | None = None) -> dict:
    return dict(gpu=_platform(platform) in GPU_BACKENDS, tpu=_platform(platform) == "tpu")


def _attention_facts(*, dtype, head_dim: int, causal: bool = False, window: int | None = None,
                     num_sinks: int = 0, segment_ids=False, platform: str | None = None,
                     compute_capability: str | None = None) -> dict:
    """Facts of ``dot_product_attention``: the inputs' ``dtype``, ``head_dim``, the mask options,
    and the GPU's ``compute_capability`` (NVIDIA's "major.minor"; default: the first device's)."""
    platform = _platform(platform)
    if compute_capability is None:
        compute_capability = getattr(jax.devices()[0], "compute_capability", "")
    try:  # NVIDIA's "major.minor"; ROCm names its chips otherwise and has no cuDNN
        version = float(compute_capability)
    except (TypeError, ValueError):
        version = None
    return dict(
        platform=platform, gpu=platform in GPU_BACKENDS, tpu=platform == "tpu",
        dtype=jnp.dtype(dtype).name,
        fused_dtype=jnp.dtype(dtype) in [jnp.dtype(d) for d in FUSED_DTYPES],
        compute_capability=compute_capability, nvidia=version is not None, head_dim=head_dim,
        head_dim_limit=256 if version is not None and version >= 9.0 else 128, causal=causal,
        window=window, num_sinks=num_sinks, segment_ids=_given(segment_ids),
    )


_CLOSED_FORM = (  # Based's Taylor map (featured_linear_attention)
    Rule("pallas", lambda f: f["closed_form"] and f["gpu"] and f["all_16bit"],
         "Based's Taylor map, 16-bit, on a GPU: the fused Pallas kernel of its closed form "
         "(pallas_gpu_taylor.py; packed segment_ids included) is faster than the XLA closed "
         "form, the {dims[0]} features through the chunked form and fla's parallel_based at "
         "every measured length, 64 to 4096 (far enough from the features that its cost per "
         "token, growing with the length, stays below theirs well beyond)", TAYLOR_FUSED,
         overrides=("pallas",)),
    Rule("pallas",
         lambda f: f["closed_form"] and f["gpu"] and f["all_float32"]
         and f["precision"] != "highest",
         "Based's Taylor map, float32 at precision={precision!r}, on a GPU: the fused Pallas "
         "kernel's tensor-core matmuls are faster than the XLA closed form, forward and "
         "forward+backward, at float32's error (measured at 256 and 1024; beyond 1024 'auto' "
         "would otherwise run the features, far slower than both)", TAYLOR_FUSED),
    Rule("parallel",
         lambda f: f["closed_form"] and f["length"] <= f["closed_form_limit"],
         "Based's Taylor map at length {length} <= {closed_form_limit} on this platform: its "
         "kernel in closed form on the (T, T) scores is faster than its {dims[0]} features "
         "through the chunked form", TAYLOR_PARALLEL),
    Rule("pallas", lambda f: f["closed_form"] and f["gpu"],
         "Based's Taylor map on a GPU: the fused Pallas kernel of its closed form; at "
         "precision='highest' (IEEE float32 matmuls) its forward pass is slower than the XLA "
         "closed form's, and 16-bit with float32 mixed is not timed, so 'auto' does not take it",
         TAYLOR_FUSED, overrides=("pallas",), auto=False),
)
_CHUNKED_KERNEL_PLACES = (  # where the chunked kernels do not run, whatever the inputs
    Rule("chunked", lambda f: f["segment_ids"], "packed segment_ids: the kernel has no resets",
         overrides=("pallas", "pallas_split")),
    Rule("pallas", lambda f: f["tpu"],
         "the Mosaic-TPU kernel moves a fraction of the XLA form's bytes (predicted, not measured "
         "on a TPU)", TPU_MODEL),
    Rule("pallas", lambda f: f["tpu"],
         "the split form's inter-chunk pass is the Triton kernel; a TPU runs the Mosaic one",
         overrides=("pallas_split",)),
    Rule("chunked", lambda f: not f["gpu"], "no Pallas kernel is wired for this platform"),
)
_FLOAT32_XLA = (  # float32 inputs where the kernel is not the faster path
    Rule("chunked", lambda f: not f["all_16bit"] and not f["all_float32"],
         "16-bit and float32 inputs mixed: the kernel is not measured there"),
    Rule("chunked", lambda f: f["all_float32"] and f["precision"] == "highest",
         "float32 at precision='highest' (IEEE, no tensor cores): XLA's matmuls are faster "
         "than the kernel's", FLOAT32_KERNEL),
)
_FLOAT32_PER_KEY_SPLIT = (  # after _FLOAT32_XLA: precision 'highest' has taken XLA already
    Rule("pallas_split", lambda f: f["all_float32"] and f["per_key"],
         "float32 per-key decays at precision={precision!r}: the split form (the inter-chunk "
         "kernel's tensor-core matmuls, the intra-chunk scores in IEEE float32) is faster than "
         "XLA's float32 per-key form, forward and forward+backward, at float32's error "
         "('tf32x3'); at 'highest' the split is not timed and XLA runs",
         FLOAT32_KERNEL),
)
_FLOAT32_KERNEL = (
    Rule("pallas", lambda f: f["all_float32"],
         "float32 at precision={precision!r}: the kernel's tensor-core matmuls are faster than "
         "XLA's IEEE ones ('tf32x3' keeps float32's accuracy; 'highest' would take XLA)",
         FLOAT32_KERNEL),
)
_PER_KEY_SPLIT_WIDE = (  # before _CHUNKED_KERNEL_FITS: the split is measured at fla's GLA widths
    Rule("pallas_split",
         lambda f: f["per_key"] and f["all_16bit"] and f["tiling"] is not None
         and f["widths"][0] <= f["measured_width"] < f["widths"][1] <= 2 * f["measured_width"],
         "per-key decays, 16-bit, widths {dims} (padded {widths}): the split form is measured "
         "at fla's GLA layer widths (key 96, value 192), faster than XLA's chunked form there, "
         "the op's forward and a GLA language model's training step",
         E2E_THROUGHPUT),
)
_CHUNKED_KERNEL_FITS = (  # on a GPU: XLA where the kernel's tiling is unmeasured
    Rule("chunked", lambda f: max(f["widths"]) > f["measured_width"],
         "widths {dims} pad to {widths}: the kernel is measured up to {measured_width}",
         CHUNKED_KERNELS),
    Rule("chunked", lambda f: f["tiling"] is None, "{tiling_why}"),
)
_CHUNKED_KERNEL = (
    Rule("pallas", lambda f: True,
         "16-bit inputs: the kernel is faster than XLA; its tiling {tiling_why}",
         CHUNKED_KERNELS),
)
_PER_KEY_SPLIT = (
    Rule("pallas_split", lambda f: f["per_key"],
         "per-key decays, 16-bit: the split form (the kernel across chunks, the intra-chunk "
         "scores and their VJP by their own kernels) is faster than the one-pass kernel and "
         "than XLA's chunked form, still slower than fla's chunk_gla (issue 24)",
         PER_KEY_SPLIT),
)
_SCAN_RULES = (
    Rule("pallas", lambda f: f["tpu"],
         "the Mosaic-TPU kernel moves a fraction of the associative scan's bytes (predicted, not "
         "measured on a TPU)", TPU_MODEL),
    Rule("associative", lambda f: not f["gpu"], "no Pallas kernel is wired for this platform"),
    Rule("pallas", lambda f: True, "the fused kernel is faster than the associative scan",
         SCAN_KERNELS),
)
_ATTENTION_RULES = (
    Rule("parallel", lambda f: f["tpu"] and f["num_sinks"], "splash attention: no sink mask wired"),
    Rule("splash", lambda f: f["tpu"], "jax's splash attention: flash attention on a TPU"),
    Rule("parallel", lambda f: not f["gpu"], "no fused attention kernel is wired for {platform!r}"),
    Rule("parallel", lambda f: not f["fused_dtype"],
         "cuDNN flash attention has no {dtype} kernel, and tokamax's float32 one is "
         "slower than XLA's",
         FUSED_ATTENTION),
    Rule("parallel", lambda f: not f["nvidia"],
         "cuDNN needs an NVIDIA GPU (compute capability {compute_capability!r})"),
    Rule("parallel", lambda f: f["head_dim"] % 8 or f["head_dim"] > f["head_dim_limit"],
         "cuDNN needs a head dim <= {head_dim_limit} and a multiple of 8, got {head_dim}"),
    Rule("parallel", lambda f: f["num_sinks"], "cuDNN and tokamax have no attention sinks",
         overrides=("tokamax",)),
    Rule("parallel", lambda f: f["segment_ids"],
         "packed segment_ids: neither jax.nn (cuDNN) nor tokamax takes them without a dense "
         "mask", overrides=("tokamax",)),
    Rule("parallel", lambda f: f["window"] is not None and not f["causal"],
         "cuDNN's sliding windows are causal only"),
    Rule("cudnn", lambda f: True, "bf16/fp16 flash attention", FUSED_ATTENTION),
)
_CHUNKED = ("chunked", "sequential", "pallas")
# Mamba-2's SSD and Hydra's quasiseparable mixer (SSD both ways): the kernel in 16-bit, and in
# float32 at a tensor-core precision (both measured: FLOAT32_KERNEL)
_SSD_RULES = (_CHUNKED_KERNEL_PLACES + _FLOAT32_XLA + _CHUNKED_KERNEL_FITS + _FLOAT32_KERNEL
              + _CHUNKED_KERNEL)
_SCANS = ("associative", "sequential", "pallas")

POLICY = {
    "linear_attention": Policy(("chunked", "parallel", "sequential", "pallas", "pallas_split"),
                               _chunked_kernel_facts,
                               _CLOSED_FORM + _CHUNKED_KERNEL_PLACES + _FLOAT32_XLA
                               + _PER_KEY_SPLIT_WIDE + _CHUNKED_KERNEL_FITS
                               + _FLOAT32_PER_KEY_SPLIT + _PER_KEY_SPLIT
                               + _FLOAT32_KERNEL + _CHUNKED_KERNEL),
    "ssd": Policy(_CHUNKED, _chunked_kernel_facts, _SSD_RULES),
    "quasiseparable": Policy(_CHUNKED, _chunked_kernel_facts, _SSD_RULES),
    "linear_recurrence": Policy(_SCANS, _scan_facts, _SCAN_RULES),
    "selective_scan": Policy(_SCANS, _scan_facts, _SCAN_RULES),
    "attention": Policy(("parallel", "cudnn", "splash", "tokamax"), _attention_facts,
                        _ATTENTION_RULES),
    "delta_rule": Policy(("chunked", "sequential"), lambda **_: {},
                         (Rule("chunked", lambda f: True, "the chunked WY form (no kernel yet)"),)),
}


def _policy(op: str) -> Policy:
    if op not in POLICY:
        raise ValueError(f"op must be one of {tuple(POLICY)}, got {op!r}")
    return POLICY[op]


def accepted(op: str) -> tuple[str, ...]:
    """Every ``impl`` name ``op`` takes: ``"auto"``, its own, then renamed ones (deprecated)."""
    return ("auto", *_policy(op).supported, *RENAMED.get(op, {}))


def canonical(op: str, impl: str) -> str:
    """``impl`` in the one vocabulary: a renamed one with a ``DeprecationWarning``; a
    ``ValueError`` listing ``op``'s valid names for anything else it does not support."""
    valid = ("auto", *_policy(op).supported)
    new = RENAMED.get(op, {}).get(impl) if isinstance(impl, str) else None
    if new is not None:
        warnings.warn(f"{op}: impl={impl!r} is renamed {new!r}; the old name goes in the next "
                      "release", DeprecationWarning, stacklevel=3)
        return new
    if impl not in valid:
        raise ValueError(f"impl must be one of {valid}, got {impl!r}")
    return impl


def resolve(op: str, impl: str = "auto", **facts) -> Choice:
    """What ``op`` runs for ``impl`` given ``facts`` (see the module docstring and each op's
    facts: ``_chunked_kernel_facts`` for linear_attention / ssd / quasiseparable,
    ``_scan_facts`` for linear_recurrence / selective_scan, ``_attention_facts``)."""
    policy = _policy(op)
    impl = canonical(op, impl)
    rules = [r for r in policy.rules if (impl == "auto" and r.auto) or impl in r.overrides]
    if rules:
        known = policy.facts(**facts)
        for rule in rules:
            if rule.when(known):
                return Choice(rule.impl, rule.why.format(**known), rule.measured)
    return Choice(impl, "asked for")


def explain(op: str, impl: str = "auto", **facts) -> str:
    """``resolve`` as a sentence: what ``op`` runs for ``impl`` here, why, and where it was
    measured, e.g. ``explain("ssd", dims=(128, 64), dtype=jnp.bfloat16)``."""
    choice = resolve(op, impl, **facts)
    where = f" (measured: {choice.measured})" if choice.measured else ""
    return f"{op} with impl={impl!r} runs {choice.impl!r}: {choice.why}{where}"


def on_platform(op: str, impl: str, run: Callable[[str, str], Callable], *args, **facts):
    """``op`` on ``args`` by the implementation chosen for the platform it is lowered for.

    ``run(impl, platform)`` returns the function of ``args`` that runs ``impl`` (a name of
    ``IMPLS``) on ``platform`` ("tpu", or the default backend: the ``pallas`` of a GPU and of a
    TPU are different kernels). With ``facts`` as ``resolve`` takes them (without ``platform``).
    Off a TPU, where the TPU's choice differs, both run under ``lax.platform_dependent``; the TPU
    branch is built inside ``mosaic_tpu_common.building_for_tpu``. A TPU branch that cannot be
    built here (a ``ValueError``: no tiling fits these shapes; a ``TypeError``: forward-mode
    autodiff, e.g. ``jax.jacfwd``, which the kernels' ``custom_vjp`` refuses) leaves the
    default's alone, for every platform.
    """
    here = jax.default_backend()
    choice = resolve(op, impl, platform=here, **facts).impl
    if here == "tpu":
        return run(choice, here)(*args)
    on_tpu = resolve(op, impl, platform="tpu", **facts).impl
    if on_tpu == choice and choice != "pallas":
        return run(choice, here)(*args)

    def tpu_branch(*operands):
        with building_for_tpu():
            return run(on_tpu, "tpu")(*operands)

    try:
        return jax.lax.platform_dependent(*args, tpu=tpu_branch, default=run(choice, here))
    except (ValueError, TypeError):  # e.g. forward-mode autodiff: the kernels are custom_vjp
        return run(choice, here)(*args)
