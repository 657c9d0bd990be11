"""The pure core imports no I/O, clock or randomness module (see STYLE.md), not even indirectly.

The pure modules are declared once, in :data:`PURE`. Each one, and every project
module it reaches through imports (parsed with :mod:`ast`, imports in functions
included; see ``tests/test_layers.py``), must not import a :data:`FORBIDDEN`
module; a failure names the chain of imports that reached it.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Set

import pytest

from tests.test_layers import SRC, chains, module_name, project_graph

FORBIDDEN = frozenset({"asyncio", "socket", "time", "random", "select", "selectors", "threading"})

PURE = (
    "pqcall.crypto",  # a package: each of its modules
    "pqcall.media.jitter",
    "pqcall.media.stats",
    "pqcall.media.delay",
    "pqcall.media.playout",
    "pqcall.media.emodel",
    "pqcall.media.jitter_arrival",
    "pqcall.media.jitter_policy",
    "pqcall.media.pipeline",
    "pqcall.media.pipeline",
    "pqcall.netem.model",
    "pqcall.transport.adaptation",
    "pqcall.transport.frame_clock",
    "pqcall.transport.media_config",
    "pqcall.transport.media_engine",
    "pqcall.transport.media_events",
    "pqcall.transport.adaptation",
    "pqcall.transport.candidates",
    "pqcall.transport.frame_clock",
    "pqcall.transport.media_config",
    "pqcall.transport.media_engine",
    "pqcall.transport.media_events",
    "pqcall.transport.media_packets",
    "pqcall.transport.control_packets",
    "pqcall.transport.packet_types",
    "pqcall.transport.round_trip",
    "pqcall.transport.signalled",
    "pqcall.transport.media_protocol",
    "pqcall.transport.liveness",
    "pqcall.transport.reception",
    "pqcall.transport.bandwidth",
    "pqcall.transport.hangup_reason",
    "pqcall.transport.path_choice",
    "pqcall.transport.path_messages",
    "pqcall.transport.pathcheck",
    "pqcall.transport.reception",
    "pqcall.transport.path_responder",
    "pqcall.transport.relay_wire",
    "pqcall.signaling.callstate",
    "pqcall.signaling.usernames",
    "pqcall.server.relay_table",
    "pqcall.server.ratelimit",
    "pqcall.client.phone_callstate",
)
"""Modules that must stay sans-I/O; a package stands for every module in it."""
IMPURE_ALLOWED = frozenset({"pqcall.crypto.keystore"})
"""Inside a pure package, but touching the file system on purpose."""


def external_imports() -> dict[str, set[str]]:
    """Module -> the top-level names of the libraries it imports (absolute imports)."""
    found: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        roots: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
        found[module_name(path)] = roots - {"pqcall"}
    return found


def pure_modules(graph: Mapping[str, Set[str]]) -> list[str]:
    """Every module :data:`PURE` names, packages expanded; a name that is gone fails."""
    missing = [name for name in PURE if name not in graph]
    assert missing == [], f"PURE names modules that do not exist (moved?): {missing}"
    modules = {
        module
        for name in PURE
        for module in graph
        if module == name or module.startswith(name + ".")
    }
    return sorted(modules - IMPURE_ALLOWED)


def impurities(
    module: str, graph: Mapping[str, Set[str]], libraries: Mapping[str, Set[str]]
) -> list[str]:
    """One line per forbidden import that ``module`` reaches, naming the chain."""
    found = []
    for reached, chain in sorted(chains(graph, module).items()):
        for library in sorted(libraries.get(reached, set()) & FORBIDDEN):
            found.append(" -> ".join([*chain, library]))
    return found


GRAPH = project_graph(packages=False)  # a package facade is no dependency of the logic
LIBRARIES = external_imports()


@pytest.mark.parametrize("module", pure_modules(GRAPH))
def test_pure_module_imports_no_io(module):
    assert impurities(module, GRAPH, LIBRARIES) == []


def test_an_indirect_import_is_found():
    # a synthetic house: the jitter buffer reaches time through a helper
    graph = {
        "pqcall.media.jitter": {"pqcall.media.helper"},
        "pqcall.media.helper": set(),
    }
    libraries = {"pqcall.media.jitter": {"math"}, "pqcall.media.helper": {"time", "enum"}}
    assert impurities("pqcall.media.jitter", graph, libraries) == [
        "pqcall.media.jitter -> pqcall.media.helper -> time"
    ]
