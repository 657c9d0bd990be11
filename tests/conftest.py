"""The test suite's lanes: markers by place, so ``make test-fast`` can leave the slow ones out.

Markers (registered in ``pyproject.toml``, ``--strict-markers``):

- ``e2e``: real ``pqcall`` processes talking to each other (tests/e2e, and the
  CLI tests that run whole calls and transfers as child processes);
- ``netns``: needs root and network namespaces (tests/e2e);
- ``browser``: drives Chromium (tests/ui/test_browser.py, test_accessibility.py);
- ``pulse``: needs the virtual PulseAudio card (tests/media/test_devices_pulse.py);
- ``postgres``: the PostgreSQL variant of a test parametrized by ``db_url``;
- ``slow``: takes seconds of wall clock on its own (calls in real time,
  benchmarks, process start-ups). Listed below by test file, or by test where
  the rest of a file is quick; ``--durations=50`` finds new ones.

``make test`` runs everything; ``make test-fast`` runs
``-m "not slow and not e2e and not browser and not netns and not pulse"``.
The shared helpers (timeouts scaled by ``PQCALL_TEST_TIMEOUT_SCALE``, async
tests, polling, ports, UDP peers) are plain functions in ``tests/harness.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent

# path under tests/ (a directory, a file, or file::test name prefix) -> markers
MARKERS_BY_PLACE: dict[str, tuple[str, ...]] = {
    "e2e/": ("e2e", "netns", "slow"),
    "ui/test_browser.py": ("browser", "slow"),
    "ui/test_accessibility.py": ("browser", "slow"),
    "media/test_devices_pulse.py": ("pulse", "slow"),
    "cli/test_end_to_end.py": ("e2e", "slow"),
    "cli/test_files_processes.py": ("e2e", "slow"),
}


def _place(item: pytest.Item) -> str:
    path = Path(str(item.path))
    relative = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else path.name
    return f"{relative}::{item.name}"


def _markers_for(place: str) -> set[str]:
    names: set[str] = set()
    for prefix, markers in MARKERS_BY_PLACE.items():
        if place.startswith(prefix if prefix.endswith("/") or "::" in prefix else prefix + "::"):
            names.update(markers)
    return names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by where it lives, and PostgreSQL variants as ``postgres``."""
    for item in items:
        names = _markers_for(_place(item))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("db_url") == "postgresql":
            names.add("postgres")
        for name in sorted(names):
            item.add_marker(name)
