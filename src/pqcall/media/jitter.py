"""Adaptive jitter buffer: packets and ``now`` in, one playout decision per frame out.

Scope: reorder, de-duplicate and time the playout of opaque encoded frames
(one frame per packet, ``frame_ms`` long, RTP-style 16-bit sequence numbers
and 48 kHz timestamps), and tell the decoder wrapper what to do for each
frame slot. No codec, socket or clock here (sans-I/O, as ``aioquic``).
This module is the playout side; the arrival side (sequence windows,
duplicates, stream resets, the queue) is ``media/jitter_arrival.py``, the
delay policy (target level, filtered level) ``media/jitter_policy.py``, the
network's need ``media/delay.py``, and the values it returns
``media/playout.py``. The names its callers use are re-exported here.

Calling contract::

    buffer = JitterBuffer(frame_ms=20)
    buffer.push(seq, timestamp, payload, now=loop.time(), redundant=previous)
    # once per frame_ms, driven by the playout clock:
    decision = buffer.pop(now=loop.time())

and then render the slot as the decision's :class:`~pqcall.media.playout.PlayoutAction`
says (PLAY, FEC, REDUNDANT, CONCEAL or SILENCE; see ``media/playout.py``).

How it plays (the policy, in the order :meth:`JitterBuffer.pop` applies it):

* *Level* is the audio queued from the playout point to the newest queued
  frame, in frames, including the one about to be rendered. The buffer
  steers it to the *target* of :class:`~pqcall.media.jitter_policy.TargetDelay`
  (one frame plus the estimated need, bounded; two frames while recovering
  losses).
* Grow only where audio is missing anyway: a frame missing at its playout
  time while the level is below target is waited for (rendered as CONCEAL,
  the playout point holds); an underrun does the same. When the frame
  arrives it plays one frame later: the delay grew by one frame. If it
  never does, the wait stood in for it, or, when the buffer is still below
  target, the frame is recovered from the next packet after the wait (the
  growth then carries real audio). Nothing is inserted between frames that
  are present.
* A missing frame whose time has come (level at or above target) is lost:
  REDUNDANT if the next packet carries a copy, else FEC if the next packet is
  queued, else CONCEAL. Frames already rendered by waiting are skipped.
* Shrink when the *filtered* level, its minimum over the last
  :data:`LEVEL_WINDOW_S` (:class:`~pqcall.media.jitter_policy.LevelWindow`),
  exceeds the target by a frame: first by skipping a missing frame instead
  of concealing it (costs no received audio), else by discarding one
  received frame, at most one in :data:`MIN_FRAMES_BETWEEN_SHRINKS` (10 %
  time compression; the payloads are opaque, so low-energy frames cannot be
  preferred). Starting after silence, a backlog older than the target is
  dropped at once.
* With ``quiet_shrink`` (the product's; decision 0150) the buffer first fills to
  ``QUIET_START_TARGET_MS`` (the jitter is unknown yet; a silent start costs no audio)
  and sheds a surplus in pauses: quiet frames :data:`QUIET_RUN_FRAMES` or more into
  one, offered to :meth:`JitterBuffer.shrink_quiet`; a missing frame with a copy
  queued is recovered, not skipped; a received frame is discarded only after
  :data:`QUIET_SHRINK_WAIT_S` of surplus without a pause.
* After :data:`MAX_CONCEALMENT_MS` of underrun the buffer goes silent and,
  when packets return, refills to the target before playing (a talk spurt
  starting late costs nothing). A long silence therefore never adds delay.
* A sender restart or clock jump starts a new stream (a *reset*, see
  :class:`~pqcall.media.jitter_arrival.ArrivalQueue`): the queue is flushed
  and the buffer fills again.

Memory: at most ``max_queued_packets`` queued (when full, the frame farthest
in the future is dropped), a sequence number window of
:data:`MAX_MISORDER_PACKETS` behind and :data:`MAX_JUMP_MS` ahead of the
playout point, the levels of the last :data:`LEVEL_WINDOW_S` and the
estimator's bounded history (kept sorted as it goes, never re-sorted).

Invariants (tested): every :meth:`~JitterBuffer.pop` returns exactly one
decision, so ``played + fec_recovered + redundancy_recovered + concealed +
silence`` equals the number of pops; decisions that carry a sequence number
come in strictly increasing order, each number at most once, and
``skipped`` counts the numbers passed over before it; every accepted packet
ends up played, discarded (``shrink_dropped``, ``overflow_dropped``,
``flushed``) or still queued.

Time stretching (off; decision 0141): the caller plays at :meth:`JitterBuffer.playout_speed`,
popping as it needs; the buffer then never discards a received frame to shrink.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pqcall.exceptions import LocalProtocolError
from pqcall.media.delay import RelativeDelayEstimator
from pqcall.media.jitter_arrival import (
    MAX_JUMP_MS,
    MAX_MISORDER_PACKETS,
    SEQUENCE_MODULUS,
    TIMESTAMP_MODULUS,
    ArrivalQueue,
    QueuedPacket,
)
from pqcall.media.jitter_policy import (
    LEVEL_WINDOW_S,
    LOSS_MEMORY_S,
    MAX_TARGET_DELAY_MS,
    MIN_TARGET_DELAY_MS,
    QUIET_RUN_FRAMES,
    QUIET_SHRINK_WAIT_S,
    TARGET_ROUNDING_MS,
    LevelWindow,
    TargetDelay,
    playout_speed,
    start_target,
)
from pqcall.media.playout import (
    JitterBufferStats,
    PacketArrival,
    PacketFate,
    PlayoutAction,
    PlayoutDecision,
    PlayoutState,
)

__all__ = [
    "DEFAULT_FRAME_MS",
    "LEVEL_WINDOW_S",
    "LOSS_MEMORY_S",
    "MAX_CONCEALMENT_MS",
    "MAX_JUMP_MS",
    "MAX_MISORDER_PACKETS",
    "MAX_QUEUED_PACKETS",
    "MAX_TARGET_DELAY_MS",
    "MIN_FRAMES_BETWEEN_SHRINKS",
    "MIN_TARGET_DELAY_MS",
    "QUIET_RUN_FRAMES",
    "QUIET_SHRINK_WAIT_S",
    "SUPPORTED_FRAME_MS",
    "TARGET_ROUNDING_MS",
    "JitterBuffer",
    "JitterBufferStats",
    "PacketArrival",
    "PacketFate",
    "PlayoutAction",
    "PlayoutDecision",
    "PlayoutState",
]

SUPPORTED_FRAME_MS: Final = (10, 20, 40, 60)
DEFAULT_FRAME_MS: Final = 20
MAX_QUEUED_PACKETS: Final = 128
"""Hard cap on queued packets (1.28 s of 10 ms frames: three times the maximum target)."""
MAX_CONCEALMENT_MS: Final = 200
"""Underrun rendered as concealment before the buffer goes silent and refills."""
MIN_FRAMES_BETWEEN_SHRINKS: Final = 10
"""At most one received frame in ten is discarded to cut delay."""
MAX_COPY_LOOKAHEAD_FRAMES: Final = 3
"""A lost frame's copy is looked for up to this many packets on (n+1's redundant copy,
then the older copies of n+2 and n+3: the sender's backup mode, decision 0220)."""


