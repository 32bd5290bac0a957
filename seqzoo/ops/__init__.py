"""Pure functions carrying the math of every mixer (equations and shapes in each docstring).

Names below are the public ops; ``seqzoo.ops.linear_attention`` etc. are the functions. One
folder per op family, ``seqzoo/ops/<op>/``: ``__init__.py`` the public function (validation and
dispatch), ``xla.py`` the XLA forms, ``reference.py`` the step-by-step form the others are tested
against, ``pallas_gpu*.py`` the Pallas kernels, ``sequence_parallel.py`` the form for a sequence
split over devices (linear_attention, ssd, quasiseparable, scan, attention, conv; s4 holds the
S4 kernels and inits). The smaller ops are one module each. Every ``impl=`` takes one
vocabulary, and ``impl="auto"`` is decided by one policy table: ``dispatch`` (``resolve`` and
``explain`` say what runs and why).
"""

from seqzoo.ops.aaren import causal_softmax_scan
from seqzoo.ops.attention import attention_impl, attention_matrix, dot_product_attention
from seqzoo.ops.attention.chunked import chunked_causal_attention
from seqzoo.ops.complex_params import from_real_pair, to_real_pair
from seqzoo.ops.conv import (
    bidirectional_conv,
    causal_conv,
    causal_depthwise_conv,
    dilated_causal_conv,
    fft_causal_conv,
)
from seqzoo.ops.delta_rule import delta_rule, delta_rule_matrix, delta_rule_step
from seqzoo.ops.dispatch import explain, resolve
from seqzoo.ops.ema import ema_kernel
from seqzoo.ops.feature_maps import feature_map
from seqzoo.ops.fnet import valid_dft
from seqzoo.ops.linear_attention import linear_attention, linear_attention_step
from seqzoo.ops.lmu import (
    lmu_discretize,
    lmu_impulse_response,
    lmu_memory_parallel,
    lmu_transition,
)
from seqzoo.ops.pooling import masked_local_max, masked_segment_max
from seqzoo.ops.quasiseparable import quasiseparable, quasiseparable_matrix
from seqzoo.ops.rat import rat_attention
from seqzoo.ops.rope import apply_rope
from seqzoo.ops.s4 import (
    cauchy,
    hippo,
    nplr,
    s4_dplr_c_tilde,
    s4_dplr_kernel,
    s4d_init,
    s4d_kernel,
)
from seqzoo.ops.scan import linear_recurrence, selective_scan, selective_scan_step
from seqzoo.ops.ssd import ssd, ssd_matrix, ssd_step

__all__ = [
    "apply_rope",
    "attention_impl",
    "attention_matrix",
    "bidirectional_conv",
    "cauchy",
    "causal_conv",
    "causal_depthwise_conv",
    "causal_softmax_scan",
    "chunked_causal_attention",
    "delta_rule",
    "delta_rule_matrix",
    "delta_rule_step",
    "dilated_causal_conv",
    "dot_product_attention",
    "ema_kernel",
    "explain",
    "feature_map",
    "fft_causal_conv",
    "from_real_pair",
    "hippo",
    "linear_attention",
    "linear_attention_step",
    "linear_recurrence",
    "lmu_discretize",
    "lmu_impulse_response",
    "lmu_memory_parallel",
    "lmu_transition",
    "masked_local_max",
    "masked_segment_max",
    "nplr",
    "quasiseparable",
    "quasiseparable_matrix",
    "rat_attention",
    "resolve",
    "s4_dplr_c_tilde",
    "s4_dplr_kernel",
    "s4d_init",
    "s4d_kernel",
    "selective_scan",
    "selective_scan_step",
    "ssd",
    "ssd_matrix",
    "ssd_step",
    "to_real_pair",
    "valid_dft",
]
