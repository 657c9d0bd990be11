"""The jitter buffer's delay policy: the level it steers to, and the evidence to shrink.

Scope: two small sans-I/O objects that :class:`~pqcall.media.jitter.JitterBuffer`
consults once per frame slot; numbers and ``now`` in, numbers out.

* :class:`TargetDelay`, the *target* level in frames: one frame plus the
  network's need from :class:`~pqcall.media.delay.RelativeDelayEstimator`
  (rounded down when within :data:`TARGET_ROUNDING_MS` of a whole frame),
  between ``min_target_delay_ms`` (at least one frame) and
  ``max_target_delay_ms``. While packets are being lost (in the last
  :data:`LOSS_MEMORY_S`) and FEC or redundancy is on, the target is at least
  two frames, so the packet after a lost one is there in time to recover it.
* :class:`LevelWindow`, the *filtered* level: the minimum of the buffer level
  over the last :data:`LEVEL_WINDOW_S`. The buffer shrinks only when this
  minimum exceeds the target by a frame, because the instantaneous level
  flickers by one frame when packet arrivals and playout ticks are nearly in
  phase (docs/decisions/0101-jitter-shrink-on-window-minimum.md).

* :func:`playout_speed`, with time stretching on (``media/time_stretch.py``,
  decision 0141): play a little faster (:data:`ACCELERATE_SPEED`) while the
  filtered level and the stretcher's waiting output exceed the target by a
  frame, the evidence that would otherwise discard a received frame; else at
  speed 1. With time stretching the target also starts at
  :data:`START_TARGET_MS` for :data:`START_TARGET_S`.

Memory: the estimator's bounded history and the levels of one window (a
monotonic queue, at most one entry per pop in the window).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

from pqcall.media.delay import RelativeDelayEstimator

__all__ = [
    "ACCELERATE_SPEED",
    "LEVEL_WINDOW_S",
    "LOSS_MEMORY_S",
    "MAX_TARGET_DELAY_MS",
    "MIN_TARGET_DELAY_MS",
    "QUIET_RUN_FRAMES",
    "QUIET_SHRINK_WAIT_S",
    "QUIET_START_TARGET_MS",
    "QUIET_START_TARGET_S",
    "START_TARGET_MS",
    "START_TARGET_S",
    "TARGET_ROUNDING_MS",
    "LevelWindow",
    "TargetDelay",
    "playout_speed",
    "start_target",
]

MIN_TARGET_DELAY_MS: Final = 10
"""Lowest target; the effective floor is never below one frame."""
MAX_TARGET_DELAY_MS: Final = 400
"""Highest target: ITU-T G.114 finds more than 400 ms one way unacceptable for planning."""
LOSS_MEMORY_S: Final = 4.0
"""How long after a loss the target keeps a frame of look-ahead for FEC."""
TARGET_ROUNDING_MS: Final = 5.0
"""Estimated need within this of a whole number of frames rounds down (timer noise).

