"""Shared Pallas building blocks: launching (``launch``), the chunked linear-attention pass and its
tilings (``chunked_pass``, ``chunked_tiling``) and the sequential-scan loop (``scan_loop``). Each
op's own Pallas backend sits in its folder, ``seqzoo/ops/<op>/pallas_gpu*.py``."""
