"""A state each side tells the other on the media channel: ours, the peer's, change numbers.

Scope: :class:`Signalled`, what :class:`~pqcall.transport.media_protocol.MediaProtocol`
keeps for MUTE (muted, 0 or 1) and FLAGS (bits: voice disguised): our value and how
many times it changed (u16, serial: each change is sent a few times, against loss),
and the peer's value with the newest change number applied, so a stale or repeated
copy never undoes a newer one. Pure: no clock, no I/O.
"""

from __future__ import annotations

from pqcall.transport.packet_types import SEQUENCE_MODULUS, serial_delta

__all__ = ["Signalled"]


class Signalled:
    """Our value of one signalled state and the peer's (both start at 0)."""

    __slots__ = ("changes", "ours", "peer", "peer_change")

    def __init__(self) -> None:
        self.ours = 0
        self.changes = 0  # our change number
        self.peer = 0
        self.peer_change: int | None = None  # the newest change number applied

    def set(self, value: int) -> bool:
        """Take our new value; whether it changed (then it is to be announced)."""
        if value == self.ours:
            return False
        self.ours = value
        self.changes = (self.changes + 1) % SEQUENCE_MODULUS
        return True

    def received(self, value: int, change: int) -> bool:
        """Apply the peer's copy unless stale; whether the peer's value changed."""
        if self.peer_change is not None:
            if serial_delta(change - self.peer_change, SEQUENCE_MODULUS) <= 0:
                return False  # a copy, or older than what we applied
        self.peer_change = change
        changed, self.peer = value != self.peer, value
        return changed
