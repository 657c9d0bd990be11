"""The relay's plain data types, and what it persists of an allocation to go on after a restart.

The types :mod:`pqcall.server.relay_table` uses and re-exports (roles, reasons,
allocations, counters, outgoing datagrams) live here to keep that module short.

:meth:`pqcall.server.relay_table.RelayTable.snapshot` makes a :class:`StoredAllocation`,
:meth:`~pqcall.server.relay_table.RelayTable.restore` takes one back;
:mod:`pqcall.server.relay_store` keeps them in the server's database.

Stored per party: the grant id and the bind key derived from the grant secret (never
the secret: with a leaked row one can check and forge binds of that one call, which the
relay's operator could anyway; the secret would tell nothing more, but storing less is
the rule), the address the party proved by answering a challenge, and the highest bind
counter accepted there. Per allocation: the call id and the wall-clock expiry.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

Address = tuple[str | int, ...]
"""A UDP peer address exactly as the socket reports it: (host, port[, flow, scope])."""


class Role(enum.IntEnum):
    """A party's role in a call; the other party is ``Role(1 - role)``."""

    CALLER = 0
    CALLEE = 1


class DropReason(enum.StrEnum):
    """Why a datagram was not forwarded."""

    UNKNOWN_ADDRESS = "unknown_address"
    """From an address bound to no allocation, and not a bind."""
    UNBOUND_PEER = "unbound_peer"
    """From a bound party whose peer has not bound yet."""
    RATE_LIMITED = "rate_limited"
    """Over the sender's packet or byte budget."""
    BAD_BIND = "bad_bind"
    """A bind that is malformed, names no live grant, has a MAC that does not verify, or
    would bind both parties to one address."""
    REPLAYED = "replayed"
    """An authentic bind whose counter is not above the party's highest (a replay)."""
    BAD_ANSWER = "bad_answer"
    """An answer to no outstanding challenge (wrong address, nonce, MAC, or too late)."""
    OLD_VERSION = "old_version"
    """A bind of another version than ours; answered with the refusal ack."""
    SEND_BLOCKED = "send_blocked"
    """Forwardable, but the relay socket's send buffer was full (counted by the wrapper)."""


class ReleaseReason(enum.StrEnum):
    """Why an allocation ended."""

    RELEASED = "released"
    """:meth:`RelayTable.release` (the call was hung up)."""
    IDLE = "idle"
    """No datagram from either party for the idle timeout."""
    LIFETIME = "lifetime"
    """The maximum lifetime passed."""


@dataclass(frozen=True, slots=True)
class RelayAllocation:
    """A call's relay authorization, to hand out over signaling (each party its own token)."""

    call_id: str
    """The call this allocation serves."""
    caller_token: bytes
    """The caller's 16-byte bind token (give it to the caller only)."""
    callee_token: bytes
    """The callee's 16-byte bind token (give it to the callee only)."""
    created_at: float
    """When it was allocated, on the relay's clock."""
    expires_at: float
    """When it ends at the latest, on the relay's clock."""
    idle_timeout_s: float
    """It ends earlier after this many seconds without a datagram from either party."""

    @property
    def max_lifetime_s(self) -> float:
        """Seconds from allocation to ``expires_at``."""
        return self.expires_at - self.created_at

    def token(self, role: Role) -> bytes:
        """The bind token of ``role``."""
        return self.caller_token if role is Role.CALLER else self.callee_token


@dataclass(frozen=True, slots=True)
class RelayStats:
    """A snapshot of the relay's counters (totals since it started, except the gauges)."""

    allocations_active: int
    """Allocations alive now."""
    allocations_total: int
    """Allocations made."""
    released: Mapping[ReleaseReason, int]
    """Allocations ended, by reason."""
    binds: int
    """Accepted binds and answers (first binds, keepalives and moves)."""
    rebinds: int
    """Answers that moved a party to a new address."""
    packets_forwarded: int
    """Datagrams forwarded to a party."""
    bytes_forwarded: int
    """Their payload bytes."""
    dropped: Mapping[DropReason, int]
    """Datagrams not forwarded, by reason."""
    challenges: int = 0
    """Challenges sent to a new address of a party (return-routability checks)."""

    @property
    def packets_dropped(self) -> int:
        """All dropped datagrams."""
        return sum(self.dropped.values())


class Outgoing(NamedTuple):
    """A datagram the relay must send."""

    data: bytes
    """The payload."""
    address: Address
    """Where to."""
    is_forward: bool
    """True for a forwarded datagram (counted as forwarded), False for an ack or challenge."""


@dataclass(frozen=True, slots=True)
class StoredParty:
    """One party of a stored allocation."""

    grant_id: bytes
    """The grant id (16 bytes, not secret)."""
    key: bytes
    """The bind key (32 bytes; never logged)."""
    address: Address | None
    """Where the party proved it receives (None: not bound yet)."""
    counter: int
    """The highest bind counter accepted (binds at or below it are replays)."""


@dataclass(frozen=True, slots=True)
class StoredAllocation:
    """An allocation as stored: enough to go on relaying it after a restart."""

    call_id: str
    """The call it serves."""
    caller: StoredParty
    """The caller's party."""
    callee: StoredParty
    """The callee's party."""
    expires_at: float
    """Its end at the latest, on the wall clock (``time.time()``; monotonic clocks
    do not survive a restart)."""
