#!/usr/bin/env python3
"""Regenerate the browser UI's pictures in docs/screenshots/.

Runs ``tests/ui/test_screenshots.py`` (a real server, two ``pqcall ui``
processes and headless Chromium, see that file) and the group call test of
``tests/ui/test_browser_group.py`` (four pages: ``group-call.png``) with ``PQCALL_SCREENSHOTS``
pointing at ``docs/screenshots``. Needs Playwright and Debian's Chromium, as
the browser tests do. Usage, from the checkout::

    .venv/bin/python scripts/screenshots.py

Look at every picture afterwards: the test checks the states, not the looks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"


def main() -> int:
    env = dict(os.environ, PQCALL_SCREENSHOTS=str(OUT), PQCALL_TEST_BROWSER="1")
    command = [sys.executable, "-m", "pytest", "tests/ui/test_screenshots.py", "-q"]
    command += ["tests/ui/test_browser_group.py::test_group_call_started_extended_muted_and_left"]
    status = subprocess.call(command, cwd=ROOT, env=env)
    if status == 0:
        for path in sorted(OUT.glob("*.png")):
            print(path.relative_to(ROOT))  # noqa: T201
    return status


if __name__ == "__main__":
    sys.exit(main())
