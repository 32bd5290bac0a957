"""Pallas kernels, each beside the pure-JAX op in ``seqzoo.ops`` that it must equal."""
