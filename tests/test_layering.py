"""Packages import only downward, and no modules import each other in a cycle.

The layers, bottom to top (docs/architecture.md explains them)::

    errors -> io -> models, data -> weights -> inference -> compress, engine, serve -> cli

A package may import its own modules and any lower layer, never a higher one nor a neighbour in
its own layer (models and data are independent; so are compress, engine and serve, the three
uses of inference). The package's front door (``squeezenet/__init__.py``) and ``__main__`` sit
on top. Every import statement counts, including those inside functions: a lazy import would
hide a cycle, not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import squeezenet

ROOT = Path(squeezenet.__file__).parent
LAYERS = [
    {"errors"},
    {"io"},
    {"models", "data"},
    {"weights"},
    {"inference"},
    {"compress", "engine", "serve"},
    {"cli"},
    {"__init__", "__main__"},
]
LEVEL = {package: level for level, layer in enumerate(LAYERS) for package in layer}


def module_name(path: Path) -> str:
    parts = ("squeezenet", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (ROOT / relative).with_suffix(".py").is_file() or (ROOT / relative).is_dir()


def imports_of(path: Path) -> set[str]:
    """The squeezenet modules ``path`` imports, anywhere in its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: str) -> set[str]:
    """The squeezenet modules that code in ``package`` imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "squeezenet"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "squeezenet":
                continue
            for alias in node.names:  # `from package import module` imports the module
                candidate = f"{source}.{alias.name}"
                found.add(candidate if is_module(candidate) else source)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(ROOT.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def test_every_package_has_a_layer():
    packages = {layer_of(module) for module in graph()}
    assert packages <= set(LEVEL), f"add {sorted(packages - set(LEVEL))} to LAYERS"


def test_imports_go_only_downward():
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in sorted(targets)
        if layer_of(module) != layer_of(target)
        and LEVEL[layer_of(target)] >= LEVEL[layer_of(module)]
    ]
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_named_rules_hold():
    """The issue's two examples, spelled out: weights knows nothing of compress, serve nothing
    of engine."""
    for module, targets in graph().items():
        if layer_of(module) == "weights":
            assert not any(layer_of(t) == "compress" for t in targets), module
        if layer_of(module) == "serve":
            assert not any(layer_of(t) == "engine" for t in targets), module


def owner_of_private(module: str) -> str | None:
    """The package that owns ``module`` if a part of its name is private (``_x``), else None."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_private_modules_are_imported_only_inside_their_package():
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        for target in sorted(targets)
        if (owner := owner_of_private(target)) and not module.startswith(owner + ".")
    ]
    assert not wrong, "private modules imported from outside their package:\n" + "\n".join(wrong)
    assert owner_of_private("squeezenet.weights.formats._codebook") == "squeezenet.weights.formats"


def test_the_walker_sees_lazy_and_relative_imports():
    source = "from ..compress import pipeline\n\ndef f():\n    from . import layers, Layers\n"
    assert imports_in(source, "squeezenet.weights") == {
        "squeezenet.compress.pipeline",  # a module imported from its package
        "squeezenet.weights.layers",
        "squeezenet.weights",  # a name defined in the package itself
    }
