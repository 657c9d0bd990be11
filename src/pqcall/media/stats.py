"""Call statistics, as RTCP reports them: counts, jitter, loss, RTT, bitrate, MOS.

Scope: accumulate what one side of a call sends and receives and turn it
into a :class:`CallStatsSnapshot` of plain numbers for the UI, ``--json`` and
logs. Pure: sizes, sequence numbers, timestamps and ``now`` (seconds on a
monotonic clock) in, numbers out; the media session feeds it.

Calling contract::

    stats = CallStats(frame_ms=20)
    stats.record_sent(len(datagram), now)                 # every media datagram
    stats.record_received(seq, timestamp, len(datagram), now)
    stats.record_pong(ping_sent_at, now)                  # RTT probe answered
    stats.record_audio_level(rms)                         # level of played audio
    snapshot = stats.snapshot(now, playout=buffer.snapshot(), packets_rejected=n)

What each figure is:

* loss: RFC 3550 appendix A.1 sequence tracking (wraparound, restarts) and
  A.3 arithmetic, cumulative: expected minus received, never below 0. A
  silent sender makes no sequence gap, so once nothing has arrived for
  :data:`OVERDUE_AFTER_S`, every frame due since the last arrival counts as
  expected and lost too (10 s of silence at 20 ms frames: 500 lost); when
  packets come again, their sequence numbers take over.
* jitter: RFC 3550 section 6.4.1 interarrival jitter (gain 1/16), in ms.
* RTT: the latest round trip and a smoothed one (gain 1/8, as RFC 6298).
* bitrate: bytes on the wire over the last complete :data:`BITRATE_WINDOW_S`,
  each datagram plus :data:`IPV4_UDP_OVERHEAD_BYTES`, in kbit/s.
* MOS: the ITU-T G.107 E-model (``media/emodel.py``) with the one-way delay
  RTT/2 + jitter-buffer delay + one frame, and the loss the listener hears:
  frames concealed out of frames rendered once the jitter buffer has played
  (FEC and redundancy repairs are not losses), plus the frames of each
  silence counted by time (one run each), with G.107's burst ratio from the
  runs; before that, the network loss.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Final

from pqcall.exceptions import LocalProtocolError
from pqcall.media import emodel
from pqcall.media.emodel import CodecImpairment
from pqcall.media.playout import JitterBufferStats

# specification constants
SAMPLE_RATE_HZ: Final = 48_000
SEQUENCE_MODULUS: Final = 1 << 16  # RFC 3550 section 5.1
TIMESTAMP_MODULUS: Final = 1 << 32  # RFC 3550 section 5.1
MAX_DROPOUT_PACKETS: Final = 3000  # RFC 3550 appendix A.1
MAX_MISORDER_PACKETS: Final = 100  # RFC 3550 appendix A.1
JITTER_GAIN: Final = 1 / 16  # RFC 3550 section 6.4.1
IPV4_UDP_OVERHEAD_BYTES: Final = 28  # 20-byte IPv4 header + 8-byte UDP header
IPV6_UDP_OVERHEAD_BYTES: Final = 48  # 40-byte IPv6 header + 8-byte UDP header

# implementation constants
BITRATE_WINDOW_S: Final = 2
"""Bitrates average over this many seconds."""
BITRATE_BUCKETS_PER_S: Final = 10
"""Bitrate time resolution (100 ms buckets), so memory is fixed whatever the rate."""
RTT_GAIN: Final = 1 / 8
"""Smoothing gain of the RTT estimate (RFC 6298's alpha)."""
MIN_AUDIO_LEVEL_DBFS: Final = -127.0
"""Level reported for digital silence (RFC 6464's floor)."""
OVERDUE_AFTER_S: Final = 1.0
"""Nothing received this long: the frames due since the last arrival count as lost.

The media protocol's ``PEER_SILENT_AFTER_S``: loss counts the silence from the
moment the call shows "reconnecting". Far above the jitter buffer's largest
target delay (400 ms), so packets merely late (a burst after a stall) never count.
"""


def _signed(delta: int, modulus: int) -> int:
    return (delta + modulus // 2) % modulus - modulus // 2


class SequenceTracker:
    """Expected and received packet counts from sequence numbers (RFC 3550 A.1, A.3).

    A jump of more than :data:`MAX_DROPOUT_PACKETS` ahead (or more than
    :data:`MAX_MISORDER_PACKETS` behind) is taken as a sender restart once
    the next packet follows it; counts from before a restart are kept.
    Its zero value has seen nothing: expected and received are 0.
    """

    def __init__(self) -> None:
        self._started = False  # a first packet was seen
        self._base = 0  # first sequence number of this stream
        self._max = 0  # highest sequence number (16 bits)
        self._cycles = 0  # wraparounds times 2**16
        self._bad = SEQUENCE_MODULUS + 1  # sequence number that confirms a restart
        self._received = 0  # packets counted in this stream
        self._earlier_expected = 0  # from streams before a restart
        self._earlier_received = 0
        self._restarts = 0  # sender restarts detected

    @property
    def restarts(self) -> int:
        """Sender restarts detected (large jumps confirmed by the next packet)."""
        return self._restarts

    @property
    def expected(self) -> int:
        """Packets the sender sent, from the sequence numbers."""
        if not self._started:
            return 0
        return self._earlier_expected + self._cycles + self._max - self._base + 1

    @property
    def received(self) -> int:
        """Packets counted (duplicates included, as RFC 3550 does)."""
        return self._earlier_received + self._received

    @property
    def lost(self) -> int:
        """Expected minus received, clamped at 0 (duplicates can make it negative)."""
        return max(0, self.expected - self.received)

    def update(self, seq: int) -> bool:
        """Count packet ``seq``; False if it is held back as a possible restart.

        A True return also means the packet belongs to the current stream,
        so it may feed the jitter estimate.
        """
        if not self._started:
            self._restart(seq)
            return True
        udelta = (seq - self._max) % SEQUENCE_MODULUS
        if udelta < MAX_DROPOUT_PACKETS:
            if seq < self._max:
                self._cycles += SEQUENCE_MODULUS  # wrapped around
            self._max = seq
        elif udelta <= SEQUENCE_MODULUS - MAX_MISORDER_PACKETS:
            if seq != self._bad:
                self._bad = (seq + 1) % SEQUENCE_MODULUS
                return False
            # two packets in a row after a jump: the sender restarted
            self._earlier_expected = self.expected
            self._earlier_received = self.received
            self._restarts += 1
            self._restart(seq)
            return True
        # else a duplicate or reordered packet: counted, max unchanged
        self._received += 1
        return True

    def _restart(self, seq: int) -> None:
        self._started = True
        self._base = self._max = seq
        self._cycles = 0
        self._bad = SEQUENCE_MODULUS + 1
        self._received = 1


class InterarrivalJitter:
    """RFC 3550 section 6.4.1 interarrival jitter, kept in timestamp units.

    J += (|D(i-1, i)| - J) / 16 with D the difference in transit time between
    consecutive arrivals. Its zero value has no packet: jitter 0.
    """

    def __init__(self) -> None:
        self._previous: tuple[float, int] | None = None  # (arrival s, timestamp)
        self._jitter = 0.0  # timestamp units

    @property
    def jitter_ms(self) -> float:
        """Current jitter estimate in ms."""
        return self._jitter * 1000.0 / SAMPLE_RATE_HZ

    def update(self, timestamp: int, arrival: float) -> None:
        """Account for a packet with media ``timestamp`` that arrived at ``arrival``."""
        if self._previous is not None:
            previous_arrival, previous_timestamp = self._previous
            arrival_units = (arrival - previous_arrival) * SAMPLE_RATE_HZ
            sent_units = _signed(timestamp - previous_timestamp, TIMESTAMP_MODULUS)
            difference = abs(arrival_units - sent_units)
            self._jitter += (difference - self._jitter) * JITTER_GAIN
        self._previous = (arrival, timestamp)

    def restart(self) -> None:
        """Forget the previous packet (a new stream with its own clock)."""
        self._previous = None


class BitrateMeter:
    """Bytes per time over a sliding window, in fixed-size buckets.

    The rate covers the last :data:`BITRATE_WINDOW_S` of *complete* buckets,
    so it lags by at most one bucket (100 ms) and never counts a partial one.
    Until a whole window has passed since the first byte, it averages over the
    time since then, so a call's first seconds do not read low.
    """

    def __init__(self, window_s: int = BITRATE_WINDOW_S) -> None:
        self._span = window_s * BITRATE_BUCKETS_PER_S  # buckets in the window
        self._window_s = window_s
        self._buckets: deque[list[int]] = deque()  # [bucket index, bytes], oldest first
        self._total = 0  # bytes in the buckets
        self._in_order = True  # bucket indices increase (``now`` has not gone back)
        self._first: int | None = None  # index of the first bucket ever counted

    def add(self, size_bytes: int, now: float) -> None:
        """Count ``size_bytes`` sent or received at ``now``."""
        index = math.floor(now * BITRATE_BUCKETS_PER_S)
        if self._first is None:
            self._first = index
        self._total += size_bytes
        buckets = self._buckets
        if buckets and buckets[-1][0] == index:
            buckets[-1][1] += size_bytes
            return  # the window moves on only with a new bucket
        if buckets and index < buckets[-1][0]:
            self._in_order = False
        buckets.append([index, size_bytes])
        self._expire(index)

    def kbps(self, now: float) -> float:
        """Average rate over the window ending at the current bucket, in kbit/s."""
        current = math.floor(now * BITRATE_BUCKETS_PER_S)
        self._expire(current)
        if self._in_order:
            # the running total less the newest buckets, those not complete at ``now``
            # (usually just the current one): no sum over the window per call
            total = self._total
            for index, size in reversed(self._buckets):
                if index < current:
                    break
                total -= size
        else:
            total = sum(size for index, size in self._buckets if index < current)
        if self._first is None or current <= self._first:
            return 0.0
        covered_s = min(self._span, current - self._first) / BITRATE_BUCKETS_PER_S
        return total * 8 / covered_s / 1000.0

    def _expire(self, current: int) -> None:
        while self._buckets and self._buckets[0][0] < current - self._span:
            self._total -= self._buckets.popleft()[1]


@dataclass(frozen=True, slots=True)
class CallStatsSnapshot:
    """One side of a call in plain numbers (None: not measured yet)."""

    packets_sent: int
    """Media datagrams sent."""
    packets_received: int
    """Media datagrams received (authenticated)."""
    packets_lost: int
    """Expected minus received, from sequence numbers (RFC 3550 A.3) and, while
    nothing arrives, from the time elapsed (see :data:`OVERDUE_AFTER_S`)."""
    packets_late: int
    """Received after their playout time."""
    packets_duplicate: int
    """Received more than once."""
    packets_rejected: int
    """Dropped before the jitter buffer: malformed, unauthenticated, replayed."""
    loss_percent: float
    """packets_lost / expected, in percent."""
    jitter_ms: float
    """RFC 3550 interarrival jitter."""
    rtt_ms: float | None
    """Smoothed round-trip time."""
    rtt_latest_ms: float | None
    """Latest round-trip sample."""
    jitter_buffer_ms: float
    """Jitter-buffer delay (its level at the last playout tick)."""
    jitter_buffer_target_ms: float
    """Jitter-buffer target delay."""
    concealed_ms: float
    """Audio made up by concealment."""
    fec_recovered: int
    """Lost frames recovered from in-band FEC."""
    fec_recovered_ms: float
    """Audio recovered from in-band FEC."""
    redundancy_recovered: int
    """Lost frames recovered from redundant copies."""
    tx_kbps: float
    """Sent bitrate on the wire (IP and UDP headers included)."""
    rx_kbps: float
    """Received bitrate on the wire (IP and UDP headers included)."""
    audio_level_dbfs: float | None
    """Latest level of the audio played (0 dBFS: full-scale square wave)."""
    input_level_dbfs: float | None
    """Latest level of the audio sent (the microphone; silence while muted)."""
    one_way_delay_ms: float
    """Mouth-to-ear delay the E-model used."""
    effective_loss_percent: float
    """Loss the E-model used (what the listener hears)."""
    r_factor: float
    """G.107 transmission rating."""
    mos: float
    """G.107 Annex B MOS, narrowband scale 1-4.5."""
    reconnecting: bool = False
    """Nothing from the peer for ``PEER_SILENT_AFTER_S`` (set by the media engine)."""
    peer_silent_s: float = 0.0
    """Seconds since the peer was last heard while reconnecting, else 0 (the media engine's)."""
    encoder_mode: str = "clean"
    """Our encoder's mode: clean, fec, redundancy or backup (the engine's adaptation)."""
    planned_loss_percent: int = 0
    """Loss our encoder plans in-band FEC for (the sender's adaptation; the engine's)."""
    encoder_kbps: float = 0.0
    """Our encoder's Opus bitrate now, kbit/s: the configured one, or the bandwidth
    adaptation's rung on a narrow link (the sender's adaptation; the engine's; 0: unknown)."""
    frames_per_packet: int = 1
    """Frames in each of our audio packets: 2 on a bandwidth-limited rung (the engine's)."""

    def as_dict(self) -> dict[str, int | float | str | None]:
        """The snapshot as a JSON-ready dict."""
        return asdict(self)


class CallStats:
    """Accumulates one side of a call's statistics.

    Args:
        frame_ms: codec frame duration (adds to the one-way delay).
        overhead_bytes: per-datagram header bytes counted in bitrates.
        codec: E-model impairment values of the codec.

    Raises:
        LocalProtocolError: an argument is out of range.
    """

    def __init__(
        self,
        frame_ms: int = 20,
        *,
        overhead_bytes: int = IPV4_UDP_OVERHEAD_BYTES,
        codec: CodecImpairment = emodel.OPUS,
    ) -> None:
        if frame_ms <= 0 or overhead_bytes < 0:
            raise LocalProtocolError("frame duration must be positive, overhead not negative")
        self._frame_ms = frame_ms  # codec frame, ms
        self._overhead = overhead_bytes  # header bytes per datagram
        self._codec = codec  # E-model values
        self._sequence = SequenceTracker()
        self._jitter = InterarrivalJitter()
        self._tx = BitrateMeter()
        self._rx = BitrateMeter()
        self._sent = 0  # datagrams sent
        self._received = 0  # datagrams received
        self._frame_s = frame_ms / 1000
        self._last_arrival: float | None = None  # `now` of the last datagram received
        self._silences = 0  # past gaps of OVERDUE_AFTER_S or more
        self._silent_frames = 0  # frames due during them
        self._rtt_s: float | None = None  # smoothed RTT
        self._rtt_latest_s: float | None = None  # latest RTT sample
        self._level_dbfs: float | None = None  # latest level of the audio played
        self._input_level_dbfs: float | None = None  # latest level of the audio sent
        # the last E-model rating and its inputs: polled snapshots mostly repeat them
        self._rating: tuple[tuple[float, float, float], float] | None = None

    def record_sent(self, size_bytes: int, now: float) -> None:
        """Count a media datagram of ``size_bytes`` (UDP payload) sent at ``now``."""
        if size_bytes < 0:
            raise LocalProtocolError("datagram size must not be negative")
        self._sent += 1
        self._tx.add(size_bytes + self._overhead, now)

    def record_received(self, seq: int, timestamp: int, size_bytes: int, now: float) -> None:
        """Count an authenticated media datagram (UDP payload ``size_bytes``).

        ``seq`` and ``timestamp`` are its 16-bit sequence number and 32-bit
        48 kHz media timestamp; ``now`` its arrival time.
        """
        if size_bytes < 0:
            raise LocalProtocolError("datagram size must not be negative")
        if not 0 <= seq < SEQUENCE_MODULUS or not 0 <= timestamp < TIMESTAMP_MODULUS:
            raise LocalProtocolError("sequence number or timestamp out of range")
        self._received += 1
        self._rx.add(size_bytes + self._overhead, now)
        last = self._last_arrival
        if last is not None and now - last >= OVERDUE_AFTER_S:  # the end of a silence
            self._silences += 1
            self._silent_frames += self.overdue_frames(now)
        self._last_arrival = now
        sequence = self._sequence
        restarts = sequence.restarts
        if not sequence.update(seq):
            return  # held back: may be the first packet of a restarted sender
        if sequence.restarts != restarts:
            self._jitter.restart()  # a new stream has its own timestamp origin
        self._jitter.update(timestamp, now)

    def overdue_frames(self, now: float) -> int:
        """Frames due since the last arrival, once nothing came for :data:`OVERDUE_AFTER_S`.

        0 before the first packet: nothing is expected of a stream not yet heard.
        """
        if self._last_arrival is None:
            return 0
        gap = now - self._last_arrival
        return int(gap / self._frame_s) if gap >= OVERDUE_AFTER_S else 0

    def record_pong(self, ping_sent_at: float, now: float, *, peer_hold_s: float = 0.0) -> None:
        """Take a round-trip sample from a ping sent at ``ping_sent_at``.

        ``peer_hold_s`` is how long the peer held the ping before answering
        (as RTCP's DLSR), subtracted from the sample. Negative samples (a
        confused peer) are ignored.
        """
        sample = now - ping_sent_at - peer_hold_s
        if sample < 0:
            return
        self._rtt_latest_s = sample
        if self._rtt_s is None:
            self._rtt_s = sample
        else:
            self._rtt_s += (sample - self._rtt_s) * RTT_GAIN

    def record_audio_level(self, rms: float) -> None:
        """Record the RMS of a played frame, 1.0 being full scale, as the current level."""
        self._level_dbfs = _dbfs(rms)

    def record_input_level(self, rms: float) -> None:
        """Record the RMS of a sent frame, 1.0 being full scale, as the current input level."""
        self._input_level_dbfs = _dbfs(rms)

    def snapshot(
        self,
        now: float,
        *,
        playout: JitterBufferStats | None = None,
        packets_rejected: int = 0,
    ) -> CallStatsSnapshot:
        """The statistics at ``now``.

        Args:
            now: current time (ends the bitrate windows).
            playout: the jitter buffer's counters, if it runs.
            packets_rejected: datagrams the session dropped before the buffer.
        """
        overdue = self.overdue_frames(now)  # a silence going on now
        expected = self._sequence.expected + overdue
        lost = self._sequence.lost + overdue
        loss_percent = 100.0 * lost / expected if expected else 0.0
        buffer_ms = playout.buffered_delay_ms if playout else 0.0
        rtt_ms = None if self._rtt_s is None else self._rtt_s * 1000.0
        one_way_ms = (rtt_ms or 0.0) / 2.0 + buffer_ms + self._frame_ms
        heard_loss, burst = loss_percent, 1.0
        if playout is not None:
            rendered = (
                playout.played
                + playout.fec_recovered
                + playout.redundancy_recovered
                + playout.concealed
            )
            # each silence is one run of lost frames (its first ones were concealed,
            # so up to MAX_CONCEALMENT_MS of it may count twice)
            silent = self._silent_frames + overdue
            rendered += silent
            concealed = playout.concealed + silent
            runs = playout.concealment_events + self._silences + (overdue > 0)
            if rendered:
                heard_loss = 100.0 * concealed / rendered
                burst = emodel.burst_ratio(rendered, concealed, runs)
        r = self._r_factor(one_way_ms, heard_loss, burst)
        return CallStatsSnapshot(
            packets_sent=self._sent,
            packets_received=self._received,
            packets_lost=lost,
            packets_late=playout.late_dropped if playout else 0,
            packets_duplicate=playout.duplicates if playout else 0,
            packets_rejected=packets_rejected,
            loss_percent=loss_percent,
            jitter_ms=self._jitter.jitter_ms,
            rtt_ms=rtt_ms,
            rtt_latest_ms=None if self._rtt_latest_s is None else self._rtt_latest_s * 1000.0,
            jitter_buffer_ms=buffer_ms,
            jitter_buffer_target_ms=playout.target_delay_ms if playout else 0.0,
            concealed_ms=float(playout.concealed * playout.frame_ms) if playout else 0.0,
            fec_recovered=playout.fec_recovered if playout else 0,
            fec_recovered_ms=float(playout.fec_recovered * playout.frame_ms) if playout else 0.0,
            redundancy_recovered=playout.redundancy_recovered if playout else 0,
            tx_kbps=self._tx.kbps(now),
            rx_kbps=self._rx.kbps(now),
            audio_level_dbfs=self._level_dbfs,
            input_level_dbfs=self._input_level_dbfs,
            one_way_delay_ms=one_way_ms,
            effective_loss_percent=heard_loss,
            r_factor=r,
            mos=emodel.mos_from_r(r),
        )

    def _r_factor(self, one_way_ms: float, loss_percent: float, burst: float) -> float:
        """G.107's R for these inputs, computed again only when one of them changed."""
        inputs = (one_way_ms, loss_percent, burst)
        if self._rating is None or self._rating[0] != inputs:
            r = emodel.r_factor(one_way_ms, loss_percent, burst_ratio=burst, codec=self._codec)
            self._rating = (inputs, r)
        return self._rating[1]


def _dbfs(rms: float) -> float:
    """An RMS level (1.0: full scale) in dBFS, floored at :data:`MIN_AUDIO_LEVEL_DBFS`."""
    if not rms >= 0.0:
        raise LocalProtocolError("RMS level must be a non-negative number")
    if rms == 0.0:
        return MIN_AUDIO_LEVEL_DBFS
    return max(MIN_AUDIO_LEVEL_DBFS, 20.0 * math.log10(rms))
