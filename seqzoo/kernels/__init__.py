"""Shared Pallas building blocks: launching (``launch``), the chunked linear-attention pass and its
tilings and float32 matmul precision (``chunked_pass``, ``chunked_tiling``,
``matmul_precision``) and the sequential-scan loop (``scan_loop``). Each
op's own Pallas backend sits in its folder, ``seqzoo/ops/<op>/pallas_gpu*.py``."""
