"""The pure core imports no I/O, clock or randomness module (see STYLE.md)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "pqcall"
FORBIDDEN = {"asyncio", "socket", "time", "random", "select", "selectors"}
# modules that must stay sans-I/O; keystore touches the file system on purpose
IMPURE_ALLOWED = {"keystore.py"}


def pure_modules() -> list[Path]:
    files = sorted((SRC / "crypto").glob("*.py"))
    files += [
        SRC / "media" / name
        for name in ("jitter.py", "stats.py", "delay.py", "playout.py", "emodel.py", "pipeline.py")
    ]
    files += [
        SRC / "transport" / name
        for name in (
            "impairment.py",
            "adaptation.py",
            "frame_clock.py",
            "media_config.py",
            "media_engine.py",
            "media_events.py",
            "media_packets.py",
            "media_protocol.py",
            "reception.py",
            "path_messages.py",
            "pathcheck.py",
        )
    ]
    files += [SRC / "signaling" / name for name in ("callstate.py", "usernames.py")]
    files += [SRC / "server" / name for name in ("relay_table.py", "ratelimit.py")]
    files += [SRC / "client" / "phone_callstate.py"]
    return [f for f in files if f.exists() and f.name not in IMPURE_ALLOWED]


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: p.name)
def test_pure_module_imports_no_io(path):
    assert imported_roots(path) & FORBIDDEN == set()
