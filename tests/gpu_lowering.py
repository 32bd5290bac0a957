"""The Triton modules of a function's Pallas kernels as lowered for a GPU, on any machine.

``jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))`` holds each kernel as a
``__gpu$xla.gpu.triton`` custom call whose backend config carries the Triton module as MLIR
bytecode; ``triton_modules`` parses them back to text with the Triton dialect registered (as
jax's Pallas lowering builds its own context: jax internals, used by tests only). Kernels must be
built compiled, not interpreted: patch ``seqzoo.kernels.launch.kernels_compiled`` to True.
"""

from __future__ import annotations

import re

import jax
from jax._src.interpreters import mlir
from jax._src.lib.mlir import ir
from jax._src.lib.triton import dialect as triton_dialect


def _triton_context() -> ir.Context:
    context = mlir.JaxIrContext()
    context.append_dialect_registry(mlir.upstream_dialects)
    triton_dialect.register_dialect(context)
    context.load_all_available_dialects()
    return context


def triton_modules(fn, *args) -> list[str]:
    """The Triton module of every kernel launch in ``fn(*args)`` lowered for CUDA, in order."""
    lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    context, modules = _triton_context(), []

    def walk(op) -> None:
        op = op.operation
        if (op.name == "stablehlo.custom_call"
                and "triton" in ir.StringAttr(op.attributes["call_target_name"]).value):
            config = op.attributes["mhlo.backend_config"]
            with context:
                modules.append(str(ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes)))
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    walk(inner)

    walk(lowered.compiler_ir("stablehlo").operation)
    return modules


def dot_precisions(module: str) -> list[str]:
    """The input precision of every ``tt.dot`` of a Triton module, in order: ``"tf32"``,
    ``"tf32x3"``, ... or ``"ieee"`` (Triton's default, printed as no attribute)."""
    dots = re.findall(r"tt\.dot [^\n]*", module)
    return [m.group(1) if (m := re.search(r"inputPrecision = (\w+)", d)) else "ieee"
            for d in dots]
