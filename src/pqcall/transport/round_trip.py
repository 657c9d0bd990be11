"""Round-trip measurement on the media channel: our pings and their pongs, the peer's pings.

Scope: :class:`RoundTrip`, the part of :class:`~pqcall.transport.media_protocol.MediaProtocol`
that numbers our pings (``PING``), matches the pongs that come back and measures the
round trip without the time the peer held its answer, and holds the pongs we owe the
peer until the next control datagram (at most :data:`MAX_PONG_HOLD_S`). Sans-I/O:
``now`` (seconds, monotonic) in, packets and measurements out; the protocol decides
when to ping and sends what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pqcall.transport.media_events import RttMeasured
from pqcall.transport.media_packets import U32_MAX, U64_MODULUS, PingPacket, PongPacket

__all__ = [
    "MAX_OUTSTANDING_PINGS",
    "MAX_PENDING_PONGS",
    "MAX_PONG_HOLD_S",
    "MICROSECONDS_PER_SECOND",
    "RoundTrip",
]

MICROSECONDS_PER_SECOND: Final = 1_000_000
MAX_OUTSTANDING_PINGS: Final = 8
"""Pings remembered for their pong; older ones are forgotten."""
MAX_PENDING_PONGS: Final = 4
"""Pongs waiting to be sent; a flood of pings gets no more answers."""
MAX_PONG_HOLD_S: Final = 1.0
"""A pong waits for the next control datagram (its ``hold`` says how long), at most this."""


@dataclass(frozen=True, slots=True)
class _PendingPong:
    ping: PingPacket
    received_at: float  # `now` of the ping's arrival, for the hold time


class RoundTrip:
    """Our pings and the pongs that answer them; the pongs we owe the peer."""

    __slots__ = ("_pending", "_ping_id", "_pings")

    def __init__(self) -> None:
        self._ping_id = 0  # of the next ping
        self._pings: dict[int, tuple[int, float]] = {}  # id -> (sent_at_us, now), oldest first
        self._pending: list[_PendingPong] = []  # for the next control datagram

    @property
    def pong_due_at(self) -> float | None:
        """When the oldest pong we owe must go out even without other control, or None."""
        return self._pending[0].received_at + MAX_PONG_HOLD_S if self._pending else None

    def ping(self, now: float) -> PingPacket:
        """A new ping to send now; remembered for its pong."""
        ping = PingPacket(self._ping_id, round(now * MICROSECONDS_PER_SECOND) % U64_MODULUS)
        self._pings[ping.ping_id] = (ping.sent_at_us, now)
        while len(self._pings) > MAX_OUTSTANDING_PINGS:
            del self._pings[next(iter(self._pings))]
        self._ping_id = (self._ping_id + 1) & U32_MAX
        return ping

    def pong_received(self, pong: PongPacket, now: float) -> RttMeasured | None:
        """The round trip a pong measures, or None if it answers no ping we remember."""
        sent = self._pings.get(pong.ping_id)
        if sent is None or sent[0] != pong.sent_at_us:
            return None
        del self._pings[pong.ping_id]
        hold_s = pong.hold_us / MICROSECONDS_PER_SECOND
        return RttMeasured(max(0.0, now - sent[1] - hold_s), sent[1], hold_s)

    def ping_received(self, ping: PingPacket, now: float) -> None:
        """Owe the peer a pong (unless :data:`MAX_PENDING_PONGS` are owed already)."""
        if len(self._pending) < MAX_PENDING_PONGS:
            self._pending.append(_PendingPong(ping, now))

    def pongs(self, now: float) -> list[PongPacket]:
        """The pongs owed, their hold time taken from ``now``; none owed afterwards."""
        pongs = []
        for pending in self._pending:
            hold_us = round((now - pending.received_at) * MICROSECONDS_PER_SECOND)
            ping = pending.ping
            pongs.append(PongPacket(ping.ping_id, ping.sent_at_us, min(hold_us, U32_MAX)))
        self._pending.clear()
        return pongs

    def clear(self) -> None:
        """Owe nothing more (the call ended)."""
        self._pending.clear()
