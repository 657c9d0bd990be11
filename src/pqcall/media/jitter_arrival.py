"""The jitter buffer's arrival side: received frames by extended sequence number.

Scope: admit one packet at a time into the queue that
:class:`~pqcall.media.jitter.JitterBuffer` plays from. Unwrap its 16-bit
sequence number and 32-bit timestamp around the playout point (RFC 3550
appendix A.1 windows), drop duplicates, late packets, stragglers and strays,
detect a new stream (a *reset*), feed the delay estimator with each accepted
packet's transit time, and cap the queue. Sans-I/O: ``now`` is passed in.

A new stream starts on two consecutive packets outside the window
(RFC 3550 appendix A.1 probation) or on a newer sequence number with an
older timestamp. The queue is then flushed; stragglers of the old stream
(up to :data:`MAX_MISORDER_PACKETS` behind its newest) are dropped as late.

The playout point stays the buffer's: :meth:`ArrivalQueue.admit` takes it
and returns where the stream starts when it (re)starts one.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from pqcall.media.delay import RelativeDelayEstimator
from pqcall.media.playout import PacketFate

__all__ = [
    "MAX_JUMP_MS",
    "MAX_MISORDER_PACKETS",
    "SAMPLE_RATE_HZ",
    "SEQUENCE_MODULUS",
    "TIMESTAMP_MODULUS",
    "Admission",
    "ArrivalQueue",
    "QueuedPacket",
]

# specification constants
SAMPLE_RATE_HZ: Final = 48_000
SEQUENCE_MODULUS: Final = 1 << 16  # RTP sequence numbers, RFC 3550 section 5.1
TIMESTAMP_MODULUS: Final = 1 << 32  # RTP timestamps, RFC 3550 section 5.1
MAX_MISORDER_PACKETS: Final = 100  # RFC 3550 appendix A.1

# implementation constants
MAX_JUMP_MS: Final = 2000
"""A sequence number this far (in frames' time) ahead of the playout point is a jump."""


class QueuedPacket(NamedTuple):
    """A received frame waiting for its playout time."""

    payload: bytes
    """The encoded frame."""
    redundant: bytes | None
    """The encoded previous frame, if the sender repeated it."""
    arrival: float
    """``now`` when pushed."""
    older: tuple[bytes, ...] = ()
    """Low-rate copies of the frames before the previous one: seq - 2, seq - 3, ..."""


class Admission(NamedTuple):
    """What :meth:`ArrivalQueue.admit` did, and what the buffer must do about it."""

    fate: PacketFate
    """What happened to the packet."""
    is_reset: bool
    """Whether it started a new stream in place of an old one."""
    stream_start: int | None
    """The extended sequence number a (new) stream starts at, or None if none started."""
    earliest: int | None
    """A queued frame before the playout point, allowed because nothing has played yet."""


def signed(delta: int, modulus: int) -> int:
    """``delta`` reduced to [-modulus/2, modulus/2): serial number arithmetic."""
    return (delta + modulus // 2) % modulus - modulus // 2


class ArrivalQueue:
    """Received frames by extended sequence number, and the stream they belong to.

    Args:
        frame_ms: frame duration, ms (sizes the forward window).
        max_queued: hard cap on queued packets, at least 2.
        estimator: fed the transit time of every packet admitted in order.
        counts: the buffer's counters; this adds to ``duplicates``,
            ``late_dropped``, ``stray_dropped``, ``overflow_dropped``,
            ``flushed`` and ``resets``.

    :attr:`queue` maps extended sequence numbers to packets; the buffer takes
    frames out of it and calls :meth:`remember` for each number it handles.
    """

    __slots__ = (
        "_anchored",
        "_counts",
        "_estimator",
        "_max_ahead",
        "_max_queued",
        "_newest_seq",
        "_newest_ts",
        "_probation",
        "_retired",
        "_seen",
        "queue",
    )

    def __init__(
        self,
        frame_ms: int,
        max_queued: int,
        estimator: RelativeDelayEstimator,
        counts: dict[str, int],
    ) -> None:
        self._max_queued = max_queued  # queue cap
        self._max_ahead = MAX_JUMP_MS // frame_ms  # forward sequence window, frames
        self._estimator = estimator  # network need, fed transit times
        self._counts = counts  # the buffer's counters, shared
        self.queue: dict[int, QueuedPacket] = {}  # extended seq -> packet
        self._seen: set[int] = set()  # extended seqs behind the playout point already handled
        self._anchored = False  # a stream has started
        self._newest_seq = 0  # highest extended seq accepted
        self._newest_ts = 0  # its extended timestamp
        self._probation: int | None = None  # seq that would confirm a new stream
        self._retired: int | None = None  # newest seq of the previous stream, for stragglers

    @property
    def is_anchored(self) -> bool:
        """Whether a stream has started."""
        return self._anchored

    def admit(
        self,
        seq: int,
        timestamp: int,
        packet: QueuedPacket,
        now: float,
        *,
        next_seq: int,
        position: int,
        is_started: bool,
    ) -> Admission:
        """Admit a packet (arguments checked by the caller).

        Args:
            seq: 16-bit sequence number.
            timestamp: 32-bit timestamp, 48 kHz units.
            packet: the packet.
            now: arrival time, seconds.
            next_seq: extended seq of the next frame to render (the playout point).
            position: ``next_seq`` plus the frames already rendered by waiting.
            is_started: whether this stream has rendered a frame.
        """
        if not self._anchored:
            return self._start_stream(seq, timestamp, packet, now, is_reset=False)
        # unwrap around the playout point (RFC 3550 appendix A.1 windows)
        ext = position + signed(seq - position, SEQUENCE_MODULUS)
        if ext - next_seq < -MAX_MISORDER_PACKETS or ext - position >= self._max_ahead:
            return self._admit_stray(seq, timestamp, packet, now)
        self._probation = None
        if ext in self.queue or ext in self._seen:
            self._counts["duplicates"] += 1
            return Admission(PacketFate.DUPLICATE, False, None, None)
        ts = self._newest_ts + signed(timestamp - self._newest_ts, TIMESTAMP_MODULUS)
        if ext > self._newest_seq:
            if ts < self._newest_ts:
                # a newer frame with an older timestamp: the sender's clock restarted
                return self._reset(seq, timestamp, packet, now)
            self._newest_seq, self._newest_ts = ext, ts
        elif ts > self._newest_ts:
            # an older frame with a newer timestamp: from another clock (a straggler
            # across a restart); its transit time would poison the delay estimate
            self._counts["stray_dropped"] += 1
            return Admission(PacketFate.STRAY, False, None, None)
        self._estimator.observe(now - ts / SAMPLE_RATE_HZ, now)
        earliest = None
        if ext < next_seq:
            if not is_started:
                earliest = ext  # an earlier first frame, reordered
            else:
                self._counts["late_dropped"] += 1
                self.remember(ext, next_seq)
                return Admission(PacketFate.LATE, False, None, None)
        return Admission(self._enqueue(ext, packet), False, None, earliest)

    def remember(self, ext: int, next_seq: int) -> None:
        """Mark ``ext`` as handled (played, passed or late), so a copy is a duplicate."""
        self._seen.add(ext)
        if len(self._seen) > 2 * MAX_MISORDER_PACKETS:
            horizon = next_seq - MAX_MISORDER_PACKETS
            self._seen = {seen for seen in self._seen if seen >= horizon}

    def _admit_stray(self, seq: int, timestamp: int, packet: QueuedPacket, now: float) -> Admission:
        if self._retired is not None:
            behind = signed(seq - self._retired, SEQUENCE_MODULUS)
            if -MAX_MISORDER_PACKETS <= behind <= 0:
                self._counts["late_dropped"] += 1  # straggler of the previous stream
                return Admission(PacketFate.LATE, False, None, None)
        if seq == self._probation:
            return self._reset(seq, timestamp, packet, now)
        self._probation = (seq + 1) % SEQUENCE_MODULUS
        self._counts["stray_dropped"] += 1
        return Admission(PacketFate.STRAY, False, None, None)

    def _reset(self, seq: int, timestamp: int, packet: QueuedPacket, now: float) -> Admission:
        self._counts["resets"] += 1
        self._counts["flushed"] += len(self.queue)
        self._retired = self._newest_seq % SEQUENCE_MODULUS
        self.queue.clear()
        self._seen.clear()
        self._estimator.forget_history()
        return self._start_stream(seq, timestamp, packet, now, is_reset=True)

    def _start_stream(
        self, seq: int, timestamp: int, packet: QueuedPacket, now: float, *, is_reset: bool
    ) -> Admission:
        self._anchored = True
        self._newest_seq = seq
        self._newest_ts = timestamp
        self._probation = None
        self.queue[seq] = packet
        self._estimator.observe(now - timestamp / SAMPLE_RATE_HZ, now)
        return Admission(PacketFate.QUEUED, is_reset, seq, None)

    def _enqueue(self, ext: int, packet: QueuedPacket) -> PacketFate:
        if len(self.queue) >= self._max_queued:
            farthest = max(self.queue)
            self._counts["overflow_dropped"] += 1
            if ext > farthest:
                return PacketFate.OVERFLOW
            del self.queue[farthest]
        self.queue[ext] = packet
        return PacketFate.QUEUED
