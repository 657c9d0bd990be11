"""CPU hogs: busy processes beside a benchmark, to measure a call on a busy machine.

``with CpuHogs(n) as hogs:`` starts ``n`` child interpreters that spin
(``while True: pass``) until the block ends, then kills and reaps them, also
when the block raises. ``n = 0`` starts nothing. :meth:`CpuHogs.describe`
says what ran and the load average the benchmark saw (Unix; "n/a" elsewhere).
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import TracebackType
from typing import Final, Self

__all__ = ["HOG_CODE", "CpuHogs"]

HOG_CODE: Final = "while True: pass"
"""What each hog runs."""


def _load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


class CpuHogs:
    """``count`` busy processes for the length of a ``with`` block."""

    def __init__(self, count: int) -> None:
        if count < 0:
            raise ValueError("the number of CPU hogs must be 0 or more")
        self._count = count  # hogs to start
        self._processes: list[subprocess.Popen[bytes]] = []  # running hogs
        self._load_at_stop: tuple[float, float, float] | None = None  # when they were stopped

    @property
    def count(self) -> int:
        """How many hogs run (or ran) in the block."""
        return self._count

    def __enter__(self) -> Self:
        for _ in range(self._count):
            self._processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", HOG_CODE],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._load_at_stop = _load_average()
        for process in self._processes:
            process.kill()
        for process in self._processes:
            process.wait()
        self._processes.clear()

    def describe(self) -> str:
        """One line: how many hogs ran and the 1/5/15-minute load average when they stopped."""
        load = self._load_at_stop or _load_average()
        shown = "n/a" if load is None else " / ".join(f"{value:.2f}" for value in load)
        cores = os.cpu_count() or 1
        return (
            f"{self._count} CPU hog(s) ({HOG_CODE!r}) ran beside the calls and were stopped;"
            f" load average 1/5/15 min: {shown} on {cores} core(s)"
        )
