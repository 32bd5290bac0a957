"""Pure functions carrying the math of every mixer (equations and shapes in each docstring).

Names below are the public ops; ``seqzoo.ops.linear_attention`` etc. are the functions.
"""

from seqzoo.ops.aaren import causal_softmax_scan
from seqzoo.ops.attention import attention_matrix, dot_product_attention
from seqzoo.ops.chunked_attention import chunked_causal_attention
from seqzoo.ops.complex_params import from_real_pair, to_real_pair
from seqzoo.ops.delta_rule import delta_rule, delta_rule_matrix, delta_rule_step
from seqzoo.ops.dilated_conv import dilated_causal_conv
from seqzoo.ops.ema import ema_kernel
from seqzoo.ops.feature_maps import feature_map
from seqzoo.ops.fft_conv import bidirectional_conv, causal_conv, fft_causal_conv
from seqzoo.ops.fnet import valid_dft
from seqzoo.ops.hippo import hippo, nplr, s4d_init
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
from seqzoo.ops.recurrence import linear_recurrence
from seqzoo.ops.rope import apply_rope
from seqzoo.ops.s4_dplr_kernel import cauchy, s4_dplr_c_tilde, s4_dplr_kernel
from seqzoo.ops.s4d_kernel import s4d_kernel
from seqzoo.ops.selective_scan import selective_scan, selective_scan_step
from seqzoo.ops.short_conv import causal_depthwise_conv
from seqzoo.ops.ssd import ssd, ssd_matrix, ssd_step

__all__ = [
    "apply_rope",
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