class JitterBuffer:
    """Adaptive jitter buffer with reordering, FEC/redundancy and concealment.

    Args:
        frame_ms: frame duration, one of :data:`SUPPORTED_FRAME_MS`.
        min_target_delay_ms: lowest target (raised to one frame if lower).
        max_target_delay_ms: highest target.
        max_queued_packets: hard cap on queued packets.
        use_fec: whether lost frames may be recovered from the next packet's
            in-band FEC (the sender's encoder has FEC on).
        has_fec: optional probe telling whether a payload carries FEC for
            the frame before it (``pqcall.media.codec.has_fec``); without it,
            every next packet is assumed to.
        time_stretch: the caller plays at :meth:`playout_speed` (decision
            0141): the buffer then never discards a received frame to shrink
            (playing faster drains it), and may be popped more or less than
            once per frame tick.
        start_target_ms: least target at a stream's start (None:
            ``jitter_policy.start_target``'s default).
        quiet_shrink: the caller offers quiet frames to :meth:`shrink_quiet`
            (the policy: the module docstring; decision 0150).

    Raises:
        LocalProtocolError: an argument is out of range.
    """

    # fixed attributes, used on every packet: slots make each read a direct load
    # (CPython 3.11 stops sharing an instance dict's keys at 30 attributes, and reads
    # from an unshared dict are hashed lookups; the media path measured 5 % slower)
    __slots__ = (
        "_arrivals",
        "_counts",
        "_covered",
        "_estimator",
        "_fill_pops",
        "_frame_ms",
        "_has_fec",
        "_in_concealment",
        "_level",
        "_next",
        "_now",
        "_pops_since_shrink",
        "_queue",
        "_quiet_shrink",
        "_started",
        "_state",
        "_surplus_since",
        "_target",
        "_time_stretch",
        "_use_fec",
        "_waited_s",
        "_window",
    )

    def __init__(
        self,
        frame_ms: int = DEFAULT_FRAME_MS,
        *,
        min_target_delay_ms: float = MIN_TARGET_DELAY_MS,
        max_target_delay_ms: float = MAX_TARGET_DELAY_MS,
        max_queued_packets: int = MAX_QUEUED_PACKETS,
        use_fec: bool = True,
        has_fec: Callable[[bytes], bool] | None = None,
        time_stretch: bool = False,
        start_target_ms: float | None = None,
        quiet_shrink: bool = False,
    ) -> None:
        if frame_ms not in SUPPORTED_FRAME_MS:
            raise LocalProtocolError(f"frame duration must be one of {SUPPORTED_FRAME_MS} ms")
        if not 0 <= min_target_delay_ms <= max_target_delay_ms:
            raise LocalProtocolError("target delay bounds must satisfy 0 <= min <= max")
        if max_queued_packets < 2:
            raise LocalProtocolError("the queue must hold at least 2 packets")
        self._frame_ms = frame_ms  # frame duration, ms
        self._use_fec = use_fec  # the sender's packets carry in-band FEC
        self._has_fec = has_fec  # payload probe for FEC, if any
        self._time_stretch = time_stretch  # shrink by playing faster, not by discarding
        self._estimator = RelativeDelayEstimator()  # network need, ms; fed here
        self._target = TargetDelay(  # the level to steer to, from the need
            frame_ms,
            self._estimator,
            min_target_delay_ms=min_target_delay_ms,
            max_target_delay_ms=max_target_delay_ms,
            use_fec=use_fec,
            start=start_target(time_stretch, quiet_shrink, start_target_ms),
        )
        self._quiet_shrink = quiet_shrink  # the caller offers quiet frames to discard
        self._surplus_since: float | None = None  # since when a frame too many is held
        self._window = LevelWindow()  # the filtered level, evidence for shrinking
        self._state = PlayoutState.AWAITING_PACKETS
        self._started = False  # this stream has rendered a frame
        self._next = 0  # extended seq of the next frame to render (the playout point)
        self._covered = 0  # frames from ``_next`` on already rendered by waiting, or skipped
        self._fill_pops = 0  # silent pops spent filling
        self._pops_since_shrink = 0  # pops since a received frame was discarded
        self._in_concealment = False  # the previous decision was CONCEAL
        self._now: float | None = None  # latest ``now``
        self._level = 0  # level at the last pop, frames
        self._waited_s = 0.0  # total wait of played packets
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "played concealed fec_recovered redundancy_recovered silence skipped "
                "shrink_dropped late_dropped duplicates overflow_dropped stray_dropped "
                "flushed resets concealment_events"
            ).split(),
            0,
        )
        self._arrivals = ArrivalQueue(  # the queue, sequence windows and stream resets
            frame_ms, max_queued_packets, self._estimator, self._counts
        )
        self._queue = self._arrivals.queue  # extended seq -> packet (the same dict)

    @property
    def frame_ms(self) -> int:
        """Frame duration in ms."""
        return self._frame_ms

    @property
    def state(self) -> PlayoutState:
        """What the buffer waits for now."""
        return self._state

    def has_next_frame(self) -> bool:
        """Whether :meth:`pop` would render a received frame (or nothing is awaited).

        False while playing and the frame at the playout point is missing: a
        pump whose tick came late (its process was descheduled) may hold such a
        catch-up pop until the datagrams already in its socket are pushed,
        rather than conceal audio that is there (``transport/frame_clock.py``).
        """
        return self._state is not PlayoutState.PLAYING or self._next in self._queue

    def push(
        self,
        seq: int,
        timestamp: int,
        payload: bytes,
        now: float,
        *,
        redundant: bytes | None = None,
        older: tuple[bytes, ...] = (),
    ) -> PacketArrival:
        """Offer a received packet.

        Args:
            seq: 16-bit sequence number (one per frame).
            timestamp: 32-bit media timestamp in 48 kHz sample units.
            payload: the encoded frame (opaque, non-empty).
            now: arrival time, seconds on a monotonic clock.
            redundant: the encoded previous frame, if the sender repeats it.
            older: low-rate copies of frames ``seq - 2``, ``seq - 3``... (the
                sender's backup mode, decision 0220), used like ``redundant``.

        Returns:
            What happened to the packet. Failures (late, duplicate...) are
            counted, never raised.

        Raises:
            LocalProtocolError: an argument is out of range or ``now`` went back.
        """
        if not 0 <= seq < SEQUENCE_MODULUS:
            raise LocalProtocolError("sequence number must fit in 16 bits")
        if not 0 <= timestamp < TIMESTAMP_MODULUS:
            raise LocalProtocolError("timestamp must fit in 32 bits")
        if not payload:
            raise LocalProtocolError("payload must not be empty")
        if (redundant is not None and not redundant) or not all(older):
            raise LocalProtocolError("redundant data must be None or non-empty")
        if self._now is not None and now < self._now:
            raise LocalProtocolError("now must not go back")
        self._now = now
        self._estimator.advance(now)
        if redundant is not None:
            self._target.note_redundancy()
            redundant = bytes(redundant)
        if older:
            self._target.note_copies(len(older))
            older = tuple(bytes(copy) for copy in older)
        packet = QueuedPacket(bytes(payload), redundant, now, older)
        admission = self._arrivals.admit(
            seq,
            timestamp,
            packet,
            now,
            next_seq=self._next,
            position=self._next + self._covered,
            is_started=self._started,
        )
        if admission.stream_start is not None:
            self._started = False
            self._next = admission.stream_start
            self._covered = 0
            self._state = PlayoutState.FILLING
            self._fill_pops = 0
        else:
            if admission.earliest is not None:
                self._next = admission.earliest
            queued = admission.fate is PacketFate.QUEUED
            if queued and self._state is PlayoutState.AWAITING_PACKETS:
                self._state = PlayoutState.FILLING
                self._fill_pops = 0
        return PacketArrival(seq, timestamp, now, admission.fate, admission.is_reset)

    def pop(self, now: float) -> PlayoutDecision:
        """Decide how to render the next frame slot; call once per frame.

        Raises:
            LocalProtocolError: ``now`` went back.
        """
        if self._now is not None and now < self._now:
            raise LocalProtocolError("now must not go back")
        self._now = now
        self._estimator.advance(now)
        if self._state is PlayoutState.PLAYING:
            decision = self._play(now)
        elif self._state is PlayoutState.FILLING and self._queue:
            decision = self._fill(now)
        else:
            decision = self._silence()
        self._count(decision)
        return decision

    def shrink_quiet(self, now: float, quiet_frames: int) -> PlayoutDecision | None:
        """The frame of the last PLAY was quiet: discard it if the buffer holds a frame too many.

        Call right after rendering a PLAY whose audio was quiet, the last of
        ``quiet_frames`` in a row. In a pause (:data:`QUIET_RUN_FRAMES` or more),
        with a frame too many held and the next frame queued, the quiet frame counts
        as discarded (``shrink_dropped``) and the next frame's PLAY is returned for
        the same slot (decode both, render this one). Else None: render the quiet one.
        """
        if not self._quiet_shrink or self._state is not PlayoutState.PLAYING or self._covered:
            return None
        if quiet_frames < QUIET_RUN_FRAMES or self._next not in self._queue:
            return None
        if self._window.minimum(now) - 1 < self._target.frames(now):
            return None
        self._counts["played"] -= 1
        self._counts["shrink_dropped"] += 1
        self._window.note_shrink()
        self._pops_since_shrink = 0
        self._surplus_since = now
        self._level -= 1
        decision = self._render_present(0, now)
        self._count(decision)
        return decision

    def playout_speed(self, now: float, extra_frames: float = 0.0) -> float:
        """The speed to play the frame just popped at (``jitter_policy.playout_speed``).

        1.0 unless playing with ``time_stretch`` on.
        """
        if not self._time_stretch or self._state is not PlayoutState.PLAYING:
            return 1.0
        target = self._target.frames(now)
        return playout_speed(self._level, self._window.minimum(now), target, extra_frames)

    def snapshot(self) -> JitterBufferStats:
        """Current counters and delays."""
        played = self._counts["played"]
        return JitterBufferStats(
            frame_ms=self._frame_ms,
            **self._counts,
            queued_packets=len(self._queue),
            target_delay_ms=float(self._target.frames(self._now) * self._frame_ms),
            buffered_delay_ms=float(self._level * self._frame_ms),
            mean_delay_ms=1000.0 * self._waited_s / played if played else 0.0,
        )

    # playout

    def _silence(self) -> PlayoutDecision:
        if self._arrivals.is_anchored:
            self._covered += 1  # keep the playout point moving with the sender's clock
        self._level = 0
        return PlayoutDecision(PlayoutAction.SILENCE)

    def _fill(self, now: float) -> PlayoutDecision:
        target = self._target.frames(now)
        newest = max(self._queue)
        level = newest - min(self._queue) + 1
        if level < target and self._fill_pops < target - 1:
            self._fill_pops += 1
            return self._silence()
        # start at most one target behind the newest frame: older backlog is stale
        start = min(ext for ext in self._queue if ext >= newest - target + 1)
        skipped = self._pass_to(start, now)
        self._state = PlayoutState.PLAYING
        self._started = True
        self._pops_since_shrink = 0
        self._level = newest - start + 1
        self._window.clear()
        self._window.record(self._level, now)
        return self._render_present(skipped, now)

    def _play(self, now: float) -> PlayoutDecision:
        target = self._target.frames(now)
        self._pops_since_shrink += 1
        if not self._queue:
            self._window.record(0, now)
            return self._underrun()
        first = min(self._queue)
        skipped = 0
        if first == self._next:
            self._covered = 0  # it came while we waited: the wait was growth
        elif self._next + self._covered >= first:
            # every missing frame before ``first`` was rendered while waiting: lost
            self._target.note_loss(now)
            target = self._target.frames(now)
            if max(self._queue) - first + 1 < target and self._can_recover(first):
                skipped = self._pass_to(self._earliest_copy(first), now)
                self._level = max(self._queue) - self._next + 1
                self._window.record(self._level, now)
                return self._recover(skipped, now)  # grow by one, with real audio
            skipped = self._pass_to(first, now)
            self._covered = 0  # waiting longer than the gap was growth
        level = max(self._queue) - (self._next + self._covered) + 1
        if self._window.record(level, now) - 1 < target:
            self._surplus_since = None
        else:
            if self._surplus_since is None:
                self._surplus_since = now
            surplus_since = self._surplus_since
            missing = self._next + self._covered
            if first > missing and not (self._quiet_shrink and self._copy_of(missing)):
                # shrink for free: skip a missing frame instead of concealing it (with
                # quiet_shrink, only one no packet carries a copy of: the copy is real
                # audio, and the delay shrinks in the next pause instead)
                self._covered += 1
                self._window.note_shrink()
                level -= 1
                if self._next + self._covered >= first:
                    skipped += self._pass_to(first, now)
            elif (
                not self._time_stretch
                and self._pops_since_shrink >= MIN_FRAMES_BETWEEN_SHRINKS
                and self._next + 1 in self._queue
                and (not self._quiet_shrink or now - surplus_since >= QUIET_SHRINK_WAIT_S)
            ):
                skipped += self._pass_to(self._next + 1, now)  # discard one received frame
                self._pops_since_shrink = 0
                self._window.note_shrink()
                level -= 1
                first = self._next
        self._level = level
        if first == self._next:
            return self._render_present(skipped, now)
        if level < target:
            # not due yet: wait for it (it may be reordered), growing by one frame
            self._covered += 1
            return PlayoutDecision(PlayoutAction.CONCEAL, skipped=skipped)
        skipped += self._pass_to(self._next + self._covered, now)
        return self._recover(skipped, now)

    def _underrun(self) -> PlayoutDecision:
        self._covered += 1
        self._level = 0
        if self._covered * self._frame_ms > MAX_CONCEALMENT_MS:
            self._state = PlayoutState.AWAITING_PACKETS
            return PlayoutDecision(PlayoutAction.SILENCE)
        return PlayoutDecision(PlayoutAction.CONCEAL)

    def _can_recover(self, ext: int) -> bool:
        packet = self._queue[ext]
        return packet.redundant is not None or self._fec_in(packet)

    def _copy_of(self, lost: int) -> tuple[PlayoutAction, bytes] | None:
        """How to render frame ``lost`` from a queued packet's copy of it, if one has one."""
        following = self._queue.get(lost + 1)
        if following is not None and following.redundant is not None:
            return PlayoutAction.REDUNDANT, following.redundant
        if following is not None and self._fec_in(following):
            return PlayoutAction.FEC, following.payload
        for ahead in range(2, MAX_COPY_LOOKAHEAD_FRAMES + 1):  # older copies, nearest first
            carrier = self._queue.get(lost + ahead)
            if carrier is not None and len(carrier.older) >= ahead - 1:
                return PlayoutAction.REDUNDANT, carrier.older[ahead - 2]
        return None

    def _earliest_copy(self, ext: int) -> int:
        """The earliest missing frame packet ``ext`` holds a copy of (``ext - 1`` without older)."""
        return max(self._next, ext - 1 - len(self._queue[ext].older))

    def _fec_in(self, packet: QueuedPacket) -> bool:
        if not self._use_fec:
            return False
        return self._has_fec is None or self._has_fec(packet.payload)

    def _pass_to(self, ext: int, now: float) -> int:
        """Move the playout point to ``ext`` without rendering; count what is passed."""
        passed = ext - self._next
        if passed <= 0:
            return 0
        discarded = [queued for queued in self._queue if queued < ext]
        for queued in discarded:
            del self._queue[queued]
            self._arrivals.remember(queued, self._next)
        self._counts["shrink_dropped"] += len(discarded)
        if passed > len(discarded):
            self._counts["skipped"] += passed - len(discarded)
            self._target.note_loss(now)
        self._next = ext
        self._covered = max(0, self._covered - passed)
        return passed

    def _render_present(self, skipped: int, now: float) -> PlayoutDecision:
        ext = self._next
        packet = self._queue.pop(ext)
        self._arrivals.remember(ext, self._next)
        self._next += 1
        self._covered = 0
        self._waited_s += now - packet.arrival
        return PlayoutDecision(PlayoutAction.PLAY, packet.payload, ext % SEQUENCE_MODULUS, skipped)

    def _recover(self, skipped: int, now: float) -> PlayoutDecision:
        lost = self._next
        self._next += 1
        self._covered = 0
        self._target.note_loss(now)
        seq = lost % SEQUENCE_MODULUS
        copy = self._copy_of(lost)
        if copy is None:
            return PlayoutDecision(PlayoutAction.CONCEAL, seq=seq, skipped=skipped)
        return PlayoutDecision(copy[0], copy[1], seq, skipped)

    def _count(self, decision: PlayoutDecision) -> None:
        action = decision.action
        self._counts[_COUNTER[action]] += 1
        concealing = action is PlayoutAction.CONCEAL
        if concealing and not self._in_concealment:
            self._counts["concealment_events"] += 1
        self._in_concealment = concealing


_COUNTER: Final = {
    PlayoutAction.PLAY: "played",
    PlayoutAction.FEC: "fec_recovered",
    PlayoutAction.REDUNDANT: "redundancy_recovered",
    PlayoutAction.CONCEAL: "concealed",
    PlayoutAction.SILENCE: "silence",
}
"""The counter each decision adds to."""
