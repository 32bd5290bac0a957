"""The import graph of seqzoo/, read from the source with ``ast``: no cycle, no import inside a
function body where cycles used to be broken that way, ``seqzoo.parallel`` imports no op, and no
op runs another op's public function under a switched-off sequence axis."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seqzoo"
# Where an import inside a function body is refused (those were the cycle breakers).
NO_LOCAL_IMPORTS = ("seqzoo.ops", "seqzoo.kernels", "seqzoo.parallel", "seqzoo.registry",
                    "seqzoo.layers")
# Imports a function may still make there: truly optional dependencies, with why.
OPTIONAL = {
    "torch": "an optional peer for comparisons, never a dependency",
    "tokamax": "an optional attention library, imported only when asked for",
    "PIL": "Pillow, the optional [data] extra",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p)))
            for p in sorted(PACKAGE.rglob("*.py"))}


SOURCES = _sources()


def _targets(node: ast.Import | ast.ImportFrom, module: str, path: Path) -> list[str]:
    """The seqzoo modules an import statement reads: ``from pkg import sub`` counts as ``pkg.sub``
    where that is a module, else as ``pkg``."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in SOURCES else base for a in node.names]
    found = []
    for name in names:
        while name and name not in SOURCES:  # import a.b.c of a module a.b, or of a name
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def _function_imports(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    yield node.name, inner


# Packages that import every module inside them by discovery (importlib, no import statement).
DISCOVERING = ("seqzoo.layers",)


def _graph() -> dict[str, set[str]]:
    """Module -> the seqzoo modules it imports, wherever the import statement is (one inside a
    function closes a cycle as surely when it runs); a discovering package imports each of its
    modules and subpackages."""
    graph = {}
    for module, (path, tree) in SOURCES.items():
        imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        graph[module] = {t for node in imports for t in _targets(node, module, path)} - {module}
    for package in DISCOVERING:
        graph[package] |= {m for m in SOURCES if m.rpartition(".")[0] == package}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    graph = _graph()
    assert "seqzoo.ops.dispatch" in graph["seqzoo.ops.ssd"]
    assert "seqzoo.ops.scan" in graph["seqzoo.ops.ssd"]
    assert "seqzoo.ops.linear_attention.xla" in graph["seqzoo.ops.linear_attention"]
    assert "seqzoo.layers" in graph["seqzoo.registry"]
    assert {"seqzoo.layers.mamba", "seqzoo.layers.structured"} <= graph["seqzoo.layers"]


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_a_cycle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_inside_a_function_in_the_core():
    local = []
    for module, (_, tree) in SOURCES.items():
        if not module.startswith(NO_LOCAL_IMPORTS):
            continue
        for function, node in _function_imports(tree):
            roots = [a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) \
                else [(node.module or "").split(".")[0]]
            if not all(root in OPTIONAL for root in roots):
                local.append(f"{module}.{function} (line {node.lineno})")
    assert local == []


def test_parallel_imports_no_op():
    graph = _graph()
    parallel = [m for m in graph if m.startswith("seqzoo.parallel")]
    assert parallel
    for module in parallel:
        assert not {t for t in graph[module] if t.startswith("seqzoo.ops")}, module


def test_the_policy_table_imports_no_op():
    ops = {t for t in _graph()["seqzoo.ops.dispatch"] if t.startswith("seqzoo.ops")}
    assert ops == set()


# Where an op may switch the sequence axis off, with why.
WHOLE_AGAIN = {
    "seqzoo.ops.attention.ulysses": "Ulysses runs attention's local core (not the public op) on "
    "head shards of whole sequences: the sequence is not split there",
    "seqzoo.ops.lean_grad": "its recomputation runs under the axis active where the function was "
    "called (the backward pass is traced outside that context): it never switches an axis off",
}


def test_ops_never_switch_the_sequence_axis_off():
    """Each op's sequence-parallel form calls the op's local core, never an op again under
    ``sequence_parallel(None)``."""
    calls = [f"{module} (line {node.lineno})" for module, (_, tree) in SOURCES.items()
             if module.startswith("seqzoo.ops") and module not in WHOLE_AGAIN
             for node in ast.walk(tree)
             if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) == "sequence_parallel"]
    assert calls == []
