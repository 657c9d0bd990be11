"""Bandwidth adaptation: how fast the sender may send, from queueing delay and delivered rate.

Scope: :class:`BandwidthController` watches the round trips the media protocol
measures (pings, one a second), the peer's receiver reports (the delivered
rate, and a round trip of their own: from when we sent the highest sequence
number a report names to when the report came), and picks the
Opus bytes per frame from a short ladder (:data:`LADDER_KBPS`), so that a link
narrower than the call's bitrate does not build seconds of queue. Pure: no socket,
clock or codec; ``now`` and the samples come in.

The rules, in the spirit of Google Congestion Control (a delay-based
controller; draft-ietf-rmcat-gcc-02), simplified to the one stream a call sends:

* queueing delay is a round trip less the least one since the last decrease
  (at most :data:`MIN_RTT_WINDOW_S` back): only delay that *grows* counts, as
  GCC's trend, since a lower rate's own serialisation at a narrow link (tens
  of ms a packet at 24-48 kbit/s) raises the round trip for good;
* overuse: two pings in a row above :data:`STANDING_S`, or three above
  :data:`OVERUSE_S` (one is jitter: at 30 ms of jitter each way, single
  pings above 100 ms stepped 2 calls in 6 down for nothing); or a report with more
  than :data:`LOSS_OVERUSE` loss while its round trip stands :data:`STANDING_S`
  above the least of the
  last :data:`BASE_RTT_WINDOW_S` (a drop-tail queue that stays full: its
  delay no longer grows, it drops). Random loss alone, with no standing delay,
  never lowers the rate (:mod:`~pqcall.transport.adaptation` plans FEC for it).
  Then, at most once per :data:`DECREASE_INTERVAL_S` (samples in that time do
  not count: the last decrease must take effect first), the
  wire target becomes :data:`DECREASE_FACTOR` times the rate the peer's last
  report says arrived (its packets' sizes on the wire), or
  :data:`BLIND_DECREASE_FACTOR` times the current rate before two reports:
  the rung at or below it is taken, at least one rung down (after a failed
  probe, at most two: the rung below the last one that held);
* probing up: :data:`PROBE_HOLD_S` after the last decrease, while the
  queueing delay stays under :data:`UNDERUSE_S`, one rung up every
  :data:`PROBE_INTERVAL_S`. A rung that had to be left within
  :data:`PROBE_HOLD_S` of reaching it (a failed probe) is not tried again
  for :data:`FAILED_PROBE_BACKOFF_S`, twice that after a second failure, and
  so on (a link that fits between two rungs is not probed every few seconds).

Two kinds of round trip, because a full drop-tail queue drops by phase: pings
leave on the frame tick right behind an audio packet, so while the queue is
full a ping may find it full every time (measured: no ping through a 32 kbit/s
bottleneck for 16 s); reports leave on the peer's own timer. A report's round
trip is not exact: it grows by the packets lost just before the report (a
frame each; 60-80 ms in bursts of three), so it counts only towards the full
queue's standing delay, never towards growth.

Below the top rung every packet carries two frames (AUDIO_PAIR: 40 ms packets
at 20 ms frames), which halves the 57 bytes of headers a packet costs
(10.6 kbit/s at 20 ms): at 32 kbit/s on the wire, Opus gets 16 kbit/s in pairs
and 6 in single frames.

The rungs are few on purpose: each is its own constant packet size on the
wire (``docs/threat-model.md``: what a mode change reveals).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

from pqcall.transport.media_packets import (
    AUDIO_HEADER_LENGTH,
    REDUNDANCY_HEADER_LENGTH,
    SEQUENCE_MODULUS,
    U32_MAX,
    ReceiverReport,
    serial_delta,
)

__all__ = [
    "BLIND_DECREASE_FACTOR",
    "DECREASE_FACTOR",
    "LADDER_KBPS",
    "LOSS_OVERUSE",
    "OVERUSE_S",
    "PROBE_HOLD_S",
    "STANDING_S",
    "WIRE_OVERHEAD_BYTES",
    "BandwidthController",
    "packet_bytes",
]

SENT_RING: Final = 512
"""Send times kept for the report round trip: ten seconds of 20 ms packets."""
MAX_REPORT_RTT_S: Final = 5.0
"""A report naming a packet sent longer ago than this gives no round trip."""
LADDER_KBPS: Final = (32, 24, 16, 12, 8, 6)
"""Opus bitrates (kbit/s) below the configured one the sender steps down to."""
WIRE_OVERHEAD_BYTES: Final = 28 + 22
"""Bytes a media packet adds on the wire beyond its payload: IPv4 and UDP (28) and SFrame
(header, length prefix and tag: 126-128 bytes for a 106-byte packet)."""
MIN_RTT_WINDOW_S: Final = 10.0
"""Growth is measured from the least round trip of at most this long (and since the last
decrease)."""
BASE_RTT_WINDOW_S: Final = 60.0
"""The path's own round trip (for a queue that stays full) is the least one of this long."""
LOSS_OVERUSE: Final = 0.05
"""Reported loss that, with a standing queueing delay, means the queue is full."""
OVERUSE_S: Final = 0.05
"""Queueing delay that, in three pings in a row, means the link is narrower than our rate."""
STANDING_S: Final = 0.1
"""Delay above the path's own that, with loss (or in two pings in a row), means a full queue."""
UNDERUSE_S: Final = 0.02
"""Queueing delay under which the link may take more."""
DECREASE_FACTOR: Final = 0.85
"""A decrease aims at this share of the delivered rate, so the queue drains."""
BLIND_DECREASE_FACTOR: Final = 0.7
"""A decrease before any delivered rate is known aims at this share of the current rate."""
DECREASE_INTERVAL_S: Final = 1.0
"""Decreases are at least this far apart (the last one must take effect first)."""
PROBE_HOLD_S: Final = 3.0
"""Time after a decrease before probing up."""
PROBE_INTERVAL_S: Final = 2.0
"""Time between two steps up."""
FAILED_PROBE_BACKOFF_S: Final = 10.0
"""A rung left soon after reaching it is not tried again for this long."""


