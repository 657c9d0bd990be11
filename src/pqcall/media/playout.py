"""What the jitter buffer tells its caller: decisions, arrivals, counters.

Plain frozen values shared by ``media/jitter.py`` (which makes them), the
decoder wrapper (which obeys the decisions) and ``media/stats.py`` (which
reads the counters). How to render each :class:`PlayoutAction`, with a
decoder that follows ``pqcall.media.codec.AudioDecoder``:

========== ==============================================================
PLAY       ``decoder.decode(payload)``
FEC        ``decoder.decode_fec(payload)``: ``payload`` is the *next*
           packet; Opus recovers this lost frame from its in-band FEC
           (RFC 6716 section 2.1.7). Decode that packet normally later.
REDUNDANT  ``decoder.decode(payload)``: a copy of this lost frame that the
           next packet carried (RFC 2198-style redundancy).
CONCEAL    ``decoder.conceal()`` (packet loss concealment).
SILENCE    write silence; no frame is expected (before the first packet,
           while filling, or after ``MAX_CONCEALMENT_MS`` of underrun,
           e.g. the peer muted or uses DTX).
========== ==============================================================
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass


class PlayoutAction(enum.Enum):
    """What the decoder wrapper does for one frame slot (see the module table)."""

    PLAY = "play"
    FEC = "fec"
    REDUNDANT = "redundant"
    CONCEAL = "conceal"
    SILENCE = "silence"


class PacketFate(enum.Enum):
    """What ``JitterBuffer.push`` did with a packet."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    LATE = "late"
    OVERFLOW = "overflow"
    STRAY = "stray"


class PlayoutState(enum.Enum):
    """What the buffer waits for."""

    AWAITING_PACKETS = "awaiting packets"
    FILLING = "filling"
    PLAYING = "playing"


@dataclass(frozen=True, slots=True)
class PlayoutDecision:
    """The rendering of one frame slot."""

    action: PlayoutAction
    """What to do."""
    payload: bytes = b""
    """Bytes to decode: the frame, the next packet (FEC) or the copy (REDUNDANT)."""
    seq: int | None = None
    """Sequence number of the frame rendered; None for inserted concealment or silence."""
    skipped: int = 0
    """Sequence numbers passed over just before this one (lost or discarded)."""


@dataclass(frozen=True, slots=True)
class PacketArrival:
    """One pushed packet, as the buffer saw it (feeds call statistics)."""

    seq: int
    """Its sequence number."""
    timestamp: int
    """Its media timestamp (48 kHz units)."""
    arrival_time: float
    """``now`` when it was pushed (seconds, monotonic)."""
    fate: PacketFate
    """What the buffer did with it."""
    reset: bool = False
    """Whether it started a new stream (sender restart or clock jump)."""


@dataclass(frozen=True, slots=True)
class JitterBufferStats:
    """Counters and delays of a ``JitterBuffer``, plain numbers."""

    frame_ms: int
    """Frame duration."""
    played: int
    """Frames decoded from their own packet."""
    concealed: int
    """Frames rendered by concealment (lost, or waited for)."""
    fec_recovered: int
    """Lost frames recovered from the next packet's in-band FEC."""
    redundancy_recovered: int
    """Lost frames recovered from a redundant copy."""
    silence: int
    """Slots rendered as silence (nothing expected)."""
    skipped: int
    """Missing frames passed over without a decision of their own."""
    shrink_dropped: int
    """Received frames discarded to cut delay."""
    late_dropped: int
    """Packets that arrived after their frame was rendered or passed."""
    duplicates: int
    """Packets received twice."""
    overflow_dropped: int
    """Packets dropped because the queue was full."""
    stray_dropped: int
    """Packets far outside the sequence window (before a reset confirmed them)."""
    flushed: int
    """Queued packets discarded by a reset."""
    resets: int
    """New streams started (sender restart, sequence or clock jump)."""
    concealment_events: int
    """Runs of consecutive concealed frames (for the E-model's burst ratio)."""
    queued_packets: int
    """Packets in the queue now."""
    target_delay_ms: float
    """Target level now."""
    buffered_delay_ms: float
    """Level at the last pop, including the frame it rendered."""
    mean_delay_ms: float
    """Mean time played packets waited in the buffer."""

    def as_dict(self) -> dict[str, int | float]:
        """The counters as a JSON-ready dict."""
        return asdict(self)