See docs/decisions/0102-jitter-target-rounding.md."""
LEVEL_WINDOW_S: Final = 0.5
"""The buffer shrinks only when its level stayed above target this long (the window's minimum)."""
RECOVERY_FRAMES: Final = 2
"""Least target while recovering losses: the lost frame and the packet that carries it."""
ACCELERATE_SPEED: Final = 1.1
"""Playout speed while the buffer holds a frame more than its target (drains 20 ms in 220 ms)."""
START_TARGET_MS: Final = 60
"""With time stretching, the least target for the first :data:`START_TARGET_S` of a call:
the jitter is unknown yet, and the surplus drains by playing faster, not by discarding."""
START_TARGET_S: Final = 2.0
QUIET_RUN_FRAMES: Final = 12
"""A quiet frame is discarded only this deep into a pause (the shorter pauses between words
are heard, and PESQ-WB realigns only on the pauses between phrases; decision 0150)."""
QUIET_SHRINK_WAIT_S: Final = 3.0
"""With quiet shrinking, a frame too many held this long without a pause is shed by
discarding received frames, as without it."""
QUIET_START_TARGET_MS: Final = 80
"""With quiet shrinking (``JitterBuffer(quiet_shrink=True)``, the product's), the least
target for the first :data:`QUIET_START_TARGET_S`: the buffer fills this deep before playing
(a silent start, no concealment) and drains the surplus in a pause (decision 0150)."""
QUIET_START_TARGET_S: Final = 1.0
"""(2 s: 30 ms jitter's worst voice 3.72 against 3.37, but 10-20 % loss 0.05-0.1 lower.)"""


def start_target(
    time_stretch: bool, quiet_shrink: bool, start_target_ms: float | None = None
) -> tuple[float, float]:
    """(least target ms, for how long s) at a stream's start: deeper where a surplus drains
    cheaply; ``start_target_ms`` replaces the depth."""
    if time_stretch:
        depth, span = float(START_TARGET_MS), START_TARGET_S
    elif quiet_shrink:
        depth, span = float(QUIET_START_TARGET_MS), QUIET_START_TARGET_S
    else:
        depth, span = 0.0, START_TARGET_S
    return (depth if start_target_ms is None else start_target_ms), span


def playout_speed(level: int, filtered_level: int, target: int, extra_frames: float = 0.0) -> float:
    """The speed to play the next frame at, with time stretching on (levels in frames).

    Args:
        level: the level now, including the frame about to be rendered (0: nothing queued).
        filtered_level: the level's minimum over the last :data:`LEVEL_WINDOW_S`
            (0 before the window is full), :meth:`LevelWindow.minimum`.
        target: the target level, :meth:`TargetDelay.frames`.
        extra_frames: decoded audio waiting beyond this tick in the stretcher, in
            frames: delay like the queue's, so it counts toward the level.
    """
    del level  # slowing down when the level dips only added delay (decision 0141)
    if filtered_level and filtered_level + extra_frames - 1 >= target:
        return ACCELERATE_SPEED
    return 1.0


class TargetDelay:
    """The level the jitter buffer steers to, in frames.

    Args:
        frame_ms: frame duration, ms (positive).
        estimator: the network's need; the caller feeds it, this object only reads it.
        min_target_delay_ms: lowest target (raised to one frame if lower).
        max_target_delay_ms: highest target (never below the lowest).
        use_fec: whether lost frames may be recovered from the next packet's FEC.
        start: (least target ms, for how long s) from the first ``now`` (0 ms: none).

    Bounds are the caller's to validate (``0 <= min <= max``).
    """

    __slots__ = (
        "_ceiling_frames",
        "_copy_depth",
        "_estimator",
        "_floor_frames",
        "_frame_ms",
        "_last_loss_at",
        "_redundancy_seen",
        "_start_frames",
        "_start_s",
        "_started_at",
        "_use_fec",
    )

    def __init__(
        self,
        frame_ms: int,
        estimator: RelativeDelayEstimator,
        *,
        min_target_delay_ms: float,
        max_target_delay_ms: float,
        use_fec: bool,
        start: tuple[float, float] = (0.0, START_TARGET_S),
    ) -> None:
        self._frame_ms = frame_ms  # frame duration, ms
        self._start_frames = math.ceil(start[0] / frame_ms)  # least, at first
        self._start_s = start[1]  # for so long
        self._started_at: float | None = None  # first ``now`` asked about
        self._estimator = estimator  # network need, ms
        self._floor_frames = max(1, math.ceil(min_target_delay_ms / frame_ms))
        self._ceiling_frames = max(self._floor_frames, int(max_target_delay_ms // frame_ms))
        self._use_fec = use_fec  # the sender's packets carry in-band FEC
        self._redundancy_seen = False  # the sender sends redundant copies
        self._copy_depth = 0  # copies of frames before the previous one, per packet
        self._last_loss_at: float | None = None  # when a frame was last lost

    def note_loss(self, now: float) -> None:
        """A frame was lost (skipped, recovered or concealed) at ``now``."""
        self._last_loss_at = now

    def note_redundancy(self) -> None:
        """The sender repeats the previous frame in its packets."""
        self._redundancy_seen = True

    def note_copies(self, depth: int) -> None:
        """The sender's packets carry copies of ``depth`` frames before the previous one.

        While loss is recent the target then holds the packets that carry them
        (decision 0220: a burst of three is repaired from the fourth packet).
        """
        self._copy_depth = max(self._copy_depth, depth)

    def frames(self, now: float | None) -> int:
        """The target at ``now`` (None before any packet or pop), in frames."""
        need_ms = self._frame_ms + self._estimator.estimate_ms - TARGET_ROUNDING_MS
        frames = max(self._floor_frames, math.ceil(need_ms / self._frame_ms))
        if self._start_frames and now is not None:
            if self._started_at is None:
                self._started_at = now
            if now - self._started_at < self._start_s:
                frames = max(frames, self._start_frames)
        recovering = self._use_fec or self._redundancy_seen
        if recovering and self._last_loss_at is not None and now is not None:
            if now - self._last_loss_at < LOSS_MEMORY_S:
                frames = max(frames, RECOVERY_FRAMES + self._copy_depth)
        return min(frames, self._ceiling_frames)


class LevelWindow:
    """The buffer level's minimum over the last :data:`LEVEL_WINDOW_S`, for shrinking.

    The caller records the level at each pop with :meth:`record`, tells of each
    frame shrunk with :meth:`note_shrink`, and starts afresh with :meth:`clear`
    when playout (re)starts. Levels from before a shrink count one frame lower
    per frame shrunk since (the playout point moved on under them), so one
    window of evidence allows every shrink down to the target.
    """

    __slots__ = ("_levels", "_shrinks", "_since")

    def __init__(self) -> None:
        # (now, level + shrinks at the time), the window's minimum first (a monotonic queue)
        self._levels: deque[tuple[float, int]] = deque()
        self._since: float | None = None  # ``now`` of the first level in this history
        self._shrinks = 0  # frames shrunk since the history started

    def clear(self) -> None:
        """Forget every level and shrink: playout starts again."""
        self._levels.clear()
        self._since = None
        self._shrinks = 0

    def note_shrink(self) -> None:
        """One frame was shrunk (skipped or discarded) to cut delay."""
        self._shrinks += 1

    def minimum(self, now: float) -> int:
        """The minimum over the window recorded so far (0 before it covers a whole window)."""
        if self._since is None or not self._levels or now - self._since < LEVEL_WINDOW_S:
            return 0
        return self._levels[0][1] - self._shrinks

    def record(self, level: int, now: float) -> int:
        """Record the level at this pop; return its minimum over :data:`LEVEL_WINDOW_S`.

        Before the history covers a whole window, return 0 (no evidence for a
        shrink yet).
        """
        levels = self._levels
        stored = level + self._shrinks
        while levels and levels[-1][1] >= stored:
            levels.pop()
        levels.append((now, stored))
        horizon = now - LEVEL_WINDOW_S
        while levels[0][0] < horizon:
            levels.popleft()
        if self._since is None:
            self._since = now
        if now - self._since < LEVEL_WINDOW_S:
            return 0
        return levels[0][1] - self._shrinks