def packet_bytes(frame_bytes: int, frames_per_packet: int) -> int:
    """A packet's size before SFrame: one AUDIO frame, or an AUDIO_PAIR of two."""
    if frames_per_packet == 1:
        return AUDIO_HEADER_LENGTH + frame_bytes
    return AUDIO_HEADER_LENGTH + REDUNDANCY_HEADER_LENGTH + 2 * frame_bytes


class BandwidthController:
    """The rung of the bitrate ladder the link takes now (see the module docstring).

    Args:
        frame_bytes: Opus bytes per frame at the configured bitrate (the top rung).
        frame_ms: the frame duration (packets per second on the wire).
    """

    __slots__ = (
        "_banned_until",
        "_delivered_bps",
        "_failures",
        "_frame_ms",
        "_high_samples",
        "_last_decrease_at",
        "_last_increase_at",
        "_level",
        "_previous_report",
        "_queueing_s",
        "_rtts",
        "_rungs",
        "_sent_at",
        "_standing_s",
    )

    def __init__(self, frame_bytes: int, frame_ms: int) -> None:
        self._frame_ms = frame_ms
        lower = (kbps * frame_ms // 8 for kbps in LADDER_KBPS)  # bytes per frame
        # descending (Opus bytes a frame, frames a packet): below the top, two frames a packet
        self._rungs = ((frame_bytes, 1), *((b, 2) for b in lower if b < frame_bytes))
        self._level = 0  # index into _rungs
        # (now, rtt) by kind (ping: True, report: False): each against its own minimum, as
        # a ping waits behind our packet and a report does not
        self._rtts: dict[bool, deque[tuple[float, float]]] = {True: deque(), False: deque()}
        self._queueing_s = 0.0  # of the last ping, above the least since the last decrease
        self._standing_s = 0.0  # of the last sample, above the least of BASE_RTT_WINDOW_S
        self._high_samples: deque[float] = deque(maxlen=3)  # the last pings' queueing delays
        self._last_decrease_at = -math.inf
        self._last_increase_at = -math.inf
        self._banned_until: dict[int, float] = {}  # level -> no probe to it before then
        self._failures: dict[int, int] = {}  # level -> failed probes to it
        self._previous_report: tuple[float, int, int] | None = None  # now, ext seq, lost
        self._delivered_bps: float | None = None  # wire rate of the last report interval
        self._sent_at: list[tuple[int, float]] = [(-1, 0.0)] * SENT_RING  # (seq, now) by seq

    @property
    def frame_bytes(self) -> int:
        """Opus bytes per frame on the rung in use."""
        return self._rungs[self._level][0]

    @property
    def frames_per_packet(self) -> int:
        """Frames each packet carries on the rung in use (2 below the top: AUDIO_PAIR)."""
        return self._rungs[self._level][1]

    @property
    def packet_bytes(self) -> int:
        """The rung's packet size before SFrame (one frame, or a pair with its lengths)."""
        return packet_bytes(*self._rungs[self._level])

    @property
    def is_limited(self) -> bool:
        """Whether the rate is below the configured one (a narrow link was found)."""
        return self._level > 0

    @property
    def queueing_delay_s(self) -> float:
        """The last sample's round trip above the path's own."""
        return self._queueing_s

    @property
    def delivered_bps(self) -> float | None:
        """Wire bit rate the peer's last report interval saw arrive (None before two reports)."""
        return self._delivered_bps

    def wire_bps(self, frame_bytes: int, frames_per_packet: int = 1) -> float:
        """The wire bit rate of frames of ``frame_bytes``, ``frames_per_packet`` a packet."""
        packet = packet_bytes(frame_bytes, frames_per_packet) + WIRE_OVERHEAD_BYTES
        return packet * 8000 / (self._frame_ms * frames_per_packet)

    def audio_sent(self, seq: int, now: float) -> None:
        """Our audio packet ``seq`` (16 bits) left at ``now`` (for the report round trip)."""
        self._sent_at[seq % SENT_RING] = (seq, now)

    def rtt_measured(self, rtt_s: float, now: float, *, exact: bool = True) -> bool:
        """Take one round trip (``exact``: a ping's); whether the rung changed (a decrease)."""
        rtts = self._rtts[exact]
        while rtts and rtts[0][0] < now - BASE_RTT_WINDOW_S:
            rtts.popleft()
        rtts.append((now, rtt_s))
        self._standing_s = rtt_s - min(rtt for _, rtt in rtts)
        if not exact:
            return False
        since = max(now - MIN_RTT_WINDOW_S, self._last_decrease_at)
        self._queueing_s = rtt_s - min((rtt for at, rtt in rtts if at >= since), default=rtt_s)
        if now - self._last_decrease_at < DECREASE_INTERVAL_S:
            self._high_samples.clear()  # the last decrease has not taken effect yet
            return False
        recent = self._high_samples
        recent.append(self._queueing_s)
        if min(list(recent)[-2:]) > STANDING_S and len(recent) >= 2:
            return self._decrease(now)
        if min(recent) > OVERUSE_S and len(recent) == recent.maxlen:
            return self._decrease(now)
        return False

    def report_received(self, report: ReceiverReport, now: float) -> bool:
        """Take the peer's receiver report (the delivered rate); whether the rung changed (up)."""
        highest, lost = report.highest_seq, report.cumulative_lost
        seq, sent = self._sent_at[highest % SENT_RING]
        if seq == highest % SEQUENCE_MODULUS and 0 <= now - sent < MAX_REPORT_RTT_S:
            self.rtt_measured(now - sent, now, exact=False)
        previous = self._previous_report
        if previous is not None and now > previous[0]:
            then, seq, lost_then = previous
            arrived = serial_delta(highest - seq, U32_MAX + 1) - (lost - lost_then)
            if arrived >= 0:
                frame_bits = self.wire_bps(*self._rungs[self._level]) * self._frame_ms / 1000
                self._delivered_bps = arrived * frame_bits / (now - then)
        self._previous_report = (now, highest, lost)
        full_queue = report.loss_fraction > LOSS_OVERUSE and self._standing_s > STANDING_S
        if full_queue and now - self._last_decrease_at >= DECREASE_INTERVAL_S:
            return self._decrease(now)
        return self._maybe_probe(now)

    def _decrease(self, now: float) -> bool:
        wire = self.wire_bps(*self._rungs[self._level])
        delivered = self._delivered_bps
        target = BLIND_DECREASE_FACTOR * wire if delivered is None else DECREASE_FACTOR * delivered
        level = self._level + 1
        while level + 1 < len(self._rungs) and self.wire_bps(*self._rungs[level]) > target:
            level += 1
        level = min(level, len(self._rungs) - 1)
        self._last_decrease_at = now
        self._high_samples.clear()
        if now - self._last_increase_at < PROBE_HOLD_S:  # a failed probe: two rungs down at most
            failures = self._failures[self._level] = self._failures.get(self._level, 0) + 1
            self._banned_until[self._level] = now + FAILED_PROBE_BACKOFF_S * 2 ** (failures - 1)
            level = min(level, self._level + 2)
        if level == self._level:
            return False
        self._level = level
        return True

    def _maybe_probe(self, now: float) -> bool:
        if not self._level or self._queueing_s >= UNDERUSE_S:
            return False
        if now - self._last_decrease_at < PROBE_HOLD_S:
            return False
        if now - self._last_increase_at < PROBE_INTERVAL_S:
            return False
        if self._banned_until.get(self._level - 1, -math.inf) > now:
            return False
        self._level -= 1
        self._last_increase_at = now
        return True
