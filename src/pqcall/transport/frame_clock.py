"""The frame clock of a media session: when each frame is due, drift-free (pure).

Tick ``n`` is due at ``start + n * period``, so lateness never accumulates;
a tick that fires late runs every frame due by then (catching up), unless it
is more than :data:`MAX_CATCH_UP_FRAMES` late (an event-loop stall), when the
lost time is skipped rather than burst out as a backlog. No clock here:
the pump passes ``now`` and schedules a callback at :attr:`FrameClock.due`.

Playout of a late tick: the frames the peer sent while our process was
descheduled are in the socket, not yet in the jitter buffer (asyncio reads
one datagram per loop iteration, and runs the tick before the rest). So the
clock keeps the plays it owes: a catch-up play waits while its frame is
missing, and each datagram that arrives lets the owed plays go on
(:meth:`FrameClock.may_play`); whatever is still owed at the next tick is
played then, concealed if it must be. An on-time tick plays at once, as ever.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["MAX_CATCH_UP_FRAMES", "FrameClock"]

MAX_CATCH_UP_FRAMES: Final = 5
"""A tick this many frames late skips ahead instead of catching up (an event-loop stall)."""


class FrameClock:
    """Frame ticks at ``start + index * period``, and the plays owed to late ones.

    Args:
        start: ``now`` of tick 0.
        period: seconds between ticks (one frame).

    Calling contract (the pump's)::

        n = clock.frames_due(now)      # at the tick: send n frames, then
        clock.owe_plays(n)             # returns the plays to make now whatever comes
        while clock.may_play(engine.has_next_frame()): play one frame
        # after each datagram, the same loop: only frames that are here play
    """

    __slots__ = ("forced", "index", "owed", "period", "skipped", "start")

    def __init__(self, start: float, period: float) -> None:
        self.start = start  # `now` of tick 0
        self.period = period  # seconds between ticks
        self.index = 0  # the next tick to run
        self.skipped = 0  # ticks skipped after stalls
        self.owed = 0  # frames to play that a late tick held for their packets
        self.forced = 0  # plays the current tick makes whether or not the frame is here

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

    def owe_plays(self, frames: int) -> None:
        """A tick ran ``frames`` frames: the plays still owed from before are due now."""
        # held a whole tick: play them, concealed if need be; on time: play at once, as ever
        self.forced = self.owed + (1 if frames == 1 else 0)
        self.owed += frames

    def may_play(self, has_frame: bool) -> bool:
        """Whether to play one owed frame now (counts it); ``has_frame``: its packet is here.

        A forced play goes whatever; a catch-up play only when its frame is here.
        """
        if self.owed == 0:
            return False
        if self.forced > 0:
            self.forced -= 1
        elif not has_frame:
            return False
        self.owed -= 1
        return True
