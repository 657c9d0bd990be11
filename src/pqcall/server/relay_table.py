"""The media relay's state: allocations, bindings and forwarding decisions, sans-I/O.

When two phones cannot reach each other directly, both send their (already SFrame
protected, opaque) media to the server's relay port and the relay forwards each
datagram to the other party. This module decides everything; :mod:`pqcall.server.relay`
only pumps one UDP socket through it (``receive_datagram(data, addr, now)`` → at most
one datagram to send; ``get_timer()`` / ``handle_timer(now)`` for expiry).

Allocation: the signaling server calls :meth:`RelayTable.allocate` for a call and
hands ``caller_token`` to the caller and ``callee_token`` to the callee, over the
authenticated signaling channel only. A token is the party's whole authorization.

The bind and ack datagrams, and the phone's resend timing, are
:mod:`pqcall.transport.relay_wire` (spoken by both sides). Any other datagram from a
bound address is media, forwarded unchanged to the other party's bound address.

Rules:

- A bind with a known token records the sender's address for that party and is
  answered with an ack. Repeating it is harmless (a keepalive, and how a phone learns
  that the other party has bound: send binds every ``relay_wire.BIND_RETRY_S`` until the
  ack says 0x01, and every ``relay_wire.KEEPALIVE_S`` after that to keep NAT bindings open).
- A bind from a new address with the same token moves the party there (NAT rebinding);
  the old address is forgotten at once.
- Anything else from an unknown address is dropped and counted (``unknown_address``,
  or ``bad_bind`` if it starts with the bind magic). Unknown tokens get no answer: the
  relay is no oracle for tokens, and an ack (5 bytes) is smaller than a bind (20), so
  it cannot amplify a spoofed flood.
- Media is forwarded only between the two bound addresses of one allocation, only
  once both are bound (else ``unbound_peer``), within a per-direction token bucket on
  packets and bytes (else ``rate_limited``).
- A 20-byte datagram from a bound address that starts with the bind magic but carries
  no live token is media (an SFrame packet may begin with those bytes by chance).
- An allocation ends at :meth:`RelayTable.release` (hang-up), after
  ``idle_timeout_s`` without any datagram from either party, or ``max_lifetime_s``
  after it was allocated.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from pqcall.exceptions import LocalProtocolError, ServerError
from pqcall.server.ratelimit import RateLimit, TokenBucket
from pqcall.transport.relay_wire import (
    BIND_LENGTH,
    BIND_MAGIC,
    MAGIC_LENGTH,
    TOKEN_LENGTH,
    RelayAck,
)

# relay limits
RELAY_IDLE_TIMEOUT_S = 60.0  # an allocation no party has sent on for this long is released
RELAY_MAX_LIFETIME_S = 6 * 3600.0  # no call is relayed longer than this
RELAY_PACKETS_PER_S = 200.0  # per direction; a voice call needs about 50
RELAY_BYTES_PER_S = 64 * 1024.0  # per direction; a voice call needs about 10 KB/s
RELAY_BURST_S = 1.0  # each bucket holds this many seconds of its rate
MAX_UDP_PAYLOAD = 65_535  # the byte bucket must hold at least one largest datagram
MAX_RELAY_ALLOCATIONS = 10_000
TIMER_RESOLUTION_S = 1.0  # expiry sweeps run at most this often (less for short timeouts)

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
    """A bind that is malformed, has an unknown token, or would bind both parties to one
    address."""
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


class RelayFull(ServerError):
    """The relay holds its maximum number of allocations; try again later (HTTP 503)."""


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
    """Accepted bind datagrams (first binds, keepalives and rebinds)."""
    rebinds: int
    """Binds that moved a party to a new address."""
    packets_forwarded: int
    """Datagrams forwarded to a party."""
    bytes_forwarded: int
    """Their payload bytes."""
    dropped: Mapping[DropReason, int]
    """Datagrams not forwarded, by reason."""

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
    """True for a forwarded datagram (counted as forwarded), False for an ack."""


@dataclass(frozen=True, slots=True)
class AllocationEnded:
    """An allocation ended on its own (returned by :meth:`RelayTable.handle_timer`)."""

    call_id: str
    """The call it served."""
    reason: ReleaseReason
    """Idle or lifetime."""


@dataclass(slots=True, eq=False)
class _Party:
    token: bytes  # authorizes binds for this role
    packets: TokenBucket  # packets this party may send per second
    octets: TokenBucket  # bytes this party may send per second
    address: Address | None = None  # where it binds from; None until bound


@dataclass(slots=True, eq=False)  # identity, not field equality
class _Allocation:
    public: RelayAllocation  # what was handed out
    parties: tuple[_Party, _Party]  # indexed by Role
    last_activity: float  # when either party last sent a datagram
    ended: ReleaseReason | None = field(default=None)  # set once removed


class RelayTable:
    """All relay allocations of one relay socket.

    Args:
        token_source: returns ``n`` unpredictable bytes (``secrets.token_bytes``); the
            core draws no randomness itself.
        idle_timeout_s: release an allocation after this long without a datagram.
        max_lifetime_s: release an allocation this long after it was made.
        packets_per_s: each direction's sustained packet rate.
        bytes_per_s: each direction's sustained byte rate.
        burst_s: each bucket holds this many seconds of its rate (bytes at least one
            largest UDP datagram).
        max_allocations: most live allocations; :meth:`allocate` raises beyond it.

    Calling contract: feed every received datagram to :meth:`receive_datagram` and
    send what it returns; after :meth:`allocate` and after each :meth:`handle_timer`,
    arm a timer for :meth:`get_timer` and call :meth:`handle_timer` when it fires.
    All ``now`` values come from one monotonic clock.
    """

    def __init__(
        self,
        *,
        token_source: Callable[[int], bytes],
        idle_timeout_s: float = RELAY_IDLE_TIMEOUT_S,
        max_lifetime_s: float = RELAY_MAX_LIFETIME_S,
        packets_per_s: float = RELAY_PACKETS_PER_S,
        bytes_per_s: float = RELAY_BYTES_PER_S,
        burst_s: float = RELAY_BURST_S,
        max_allocations: int = MAX_RELAY_ALLOCATIONS,
    ) -> None:
        if idle_timeout_s <= 0 or max_lifetime_s <= 0:
            raise LocalProtocolError("relay timeouts must be positive")
        self._token_source = token_source  # randomness, injected
        self._idle_timeout_s = idle_timeout_s  # see RELAY_IDLE_TIMEOUT_S
        self._max_lifetime_s = max_lifetime_s  # see RELAY_MAX_LIFETIME_S
        self._packet_limit = RateLimit(packets_per_s, max(1.0, packets_per_s * burst_s))
        self._byte_limit = RateLimit(bytes_per_s, max(MAX_UDP_PAYLOAD, bytes_per_s * burst_s))
        self._max_allocations = max_allocations  # see MAX_RELAY_ALLOCATIONS
        self._resolution_s = min(TIMER_RESOLUTION_S, idle_timeout_s / 10)  # sweep granularity
        self._last_sweep = -float("inf")  # when handle_timer last ran
        self._by_call: dict[str, _Allocation] = {}  # live allocations
        self._by_token: dict[bytes, tuple[_Allocation, Role]] = {}  # who a bind token binds
        self._by_address: dict[Address, tuple[_Allocation, Role]] = {}  # who sends from where
        # counters
        self._allocations_total = 0
        self._released = dict.fromkeys(ReleaseReason, 0)
        self._binds = 0
        self._rebinds = 0
        self._packets_forwarded = 0
        self._bytes_forwarded = 0
        self._dropped = dict.fromkeys(DropReason, 0)

    # allocations

    def allocate(self, call_id: str, now: float) -> RelayAllocation:
        """Allocate relaying for ``call_id``, or return its live allocation unchanged.

        Raises:
            RelayFull: if ``max_allocations`` are live.
        """
        existing = self._by_call.get(call_id)
        if existing is not None:
            reason = self._expiry(existing, now)
            if reason is None:
                return existing.public
            self._remove(existing, reason)
        if len(self._by_call) >= self._max_allocations:
            raise RelayFull(f"relay is full ({self._max_allocations} calls)")
        # draw two fresh tokens (a collision means a broken token source)
        caller_token = self._token_source(TOKEN_LENGTH)
        callee_token = self._token_source(TOKEN_LENGTH)
        for token in (caller_token, callee_token):
            if len(token) != TOKEN_LENGTH:
                raise LocalProtocolError(f"token source gave {len(token)} bytes, not 16")
        if caller_token == callee_token or {caller_token, callee_token} & self._by_token.keys():
            raise LocalProtocolError("token source repeated a token")
        public = RelayAllocation(
            call_id=call_id,
            caller_token=caller_token,
            callee_token=callee_token,
            created_at=now,
            expires_at=now + self._max_lifetime_s,
            idle_timeout_s=self._idle_timeout_s,
        )
        parties = (self._new_party(caller_token, now), self._new_party(callee_token, now))
        allocation = _Allocation(public=public, parties=parties, last_activity=now)
        self._by_call[call_id] = allocation
        self._by_token[caller_token] = (allocation, Role.CALLER)
        self._by_token[callee_token] = (allocation, Role.CALLEE)
        self._allocations_total += 1
        return public

    def release(self, call_id: str) -> bool:
        """End ``call_id``'s allocation now (hang-up). Returns whether there was one."""
        allocation = self._by_call.get(call_id)
        if allocation is None:
            return False
        self._remove(allocation, ReleaseReason.RELEASED)
        return True

    def allocation(self, call_id: str) -> RelayAllocation | None:
        """``call_id``'s live allocation, if any."""
        allocation = self._by_call.get(call_id)
        return None if allocation is None else allocation.public

    def bound_address(self, call_id: str, role: Role) -> Address | None:
        """Where ``role`` of ``call_id`` is bound now, if it is."""
        allocation = self._by_call.get(call_id)
        return None if allocation is None else allocation.parties[role].address

    # datagrams

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> Outgoing | None:
        """Handle one datagram from ``addr``; return the datagram to send, if any.

        Never raises for any input: what is not forwarded is counted in :meth:`stats`.
        """
        entry = self._by_address.get(addr)
        if entry is None:
            if data[:MAGIC_LENGTH] == BIND_MAGIC:
                return self._bind(data, addr, now)
            self._dropped[DropReason.UNKNOWN_ADDRESS] += 1
            return None
        allocation, role = entry
        reason = self._expiry(allocation, now)
        if reason is not None:
            self._remove(allocation, reason)
            return self.receive_datagram(data, addr, now)
        # a live token from a bound address is a keepalive or a move; anything else is media
        if len(data) == BIND_LENGTH and data[:MAGIC_LENGTH] == BIND_MAGIC:
            if data[MAGIC_LENGTH:] in self._by_token:
                return self._bind(data, addr, now)
        allocation.last_activity = now
        sender = allocation.parties[role]
        receiver = allocation.parties[1 - role]
        if receiver.address is None:
            self._dropped[DropReason.UNBOUND_PEER] += 1
            return None
        # check both budgets before taking from either
        size = len(data)
        sender.packets.refill(now)
        sender.octets.refill(now)
        if sender.packets.wait_s(1) > 0 or sender.octets.wait_s(size) > 0:
            self._dropped[DropReason.RATE_LIMITED] += 1
            return None
        sender.packets.take(1)
        sender.octets.take(size)
        self._packets_forwarded += 1
        self._bytes_forwarded += size
        return Outgoing(data, receiver.address, is_forward=True)

    def _bind(self, data: bytes, addr: Address, now: float) -> Outgoing | None:
        found = self._by_token.get(data[MAGIC_LENGTH:]) if len(data) == BIND_LENGTH else None
        # (a dict lookup by a 128-bit random token leaks nothing useful through timing)
        if found is None:
            self._dropped[DropReason.BAD_BIND] += 1
            return None
        allocation, role = found
        reason = self._expiry(allocation, now)
        if reason is not None:
            self._remove(allocation, reason)
            self._dropped[DropReason.BAD_BIND] += 1
            return None
        # one address serves one party: refuse binding both roles of a call to it,
        # let a newer call take an address over from an older one
        holder = self._by_address.get(addr)
        if holder is not None:
            other_allocation, other_role = holder
            if other_allocation is allocation and other_role is not role:
                self._dropped[DropReason.BAD_BIND] += 1
                return None
            if other_allocation is not allocation:
                other_allocation.parties[other_role].address = None
        party = allocation.parties[role]
        if party.address is not None and party.address != addr:
            del self._by_address[party.address]
            self._rebinds += 1
        party.address = addr
        self._by_address[addr] = (allocation, role)
        allocation.last_activity = now
        self._binds += 1
        both = allocation.parties[1 - role].address is not None
        return Outgoing(RelayAck(is_peer_bound=both).serialize(), addr, is_forward=False)

    # timer

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should run next (None: no allocation to expire).

        Activity only postpones deadlines, so a timer that fires early is harmless.
        """
        if not self._by_call:
            return None
        earliest = min(
            min(a.last_activity + self._idle_timeout_s, a.public.expires_at)
            for a in self._by_call.values()
        )
        return max(earliest, self._last_sweep + self._resolution_s)

    def handle_timer(self, now: float) -> list[AllocationEnded]:
        """Release every allocation that is idle or past its lifetime at ``now``.

        Returns what it released. (An expired allocation that a datagram reaches before
        the timer is released then, and only counted in :meth:`stats`.)
        """
        self._last_sweep = now
        ended: list[AllocationEnded] = []
        for allocation in list(self._by_call.values()):
            reason = self._expiry(allocation, now)
            if reason is not None:
                self._remove(allocation, reason)
                ended.append(AllocationEnded(allocation.public.call_id, reason))
        return ended

    # counters

    def stats(self) -> RelayStats:
        """A snapshot of the counters."""
        return RelayStats(
            allocations_active=len(self._by_call),
            allocations_total=self._allocations_total,
            released=dict(self._released),
            binds=self._binds,
            rebinds=self._rebinds,
            packets_forwarded=self._packets_forwarded,
            bytes_forwarded=self._bytes_forwarded,
            dropped=dict(self._dropped),
        )

    def __len__(self) -> int:
        """How many allocations are live."""
        return len(self._by_call)

    # helpers

    def _new_party(self, token: bytes, now: float) -> _Party:
        return _Party(
            token=token,
            packets=TokenBucket(self._packet_limit, now),
            octets=TokenBucket(self._byte_limit, now),
        )

    def _expiry(self, allocation: _Allocation, now: float) -> ReleaseReason | None:
        if now >= allocation.public.expires_at:
            return ReleaseReason.LIFETIME
        if now - allocation.last_activity >= self._idle_timeout_s:
            return ReleaseReason.IDLE
        return None

    def _remove(self, allocation: _Allocation, reason: ReleaseReason) -> None:
        if allocation.ended is not None:
            return
        allocation.ended = reason
        del self._by_call[allocation.public.call_id]
        for party in allocation.parties:
            del self._by_token[party.token]
            if party.address is not None:
                del self._by_address[party.address]
                party.address = None
        self._released[reason] += 1
