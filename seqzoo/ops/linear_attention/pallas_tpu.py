"""Linear attention's Pallas TPU backend: the Mosaic-TPU chunked kernel
(``seqzoo.kernels.mosaic_tpu_chunked``; equations, tiling, VMEM and tolerances there)."""

from seqzoo.kernels.mosaic_tpu_chunked import gated_linear_attention, linear_attention_kernel

__all__ = ["gated_linear_attention", "linear_attention_kernel"]
