"""Imports run one way through the layers of DESIGN.md, directly or through other modules.

Every module under ``src/pqcall`` is parsed with :mod:`ast`; every import counts,
also one inside a function or under ``TYPE_CHECKING`` (a lazy import is still a
dependency). Importing ``pqcall.a.b`` also runs ``pqcall/a/__init__.py``, so a
package's ``__init__`` is an import of each of its modules. A module must not
reach, through any chain of project imports, a module of a higher layer or of a
package it must never import; a failure names the whole chain.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Set
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "pqcall"

# The order of DESIGN.md, "Layers": a module may import its own package and
# lower ranks, and the same rank unless a pair below says never.
RANK: dict[str, int] = {
    "pqcall": 0,  # the package's own __init__ (the version)
    "exceptions": 0,
    "safefile": 0,
    "crypto": 1,
    "media": 1,
    "transport": 2,
    "netem": 2,  # the network emulator: tooling beside transport, see ONLY_FOR
    "signaling": 3,
    "server": 4,
    "client": 4,
    "ui": 5,
    "cli": 5,
    "bench": 5,
    "__main__": 6,  # ``python -m pqcall`` runs the CLI
}
NEVER: frozenset[tuple[str, str]] = frozenset(
    {
        ("server", "client"),
        ("client", "server"),
        ("ui", "server"),
        ("bench", "cli"),
        ("bench", "ui"),
    }
)

# tooling, not product: only these layers may import it
ONLY_FOR: dict[str, frozenset[str]] = {"netem": frozenset({"bench"})}

Graph = Mapping[str, Set[str]]


def module_name(path: Path, root: Path = SRC) -> str:
    """``src/pqcall/a/b.py`` -> ``pqcall.a.b``; a package's ``__init__`` is the package."""
    parts = ["pqcall", *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Every dotted name that ``tree`` (the module ``name``) imports, relative ones resolved."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            # ``from pqcall.a import b`` may import the module pqcall.a.b
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@functools.cache
def project_graph(root: Path = SRC, *, packages: bool = True) -> Mapping[str, Set[str]]:
    """Module -> the project modules it imports.

    With ``packages``, as Python runs them: importing ``a.b.c`` runs ``a`` and
    ``a.b`` (their ``__init__``) too, and a module is loaded with its package.
    Without, only the modules an import statement names.
    """
    trees = {}
    for path in sorted(root.rglob("*.py")):
        trees[module_name(path, root)] = (ast.parse(path.read_text()), path.name == "__init__.py")
    graph: dict[str, set[str]] = {}
    for name, (tree, is_package) in trees.items():
        edges: set[str] = set()
        for imported in imported_names(tree, name, is_package):
            parts = imported.split(".")
            prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
            edges.update(p for p in (prefixes if packages else prefixes[-1:]) if p in trees)
        parent = name.rpartition(".")[0]
        if parent and packages:
            edges.add(parent)
        edges.discard(name)
        graph[name] = edges
    return graph


def layer(module: str) -> str:
    """The layer a module belongs to: the first name under ``pqcall``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_allowed(importer: str, imported: str) -> bool:
    """May a module of layer ``importer`` reach a module of layer ``imported``?"""
    if importer == imported:
        return True
    if (importer, imported) in NEVER:
        return False
    if imported in ONLY_FOR and importer not in ONLY_FOR[imported]:
        return False
    return RANK[imported] <= RANK[importer]


def chains(graph: Graph, start: str) -> dict[str, list[str]]:
    """Every module ``start`` reaches, with one shortest import chain to it."""
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        for there in sorted(graph.get(here, ())):
            if there not in came_from:
                came_from[there] = here
                queue.append(there)
    paths: dict[str, list[str]] = {}
    for target in came_from:
        path: list[str] = []
        step: str | None = target
        while step is not None:
            path.append(step)
            step = came_from[step]
        paths[target] = path[::-1]
    return paths


def layer_violations(graph: Graph) -> list[str]:
    """One line per module that reaches a layer it must not, naming the chain."""
    found = []
    for module in sorted(graph):
        for target, chain in sorted(chains(graph, module).items()):
            if not is_allowed(layer(module), layer(target)):
                found.append(
                    f"{layer(module)} must not import {layer(target)}: " + " -> ".join(chain)
                )
    return found


def test_every_package_has_a_layer():
    unknown = sorted({layer(m) for m in project_graph()} - RANK.keys())
    assert unknown == [], f"place these in RANK (DESIGN.md, Layers): {unknown}"


def test_imports_follow_the_layers():
    violations = layer_violations(project_graph())
    assert violations == [], "\n".join(violations)


def test_checker_finds_a_bad_edge_through_a_third_module():
    # a synthetic house: transport reaches the server through crypto
    graph = {
        "pqcall.transport.pathcheck": {"pqcall.crypto.helper"},
        "pqcall.crypto.helper": {"pqcall.server.relay_table"},
        "pqcall.server.relay_table": set(),
        "pqcall.bench.relay": {"pqcall.cli.files"},
        "pqcall.cli.files": set(),
    }
    assert layer_violations(graph) == [
        "bench must not import cli: pqcall.bench.relay -> pqcall.cli.files",
        "crypto must not import server: pqcall.crypto.helper -> pqcall.server.relay_table",
        "transport must not import server: "
        "pqcall.transport.pathcheck -> pqcall.crypto.helper -> pqcall.server.relay_table",
    ]


def test_checker_reads_lazy_and_relative_imports(tmp_path):
    (tmp_path / "transport").mkdir()
    (tmp_path / "server").mkdir()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "transport" / "__init__.py").write_text("")
    (tmp_path / "server" / "__init__.py").write_text("")
    (tmp_path / "server" / "relay_table.py").write_text("")
    (tmp_path / "transport" / "pathcheck.py").write_text(
        "def bind():\n    from ..server import relay_table\n"
    )
    graph = project_graph(tmp_path)
    assert "pqcall.server.relay_table" in graph["pqcall.transport.pathcheck"]
    assert (
        "transport must not import server: pqcall.transport.pathcheck -> pqcall.server.relay_table"
        in layer_violations(graph)
    )


def test_the_command_line_loads_no_heavy_library_before_a_command_runs():
    # `pqcall --help` builds every parser; a benchmark, the server or the softphone
    # loads its libraries only when its command runs
    heavy = ["numpy", "pydantic", "soxr", "opuslib", "cryptography", "fastapi", "sqlalchemy"]
    code = f"import sys, pqcall.cli; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
