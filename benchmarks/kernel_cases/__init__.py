"""Benchmark cases for benchmarks/kernels.py: one module per kernel, each exposing
``cases(quick: bool) -> list[Case]`` (``quick``: small shapes that finish in seconds on a CPU)."""
