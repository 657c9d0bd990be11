"""The media relay's state: allocations, bindings and forwarding decisions, sans-I/O.

When two phones cannot reach each other directly, both send their (already SFrame
protected, opaque) media to the server's relay port and the relay forwards each
datagram to the other party. This module decides everything; :mod:`pqcall.server.relay`
only pumps one UDP socket through it (``receive_datagram(data, addr, now)`` → at most
one datagram to send; ``get_timer()`` / ``handle_timer(now)`` for expiry).

Allocation: the signaling server calls :meth:`RelayTable.allocate` for a call and
hands ``caller_token`` to the caller and ``callee_token`` to the callee, over the
authenticated signaling channel only. Such a grant secret is the party's whole
authorization; it never travels on the media path: binds carry the grant id and a MAC
under the bind key both derive from it (:func:`pqcall.transport.relay_wire.grant_keys`).

The bind, challenge, answer and ack datagrams, and the phone's resend timing, are
:mod:`pqcall.transport.relay_wire` (spoken by both sides). Any other datagram from a
bound address is media, forwarded unchanged to the other party's bound address.

Rules:

- A bind must name a live grant, carry a MAC that verifies under its key, and a
  counter above the highest this party has used (else dropped: ``bad_bind``, or
  ``replayed`` for a stale counter, e.g. a bind seen on the wire and sent again).
- A good bind from the party's bound address is answered with an ack. Repeating it
  (a higher counter each time) is a keepalive, and how a phone learns that the other
  party has bound: send binds every ``relay_wire.BIND_RETRY_S`` until the ack says 0x01,
  and every ``relay_wire.KEEPALIVE_S`` after that to keep NAT bindings open.
- A good bind from any other address (the first bind, or NAT rebinding) binds nothing
  yet: the relay sends a challenge with a fresh nonce there and remembers it (one per
  party, for ``CHALLENGE_TIMEOUT_S``). An answer from that same address with that
  nonce and a MAC under the party's key binds (or moves) the party there, is answered
  with an ack, and the old address is forgotten at once. Anything else that looks like
  an answer is ``bad_answer``.
- When the second party of a call binds, the first also gets an ack 0x01 at once
  (:meth:`RelayTable.notices`), to the address it proved: it stops waiting for its
  next bind's ack (up to ``BIND_RETRY_S``) to learn that the relay forwards.
- A bind of another version (a version-1 bind is ``"PQRB" | token``, 20 bytes) from an
  unknown address gets the refusal ack (``old_version``).
- Anything else from an unknown address is dropped and counted (``unknown_address``,
  or ``bad_bind`` if it starts with the bind magic). Unknown grants and bad MACs get
  no answer: the relay is no oracle; an ack (5 bytes) and a challenge (37) are smaller
  than the bind (45) or answer (53) that caused them, so they cannot amplify a spoofed
  flood.
- Media is forwarded only between the two bound addresses of one allocation, only
  once both are bound (else ``unbound_peer``), within a per-direction token bucket on
  packets and bytes (else ``rate_limited``).
- A datagram from a bound address shaped like a bind or answer (length and magic) whose
  grant id is not live is media (an SFrame packet may begin with those bytes by chance).
- An allocation ends at :meth:`RelayTable.release` (hang-up), after
  ``idle_timeout_s`` without any datagram from either party, or ``max_lifetime_s``
  after it was allocated.
- Persistence (:mod:`pqcall.server.relay_store`): :meth:`RelayTable.changed` names the
  allocations whose stored form is stale (made, a party bound or moved, ended);
  :meth:`RelayTable.snapshot` / :meth:`RelayTable.restore` convert. A restored party
  keeps forwarding to its stored address, but every bind of it (even from that address)
  gets a challenge until it answers one: a bind seen on the wire before the restart,
  with a counter above the stored one, can never bind anything. A restored allocation
  ending unused here (no datagram, not released) keeps its row: another relay's, maybe.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from pqcall.exceptions import DecodeError, LocalProtocolError, ServerError
from pqcall.server.ratelimit import RateLimit, TokenBucket
from pqcall.server.relay_store_types import (
    Address,
    DropReason,
    Outgoing,
    RelayAllocation,
    RelayStats,
    ReleaseReason,
    Role,
    StoredAllocation,
    StoredParty,
)
from pqcall.transport.relay_wire import (
    ANSWER_LENGTH,
    ANSWER_MAGIC,
    BIND_LENGTH,
    BIND_MAGIC,
    GRANT_ID_LENGTH,
    MAGIC_LENGTH,
    NONCE_LENGTH,
    TOKEN_LENGTH,
    VERSION,
    GrantKeys,
    RelayAck,
    RelayAnswer,
    RelayBind,
    RelayChallenge,
    bind_version,
    grant_keys,
)

__all__ = [  # the types from relay_store_types are re-exported: import them from here
    "Address",
    "AllocationEnded",
    "DropReason",
    "Outgoing",
    "RelayAllocation",
    "RelayFull",
    "RelayStats",
    "RelayTable",
    "ReleaseReason",
    "Role",
]

# relay limits
RELAY_IDLE_TIMEOUT_S = 60.0  # an allocation no party has sent on for this long is released
RELAY_MAX_LIFETIME_S = 6 * 3600.0  # no call is relayed longer than this
RELAY_PACKETS_PER_S = 200.0  # per direction; a voice call needs about 50
RELAY_BYTES_PER_S = 64 * 1024.0  # per direction; a voice call needs about 10 KB/s
RELAY_BURST_S = 1.0  # each bucket holds this many seconds of its rate
MAX_UDP_PAYLOAD = 65_535  # the byte bucket must hold at least one largest datagram
MAX_RELAY_ALLOCATIONS = 10_000
TIMER_RESOLUTION_S = 1.0  # expiry sweeps run at most this often (less for short timeouts)
CHALLENGE_TIMEOUT_S = 5.0  # an answer to a challenge must come back within this
MAX_UNKNOWN_GRANTS = 64  # unknown_grants() remembers at most this many between calls
_GRANT_ID_AT = MAGIC_LENGTH + 1  # where a bind's or answer's grant id starts


class RelayFull(ServerError):
    """The relay holds its maximum number of allocations; try again later (HTTP 503)."""


@dataclass(frozen=True, slots=True)
class AllocationEnded:
    """An allocation ended on its own (returned by :meth:`RelayTable.handle_timer`)."""

    call_id: str
    """The call it served."""
    reason: ReleaseReason
    """Idle or lifetime."""


@dataclass(slots=True, eq=False)
class _Party:
    keys: GrantKeys  # the grant id and bind key of this role
    packets: TokenBucket  # packets this party may send per second
    octets: TokenBucket  # bytes this party may send per second
    address: Address | None = None  # where it binds from; None until bound
    counter: int = 0  # the highest bind counter accepted
    challenge: tuple[Address, bytes, float] | None = None  # (to, nonce, until) outstanding
    restored: bool = False  # restored after a restart: binds need a challenge until answered


@dataclass(slots=True, eq=False)  # identity, not field equality
class _Allocation:
    public: RelayAllocation  # what was handed out
    parties: tuple[_Party, _Party]  # indexed by Role
    last_activity: float  # when either party last sent a datagram
    ended: ReleaseReason | None = field(default=None)  # set once removed
    restored_at: float | None = None  # restore() time; None if allocate() made it


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
    send what it returns (after an ack or challenge, also what :meth:`notices` returns);
    after :meth:`allocate` and after each :meth:`handle_timer`,
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
        self._by_grant: dict[bytes, tuple[_Allocation, Role]] = {}  # grant id -> its party
        self._by_address: dict[Address, tuple[_Allocation, Role]] = {}  # who sends from where
        # counters
        self._allocations_total = 0
        self._released = dict.fromkeys(ReleaseReason, 0)
        self._binds = 0
        self._rebinds = 0
        self._challenges = 0
        self._notices: list[Outgoing] = []  # acks to send besides an answer (notices())
        self._packets_forwarded = 0
        self._bytes_forwarded = 0
        self._dropped = dict.fromkeys(DropReason, 0)
        self._dirty: set[str] = set()  # call ids whose stored form is stale (changed())
        self._unknown: list[bytes] = []  # grant ids of well-formed binds we do not hold

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
        caller_keys, callee_keys = grant_keys(caller_token), grant_keys(callee_token)
        ids = {caller_keys.grant_id, callee_keys.grant_id}
        if len(ids) != 2 or ids & self._by_grant.keys():
            raise LocalProtocolError("token source repeated a token")
        public = RelayAllocation(
            call_id=call_id,
            caller_token=caller_token,
            callee_token=callee_token,
            created_at=now,
            expires_at=now + self._max_lifetime_s,
            idle_timeout_s=self._idle_timeout_s,
        )
        parties = (self._new_party(caller_keys, now), self._new_party(callee_keys, now))
        allocation = _Allocation(public=public, parties=parties, last_activity=now)
        self._by_call[call_id] = allocation
        self._by_grant[caller_keys.grant_id] = (allocation, Role.CALLER)
        self._by_grant[callee_keys.grant_id] = (allocation, Role.CALLEE)
        self._allocations_total += 1
        self._dirty.add(call_id)
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
            magic = data[:MAGIC_LENGTH]
            if magic == BIND_MAGIC:
                return self._bind(data, addr, now)
            if magic == ANSWER_MAGIC:
                return self._answer(data, addr, now)
            self._dropped[DropReason.UNKNOWN_ADDRESS] += 1
            return None
        allocation, role = entry
        reason = self._expiry(allocation, now)
        if reason is not None:
            self._remove(allocation, reason)
            return self.receive_datagram(data, addr, now)
        # a live grant id from a bound address is control (a keepalive, a move, an
        # answer); anything else is media
        size = len(data)
        if (size == BIND_LENGTH or size == ANSWER_LENGTH) and self._names_live_grant(data):
            magic = data[:MAGIC_LENGTH]
            if magic == BIND_MAGIC and size == BIND_LENGTH:
                return self._bind(data, addr, now)
            if magic == ANSWER_MAGIC and size == ANSWER_LENGTH:
                return self._answer(data, addr, now)
        allocation.last_activity = now
        sender = allocation.parties[role]
        receiver = allocation.parties[1 - role]
        if receiver.address is None:
            self._dropped[DropReason.UNBOUND_PEER] += 1
            return None
        # check both budgets before taking from either
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

    def _names_live_grant(self, data: bytes) -> bool:
        grant_id = data[_GRANT_ID_AT : _GRANT_ID_AT + GRANT_ID_LENGTH]
        return data[MAGIC_LENGTH] == VERSION and grant_id in self._by_grant

    def _live_party(self, grant_id: bytes, now: float) -> tuple[_Allocation, Role] | None:
        found = self._by_grant.get(grant_id)
        # (a dict lookup by a 128-bit id leaks nothing useful through timing: the id is
        # no secret, the MAC is checked in constant time)
        if found is None:
            return None
        reason = self._expiry(found[0], now)
        if reason is not None:
            self._remove(found[0], reason)
            return None
        return found

    def _bind(self, data: bytes, addr: Address, now: float) -> Outgoing | None:
        version = bind_version(data)
        if version != VERSION:
            if version is None or addr in self._by_address:
                self._dropped[DropReason.BAD_BIND] += 1
                return None
            self._dropped[DropReason.OLD_VERSION] += 1
            return Outgoing(RelayAck.refusal(), addr, is_forward=False)
        try:
            bind = RelayBind.parse(data)
        except DecodeError:
            self._dropped[DropReason.BAD_BIND] += 1
            return None
        found = self._live_party(bind.grant_id, now)
        if found is None and len(self._unknown) < MAX_UNKNOWN_GRANTS:
            self._unknown.append(bind.grant_id)
        if found is None or not bind.is_authentic(found[0].parties[found[1]].keys.key):
            self._dropped[DropReason.BAD_BIND] += 1
            return None
        allocation, role = found
        party = allocation.parties[role]
        if bind.counter <= party.counter:
            self._dropped[DropReason.REPLAYED] += 1
            return None
        party.counter = bind.counter
        if party.address == addr and not party.restored:  # a keepalive
            return self._ack(allocation, role, now)
        if self._is_other_role_at(allocation, role, addr):
            self._dropped[DropReason.BAD_BIND] += 1
            return None
        # a new address: only a return-routability check, nothing moves yet
        nonce = self._token_source(NONCE_LENGTH)
        party.challenge = (addr, nonce, now + CHALLENGE_TIMEOUT_S)
        self._challenges += 1
        return Outgoing(RelayChallenge(nonce).serialize(party.keys), addr, is_forward=False)

    def _answer(self, data: bytes, addr: Address, now: float) -> Outgoing | None:
        try:
            answer = RelayAnswer.parse(data)
        except DecodeError:
            self._dropped[DropReason.BAD_ANSWER] += 1
            return None
        found = self._live_party(answer.grant_id, now)
        if found is None:
            self._dropped[DropReason.BAD_ANSWER] += 1
            return None
        allocation, role = found
        party = allocation.parties[role]
        challenge = party.challenge
        if (
            challenge is None
            or challenge[0] != addr
            or now >= challenge[2]
            or not hmac.compare_digest(challenge[1], answer.nonce)
            or not answer.is_authentic(party.keys.key)
            or self._is_other_role_at(allocation, role, addr)
        ):
            self._dropped[DropReason.BAD_ANSWER] += 1
            return None
        party.challenge = None
        other = allocation.parties[1 - role]
        if party.address is None and other.address is not None:
            # both bound just now: tell the waiting party at once, not at its next bind
            self._notices.append(Outgoing(RelayAck(True).serialize(), other.address, False))
        # one address serves one party: a newer call takes an address over from an older one
        holder = self._by_address.get(addr)
        if holder is not None and holder[0] is not allocation:
            holder[0].parties[holder[1]].address = None
        if party.address is not None and party.address != addr:
            del self._by_address[party.address]
            self._rebinds += 1
        party.address = addr
        party.restored = False
        self._by_address[addr] = (allocation, role)
        self._dirty.add(allocation.public.call_id)
        return self._ack(allocation, role, now)

    def _is_other_role_at(self, allocation: _Allocation, role: Role, addr: Address) -> bool:
        holder = self._by_address.get(addr)
        return holder is not None and holder[0] is allocation and holder[1] is not role

    def _ack(self, allocation: _Allocation, role: Role, now: float) -> Outgoing:
        allocation.last_activity = now
        self._binds += 1
        both = allocation.parties[1 - role].address is not None
        addr = allocation.parties[role].address
        assert addr is not None
        return Outgoing(RelayAck(is_peer_bound=both).serialize(), addr, is_forward=False)

    def notices(self) -> list[Outgoing]:
        """Datagrams to send besides what :meth:`receive_datagram` returned, then forgotten:
        the "both bound" ack to the party that bound first, when the other one binds (so
        it need not wait for its next bind). Only ever after a non-forward answer."""
        notices, self._notices = self._notices, []
        return notices

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
            challenges=self._challenges,
        )

    def __len__(self) -> int:
        """How many allocations are live."""
        return len(self._by_call)

    # helpers

    def _new_party(self, keys: GrantKeys, now: float) -> _Party:
        return _Party(
            keys=keys,
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
            del self._by_grant[party.keys.grant_id]
            if party.address is not None:
                del self._by_address[party.address]
                party.address = None
        self._released[reason] += 1
        if (
            reason is ReleaseReason.RELEASED
            or allocation.restored_at is None
            or allocation.last_activity != allocation.restored_at
        ):
            self._dirty.add(allocation.public.call_id)

    @property
    def has_changes(self) -> bool:
        """Whether :meth:`changed` has something."""
        return bool(self._dirty)

    def mark_changed(self, call_ids: list[str]) -> None:
        """Name these again in :meth:`changed` (their store write failed)."""
        self._dirty.update(call_ids)

    def call_ids(self) -> list[str]:  # the calls with a live allocation
        return list(self._by_call)

    def unknown_grants(self) -> list[bytes]:
        """Grant ids of well-formed binds naming no live grant since the last call (then
        forgotten): to look up in the store, in case another process allocated them."""
        unknown, self._unknown = self._unknown, []
        return unknown

    def changed(self) -> list[str]:
        """The call ids whose stored form is stale since the last call (then forgotten):
        store :meth:`snapshot` of each, or delete it when that is None."""
        dirty, self._dirty = self._dirty, set()
        return sorted(dirty)

    def snapshot(self, call_id: str, now: float, wall_now: float) -> StoredAllocation | None:
        """``call_id``'s allocation as stored (None: it has none); ``wall_now`` is
        ``time.time()`` at the monotonic ``now``."""
        allocation = self._by_call.get(call_id)
        if allocation is None:
            return None
        caller, callee = (
            StoredParty(p.keys.grant_id, p.keys.key, p.address, p.counter)
            for p in allocation.parties
        )
        expires_at = wall_now + allocation.public.expires_at - now
        return StoredAllocation(call_id, caller, callee, expires_at)

    def restore(self, stored: StoredAllocation, now: float, wall_now: float) -> bool:
        """Take back a stored allocation (after a restart, or another process's): its
        addresses forward at once, binds get challenges until one is answered; its
        tokens are empty (secrets are not stored). False (no change) if the call or a
        grant is live, it expired, or the table is full."""
        remaining = stored.expires_at - wall_now
        grants = {stored.caller.grant_id, stored.callee.grant_id}
        if (
            remaining <= 0
            or stored.call_id in self._by_call
            or len(grants) != 2
            or grants & self._by_grant.keys()
            or len(self._by_call) >= self._max_allocations
        ):
            return False
        public = RelayAllocation(
            call_id=stored.call_id,
            caller_token=b"",
            callee_token=b"",
            created_at=now,
            expires_at=now + remaining,
            idle_timeout_s=self._idle_timeout_s,
        )
        parties = []
        for kept in (stored.caller, stored.callee):
            party = self._new_party(GrantKeys(kept.grant_id, kept.key), now)
            party.counter = kept.counter
            party.restored = True
            parties.append(party)
        allocation = _Allocation(public, (parties[0], parties[1]), now, restored_at=now)
        self._by_call[stored.call_id] = allocation
        for role, (party, kept) in enumerate(
            zip(parties, (stored.caller, stored.callee), strict=True)
        ):
            self._by_grant[party.keys.grant_id] = (allocation, Role(role))
            if kept.address is not None and kept.address not in self._by_address:
                party.address = kept.address
                self._by_address[kept.address] = (allocation, Role(role))
        return True
