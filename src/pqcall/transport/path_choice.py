"""What media path selection reports: the chosen path, its counters, why datagrams did not count.

Shared by :mod:`pqcall.transport.pathcheck` (which chooses) and
:mod:`pqcall.transport.path_responder` (which answers late messages once media runs);
plain frozen values, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pqcall.transport.path_messages import Address

__all__ = [
    "DropReason",
    "PathCheckStats",
    "PathChoice",
    "PathCounters",
    "PathKind",
    "TurnRoute",
]


class PathKind(enum.StrEnum):
    """Which path the media takes."""

    DIRECT = "direct"
    """Straight to the peer."""
    RELAY = "relay"
    """Through the server's media relay."""


class DropReason(enum.StrEnum):
    """Why a datagram did not count for path selection."""

    NOT_PATH_MESSAGE = "not_path_message"
    """Neither a path message nor a relay ack (e.g. the peer's first media)."""
    MALFORMED = "malformed"
    """Has the magic but not the length, or a field has no meaning."""
    UNAUTHENTICATED = "unauthenticated"
    """The MAC does not verify: not from a party of this call."""
    REFLECTED = "reflected"
    """Carries our own role: one of our messages sent back to us."""
    UNKNOWN_TRANSACTION = "unknown_transaction"
    """An answer to no outstanding request of ours (late, repeated, or not ours)."""
    ASYMMETRIC = "asymmetric"
    """An answer from another address than the one its request went to."""
    UNEXPECTED = "unexpected"
    """Authentic but not for this role or state (e.g. a second, different nomination)."""


@dataclass(frozen=True, slots=True)
class PathCheckStats:
    """Counters of one path selection, or of the late messages a path responder took."""

    checks_sent: int
    """CHECK messages sent (every copy)."""
    checks_received: int
    """Authentic CHECKs from the peer (each answered)."""
    responses_received: int
    """RESPONSEs that matched a check of ours."""
    nominations_sent: int
    """NOMINATE copies sent (caller)."""
    nominations_received: int
    """Authentic NOMINATEs from the caller (callee)."""
    binds_sent: int
    """Relay binds sent."""
    relay_acks_received: int
    """Relay acks received from the relay."""
    dropped: Mapping[DropReason, int]
    """Datagrams that did not count, by reason."""
    relay_challenges_late: int = 0
    """Relay challenges a path responder took after the choice (to binds sent while
    selecting; not answered, not media)."""

    @property
    def rejected(self) -> int:
        """Every dropped datagram that looked like a path message (not other traffic)."""
        return sum(n for r, n in self.dropped.items() if r is not DropReason.NOT_PATH_MESSAGE)


@dataclass(frozen=True, slots=True)
class TurnRoute:
    """How a path through a TURN server reaches it (issue 17): shown instead of the
    loopback proxy the media socket sends to."""

    transport: str
    """How the phone reaches the TURN server: ``udp``, ``tcp`` or ``tls``."""
    server: Address
    """The TURN server, as its URL names it (host, port)."""
    relayed: Address
    """Our allocation's relayed address on it: where the peer's media goes."""


@dataclass(frozen=True, slots=True)
class PathChoice:
    """The media path a selection chose: where to send media, and how it was found."""

    kind: PathKind
    """``direct`` or ``relay``."""
    peer: Address
    """Where media goes, and where the peer's media comes from: the peer's address
    (direct) or the relay's (relay)."""
    local_candidate: Address | None
    """Direct: our address on the path as the peer addressed or saw it; relay: None."""
    remote_candidate: Address | None
    """Direct: the peer's address on the path (= ``peer``); relay: None."""
    relay: Address | None
    """The relay offered for this call, whether used or not."""
    elapsed_ms: float
    """From :meth:`~pqcall.transport.pathcheck.PathSelection.start` to the choice."""
    stats: PathCheckStats
    """The counters at the moment of the choice."""
    turn: TurnRoute | None = None
    """Set when our side of the path runs through a TURN server (``peer`` is then a
    loopback proxy, and ``kind`` says what TURN forwards to: the peer or the relay)."""

    @property
    def label(self) -> str:
        """The path as shown (CLI, ``--json``, UI): ``direct``, ``relay``, or
        ``turn-udp`` / ``turn-tcp`` / ``turn-tls`` when through a TURN server."""
        return str(self.kind) if self.turn is None else f"turn-{self.turn.transport}"

    @property
    def shown_address(self) -> Address:
        """Where media goes as shown: the TURN server when through one, else ``peer``."""
        return self.peer if self.turn is None else self.turn.server


class PathCounters:
    """The live counters behind :class:`PathCheckStats`, kept by a selection or a responder."""

    def __init__(self) -> None:
        # one per PathCheckStats field, which documents each
        self.checks_sent = 0
        self.checks_received = 0
        self.responses_received = 0
        self.nominations_sent = 0
        self.nominations_received = 0
        self.binds_sent = 0
        self.relay_acks_received = 0
        self.relay_challenges_late = 0
        self.dropped = dict.fromkeys(DropReason, 0)

    def snapshot(self) -> PathCheckStats:
        """The counters now, frozen."""
        return PathCheckStats(
            checks_sent=self.checks_sent,
            checks_received=self.checks_received,
            responses_received=self.responses_received,
            nominations_sent=self.nominations_sent,
            nominations_received=self.nominations_received,
            binds_sent=self.binds_sent,
            relay_acks_received=self.relay_acks_received,
            dropped=MappingProxyType(dict(self.dropped)),
            relay_challenges_late=self.relay_challenges_late,
        )
