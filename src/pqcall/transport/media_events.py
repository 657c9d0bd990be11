"""What the media protocol tells its wrapper: events, its state, its counters.

Plain frozen values (as h11's events): :class:`~pqcall.transport.media_protocol.MediaProtocol`
makes them, the media engine acts on them. Events are taken one by one with
``MediaProtocol.next_event()``, in the order they happened.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from pqcall.crypto.sframe_context import ReceiverStats
from pqcall.transport.adaptation import SenderAdaptation
from pqcall.transport.media_packets import ReceiverReport

__all__ = [
    "AdaptationChanged",
    "AudioReceived",
    "MediaEvent",
    "MediaProtocolStats",
    "MediaState",
    "MediaTimedOut",
    "PeerBack",
    "PeerHungUp",
    "PeerMuted",
    "PeerSilent",
    "ReportReceived",
    "RttMeasured",
]


@dataclass(frozen=True, slots=True)
class AudioReceived:
    """An audio packet arrived (feed it to the jitter buffer)."""

    seq: int
    """Its sequence number."""
    timestamp: int
    """Its media timestamp (48 kHz units)."""
    payload: bytes
    """The Opus frame."""
    redundant: bytes | None
    """The previous frame (seq - 1) again, or None."""
    older: tuple[bytes, ...] = ()
    """Backup copies of seq - 2, seq - 3... (the peer's backup mode; ``redundant`` is seq - 1's)."""


@dataclass(frozen=True, slots=True)
class RttMeasured:
    """A pong answered one of our pings."""

    rtt_s: float
    """Round-trip time without the peer's hold time, seconds (never negative)."""
    ping_sent_at: float
    """Our ``now`` when the ping was queued."""
    hold_s: float
    """How long the peer held the ping before answering."""


@dataclass(frozen=True, slots=True)
class ReportReceived:
    """The peer reported how our audio arrives."""

    report: ReceiverReport
    """The report."""


@dataclass(frozen=True, slots=True)
class PeerMuted:
    """The peer muted or unmuted its microphone."""

    muted: bool
    """Whether it is muted now."""


@dataclass(frozen=True, slots=True)
class PeerHungUp:
    """The peer ended the call; the protocol has ended."""

    reason: int
    """Its :class:`HangupReason` value (other values: unspecified)."""


@dataclass(frozen=True, slots=True)
class MediaTimedOut:
    """Nothing from the peer authenticated for the media timeout; the protocol has ended.

    The pump ends the call with the reason "peer unreachable".
    """

    idle_s: float
    """Seconds since the last authenticated packet (or the start)."""


@dataclass(frozen=True, slots=True)
class PeerSilent:
    """Nothing from the peer authenticated for ``PEER_SILENT_AFTER_S``: the call is reconnecting."""

    idle_s: float
    """Seconds since the last authenticated packet (or the start)."""


@dataclass(frozen=True, slots=True)
class PeerBack:
    """An authenticated packet came from a silent peer: the call is no longer reconnecting."""

    silent_s: float
    """Seconds the peer was silent (since its previous authenticated packet, or the start)."""


@dataclass(frozen=True, slots=True)
class AdaptationChanged:
    """The encoder should change (see :attr:`MediaProtocol.adaptation`)."""

    adaptation: SenderAdaptation
    """The new settings."""


MediaEvent: TypeAlias = (
    AudioReceived
    | RttMeasured
    | ReportReceived
    | PeerMuted
    | PeerHungUp
    | MediaTimedOut
    | PeerSilent
    | PeerBack
    | AdaptationChanged
)


class MediaState(enum.Enum):
    """What the protocol waits for."""

    AWAITING_START = "awaiting start"
    ACTIVE = "active"
    HANGING_UP = "hanging up"
    """Sending the hang-up copies; no audio any more."""
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class MediaProtocolStats:
    """Counters of a :class:`MediaProtocol`."""

    sframe: ReceiverStats
    """The SFrame receiver's counters (malformed, unauthenticated, replayed...)."""
    malformed: int
    """Authenticated packets whose inner media packet did not parse."""
    ignored: int
    """Datagrams received before :meth:`MediaProtocol.start` or after the end."""
    audio_sent: int
    """Audio packets sent."""
    control_sent: int
    """Control packets sent."""
    audio_received: int
    """Audio packets received."""
    control_received: int
    """Control packets received (not a burst report: it rides with a receiver report)."""
    redundant_sent: int
    """Audio packets sent with a redundant copy."""
    redundant_discarded: int
    """Received redundant copies dropped: not of the previous frame."""
    unmatched_pongs: int
    """Pongs for no outstanding ping (late, or not ours)."""

    @property
    def dropped(self) -> int:
        """Datagrams dropped for any reason."""
        return self.sframe.dropped + self.malformed + self.ignored
