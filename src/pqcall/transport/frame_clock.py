"""The frame clock of a media session: when each frame is due, drift-free (pure).

Tick ``n`` is due at ``start + n * period``, so lateness never accumulates;
a tick that fires late runs every frame due by then (catching up), unless it
is more than :data:`MAX_CATCH_UP_FRAMES` late (an event-loop stall), when the
lost time is skipped rather than burst out as a backlog. No clock here:
the pump passes ``now`` and schedules a callback at :attr:`FrameClock.due`.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["MAX_CATCH_UP_FRAMES", "FrameClock"]

MAX_CATCH_UP_FRAMES: Final = 5
"""A tick this many frames late skips ahead instead of catching up (an event-loop stall)."""


class FrameClock:
    """Frame ticks at ``start + index * period``.

    Args:
        start: ``now`` of tick 0.
        period: seconds between ticks (one frame).
    """

    __slots__ = ("index", "period", "skipped", "start")

    def __init__(self, start: float, period: float) -> None:
        self.start = start  # `now` of tick 0
        self.period = period  # seconds between ticks
        self.index = 0  # the next tick to run
        self.skipped = 0  # ticks skipped after stalls

    @property
    def due(self) -> float:
        """When the next tick is due."""
        return self.start + self.index * self.period

    def frames_due(self, now: float) -> int:
        """How many frames to run at ``now`` (at least the one this tick fired for).

        After a stall, skips the lost ticks (counted in :attr:`skipped`) and returns 1.
        """
        if now < self.start + (self.index + 1) * self.period:
            return 1  # on time: the usual case
        due = max(1, math.floor((now - self.start) / self.period) - self.index + 1)
        if due > MAX_CATCH_UP_FRAMES:
            # a stall: skip the lost time rather than burst a backlog
            self.skipped += due - 1
            self.index += due - 1
            return 1
        return due
