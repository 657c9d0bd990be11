"""The media protocol's configuration: what it carries, how it pads, its timers.

Scope: :class:`ProtocolSettings`, the one value a
:class:`~pqcall.transport.media_protocol.MediaProtocol` is built from, and the
protocol's default timers. The encoder's figures (frame, budget, FEC,
complexity) have no defaults here: ``MediaSettings.protocol`` derives them
from the codec's ``OpusSettings``, so each default is written once. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pqcall.transport.media_packets import AUDIO_HEADER_LENGTH

__all__ = [
    "DEFAULT_BACKUP_BYTES",
    "DEFAULT_PING_INTERVAL_S",
    "DEFAULT_REPORT_INTERVAL_S",
    "MEDIA_TIMEOUT_S",
    "ProtocolSettings",
]

MEDIA_TIMEOUT_S: Final = 10.0
"""A call whose peer sent nothing that authenticates for this long has ended."""
DEFAULT_PING_INTERVAL_S: Final = 1.0
"""Seconds between RTT pings."""
DEFAULT_REPORT_INTERVAL_S: Final = 1.0
"""Seconds between receiver reports."""
DEFAULT_BACKUP_BYTES: Final = 40
"""Opus bytes of each backup copy when the backup mode is turned on (16 kbit/s at 20 ms;
decision 0220). It is off by default: it more than doubles the wire bitrate while bursts
last, and nothing yet tells bursts from a congested link, where more bits make it worse."""


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    """How a ``MediaProtocol`` runs: the encoder it carries, padding, redundancy, timers."""

    frame_ms: int
    """Audio frame duration (the timestamp advances by it per frame)."""
    frame_bytes: int
    """The largest Opus frame the encoder makes at its configured bitrate."""
    fec: bool
    """Whether the encoder has in-band FEC (automatic redundancy is for encoders without)."""
    base_expected_loss_percent: int
    """The encoder's configured expected loss; the adaptation never plans for less."""
    complexity: int
    """The encoder's configured complexity, used whenever loss is planned for."""
    pad_to: int | None = None
    """SFrame padding multiple (0: no padding; None: one audio packet, :attr:`packet_pad_to`)."""
    redundancy: bool | None = None
    """None: automatic (on when loss is reported and the encoder has no FEC); True/False force."""
    backup_bytes: int = 0
    """Opus bytes of each backup copy when the peer reports bursts (0: no backup mode;
    the wrapper must then pass each frame's copy to ``send_audio``; decision 0220)."""
    ping_interval_s: float = DEFAULT_PING_INTERVAL_S
    """Seconds between RTT pings."""
    report_interval_s: float = DEFAULT_REPORT_INTERVAL_S
    """Seconds between receiver reports."""
    media_timeout_s: float = MEDIA_TIMEOUT_S
    """Seconds without an authenticated packet from the peer that end the call."""

    @property
    def packet_pad_to(self) -> int:
        """The padding multiple in use: ``pad_to``, or one audio packet when it is None.

        One audio packet is the 7-byte media header and one frame at the
        configured bitrate (106 bytes at 99-byte frames; 56 at 10 ms frames,
        where a fixed 106 would nearly double the bitrate on the wire).
        """
        if self.pad_to is not None:
            return self.pad_to
        return AUDIO_HEADER_LENGTH + self.frame_bytes
