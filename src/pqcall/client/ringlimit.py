"""How often one caller may ring us unanswered before their calls stop ringing (pure).

A caller whose calls to us ended unanswered (declined or missed)
:data:`RING_LIMIT_UNANSWERED` times within :data:`RING_LIMIT_WINDOW_S` is
*cooling down* for :data:`RING_COOLDOWN_S` after the last of them: the phone
answers their calls ``busy`` without ringing. Calls turned away during the
cool-down do not extend it, so a persistent caller rings at most
:data:`RING_LIMIT_UNANSWERED` times per window plus cool-down. An answered
call forgets the caller's count (they are wanted).

No I/O, no clock: every method takes ``now`` (Unix seconds). Memory is bounded
by :data:`MAX_TRACKED_CALLERS` (the callers seen longest ago are forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict, deque

RING_LIMIT_UNANSWERED = 3
"""Unanswered calls from one caller within the window that start a cool-down."""
RING_LIMIT_WINDOW_S = 10 * 60.0
"""The window the unanswered calls are counted in, in seconds."""
RING_COOLDOWN_S = 30 * 60.0
"""How long after the last unanswered call the caller's calls do not ring, in seconds."""
MAX_TRACKED_CALLERS = 1000
"""Callers remembered at most."""


class RingLimiter:
    """Unanswered calls per caller, and who is cooling down. Empty when made."""

    def __init__(self) -> None:
        self._unanswered: OrderedDict[str, deque[float]] = OrderedDict()  # caller -> times

    def call_unanswered(self, caller: str, now: float) -> None:
        """A call from ``caller`` rang and ended unanswered (declined or missed) at ``now``."""
        times = self._unanswered.pop(caller, None) or deque(maxlen=RING_LIMIT_UNANSWERED)
        times.append(now)
        self._unanswered[caller] = times  # newest last
        while len(self._unanswered) > MAX_TRACKED_CALLERS:
            self._unanswered.popitem(last=False)

    def call_answered(self, caller: str) -> None:
        """A call with ``caller`` was answered: forget their unanswered calls."""
        self._unanswered.pop(caller, None)

    def is_cooling_down(self, caller: str, now: float) -> bool:
        """Whether a call from ``caller`` at ``now`` must not ring."""
        times = self._unanswered.get(caller)
        if times is None or len(times) < RING_LIMIT_UNANSWERED:
            return False
        first, last = times[0], times[-1]
        return last - first <= RING_LIMIT_WINDOW_S and now - last < RING_COOLDOWN_S
