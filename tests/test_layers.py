"""The package's layers import only the layers below them, with no cycles (see
docs/ARCHITECTURE.md). Imports are read from the source (every ``import`` statement,
also those inside functions), so no module is executed."""

import ast
from pathlib import Path

import pytest

import shardemb

PACKAGE = Path(shardemb.__file__).parent

# Lowest first. A module may import its own layer and the layers below it, never above.
LAYERS = [
    ("base", ["shardemb.errors", "shardemb._validate", "shardemb._files"]),
    ("core", ["shardemb.core"]),
    ("shard", ["shardemb.shard"]),
    ("transport", ["shardemb.transport"]),
    ("checkpoint", ["shardemb.checkpoint"]),
    ("store", ["shardemb.store"]),
    ("keras", ["shardemb.keras"]),
    ("recsys", ["shardemb.recsys"]),
    ("cluster", ["shardemb.cluster"]),
    # Applications on top: the package's public surface, the CLI and the programs it runs.
    (
        "apps",
        [
            "shardemb",
            "shardemb._keras_hook",
            "shardemb.__main__",
            "shardemb.cli",
            "shardemb.demo",
            "shardemb.bench",
            "shardemb.soak",
            "shardemb.testing",
        ],
    ),
]
# Third-party packages only one layer may import (TensorFlow also runs the GPU storage).
ONLY_IN = {
    "ray": {"transport", "apps"},
    "tensorflow": {"keras", "apps"},
    "keras": {"keras", "apps"},
}
ALSO_TENSORFLOW = {"shardemb.shard.storage"}  # rows in TF variables on a GPU (lazy import)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from shardemb import checkpoint`` imports the module shardemb.checkpoint,
            # not the package's public surface.
            if base != "shardemb":
                found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _layer(module: str) -> int | None:
    if module.endswith(".__main__"):  # ``python -m`` entry points are programs
        return len(LAYERS) - 1
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or (p != "shardemb" and module.startswith(p + ".")):
                if best is None or len(p) > best[1]:
                    best = (index, len(p))
    return None if best is None else best[0]


MODULES = _modules()
GRAPH = {
    name: {i for i in _imports(name, path) if i in MODULES and i != name}
    for name, path in MODULES.items()
}


def test_every_module_has_a_layer():
    assert [m for m in MODULES if _layer(m) is None] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    mine = _layer(name)
    upward = [
        f"{name} ({LAYERS[mine][0]}) imports {other} ({LAYERS[_layer(other)][0]})"
        for other in sorted(GRAPH[name])
        if _layer(other) > mine
    ]
    assert upward == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_third_party_imports_stay_in_their_layer(name):
    layer = LAYERS[_layer(name)][0]
    tops = {i.split(".")[0] for i in _imports(name, MODULES[name])}
    for package, allowed in ONLY_IN.items():
        if package in tops and layer not in allowed:
            assert package == "tensorflow" and name in ALSO_TENSORFLOW, (
                f"{name} ({layer}) imports {package}, allowed only in {sorted(allowed)}"
            )


def test_no_import_cycles():
    # A module's own packages are not a cycle: Python runs a package's __init__ before any
    # of its modules (shardemb.keras imports its layer first, and the layer its siblings).
    edges = {m: {d for d in ds if not m.startswith(d + ".")} for m, ds in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m != "shardemb" and m not in state:
            visit(m)


def test_modules_stay_small():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}, f"modules over ~400 lines: {long}"


def test_the_shard_knows_no_transport():
    shard = [m for m in MODULES if m.startswith("shardemb.shard")]
    assert all(not any(d.startswith("shardemb.transport") for d in GRAPH[m]) for m in shard)
