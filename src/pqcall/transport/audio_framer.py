"""Builds each outgoing audio packet for the sender's current mode (pure).

Scope: :class:`AudioFramer` keeps the frames a packet may carry again and
turns one encoded frame into an :class:`~pqcall.transport.media_packets.AudioPacket`
for the :class:`~pqcall.transport.adaptation.SenderAdaptation` in force:

* clean / FEC: the frame alone;
* redundancy: the previous frame again, when both fit the packet size (so
  the size never changes when the mode does);
* two frames a packet (a narrow link's rungs, ``docs/decisions/0130``): every
  other frame is held (:attr:`AudioFramer.holding`: nothing to send) and goes
  out with the next as AUDIO_PAIR;
* backup (``docs/decisions/0220-bursts.md``): the low-rate backup copies of
  the previous ``backup_copies`` frames, in the AUDIO_BACKUP form padded to
  :func:`backup_packet_bytes`, one constant size for the whole mode.
"""

from __future__ import annotations

from collections import deque

from pqcall.transport.adaptation import SenderAdaptation
from pqcall.transport.media_packets import (
    AUDIO_HEADER_LENGTH,
    BACKUP_HEADER_LENGTH,
    MAX_BACKUP_COPIES,
    REDUNDANCY_HEADER_LENGTH,
    AudioPacket,
)

__all__ = ["AudioFramer", "backup_packet_bytes", "bundle"]


def backup_packet_bytes(adaptation: SenderAdaptation) -> int:
    """The backup mode's packet size: the main frame's cap and every copy's at theirs."""
    copies = adaptation.backup_copies
    return (
        AUDIO_HEADER_LENGTH
        + BACKUP_HEADER_LENGTH
        + copies * (2 + adaptation.backup_bytes)
        + adaptation.frame_bytes
    )


def bundle(control: list[bytes], size: int) -> list[bytes]:
    """Control packets joined into as few payloads as fit ``size`` (the mode's packet size)."""
    payloads: list[bytes] = []
    current = b""
    for packet in control:
        if current and len(current) + len(packet) > size:
            payloads.append(current)
            current = b""
        current += packet
    payloads.append(current)
    return payloads


class AudioFramer:
    """One sender's audio packets (see the module docstring)."""

    __slots__ = ("_backups", "_frame_samples", "_held", "_packet_bytes", "_previous", "holding")

    def __init__(self, frame_samples: int, packet_bytes: int) -> None:
        self._frame_samples = frame_samples  # one frame's timestamp offset
        self._packet_bytes = packet_bytes  # the constant size outside the backup mode
        self._previous: bytes | None = None  # last frame sent, for redundancy
        self._backups: deque[bytes] = deque(maxlen=MAX_BACKUP_COPIES)  # newest first
        self._held: bytes | None = None  # a pair's first frame, until the second comes
        self.holding = False
        """Whether the last :meth:`frame` held its frame for the next packet (send nothing)."""

    def frame(
        self,
        seq: int,
        timestamp: int,
        payload: bytes,
        adaptation: SenderAdaptation,
        backup: bytes | None = None,
    ) -> AudioPacket:
        """The packet for ``payload`` (and ``backup``, its low-rate copy in the backup mode).

        With two frames a packet, every other call holds ``payload`` and returns a packet
        that is not to be sent (:attr:`holding`); a frame held when the mode ends goes out
        as a pair with the next one all the same, so no frame is lost to a switch.
        """
        held, self._held = self._held, None
        self.holding = held is None and adaptation.frames_per_packet == 2
        if self.holding:
            self._held = payload
        if held is not None or self.holding:
            self._previous = payload
            offset = self._frame_samples if held is not None else 0
            return AudioPacket(seq, timestamp, payload, held, offset, pair=True)
        if adaptation.backup_copies:
            if backup is not None and len(backup) > adaptation.backup_bytes:
                backup = None  # not the backup encoder's (a switch): no copy this time
            copies = list(self._backups)[: adaptation.backup_copies]
            if backup is not None:
                self._backups.appendleft(backup)
            else:
                self._backups.clear()  # copies must stay consecutive
            self._previous = payload
            return AudioPacket(
                seq,
                timestamp,
                payload,
                copies[0] if copies else None,
                self._frame_samples if copies else 0,
                tuple(copies[1:]),
                backup_packet_bytes(adaptation),
            )
        self._backups.clear()
        redundant = self._previous if adaptation.redundancy else None
        room = self._packet_bytes - AUDIO_HEADER_LENGTH - REDUNDANCY_HEADER_LENGTH
        if redundant is not None and len(redundant) + len(payload) > room:
            redundant = None  # the frame before a switch was a full one
        self._previous = payload
        offset = self._frame_samples if redundant is not None else 0
        return AudioPacket(seq, timestamp, payload, redundant, offset)
