"""Convolutions along the sequence: short depthwise ones (Mamba, Hydra; ``short.py``, with its halo
exchange over devices in ``sequence_parallel.py``), long ones by FFT (S4, H3, Hyena, Mega;
``fft.py``), dilated causal ones (TCN; ``dilated.py``) and their Toeplitz matrices
(``toeplitz.py``).
"""

from seqzoo.ops.conv.dilated import conv_buffer, dilated_causal_conv, dilated_conv_step
from seqzoo.ops.conv.fft import bidirectional_conv, causal_conv, fft_causal_conv
from seqzoo.ops.conv.short import (
    causal_depthwise_conv,
    centered_depthwise_conv,
    conv_init_buffer,
    conv_step,
    depthwise_conv,
)
from seqzoo.ops.conv.toeplitz import (
    anticausal_toeplitz,
    causal_toeplitz,
    toeplitz_matrix,
    toeplitz_matvec,
)

__all__ = [
    "anticausal_toeplitz",
    "bidirectional_conv",
    "causal_conv",
    "causal_depthwise_conv",
    "causal_toeplitz",
    "centered_depthwise_conv",
    "conv_buffer",
    "conv_init_buffer",
    "conv_step",
    "depthwise_conv",
    "dilated_causal_conv",
    "dilated_conv_step",
    "fft_causal_conv",
    "toeplitz_matrix",
    "toeplitz_matvec",
]
