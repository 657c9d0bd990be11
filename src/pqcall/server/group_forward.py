"""The group forwarder's state: bindings and fan-out decisions, sans-I/O.

Each joined member of a group call holds a forwarding token (given only to it,
over the authenticated API). :class:`GroupForwardTable` learns the token with
:meth:`~GroupForwardTable.add` and forgets it with :meth:`~GroupForwardTable.remove`;
:mod:`pqcall.server.group_relay` pumps one UDP socket through
:meth:`~GroupForwardTable.receive_datagram`. The wire is
:mod:`pqcall.transport.group_wire`.

Rules:

- a bind (``PQGB`` + a live token) records the sender's address for that member
  (a new address moves it: NAT rebinding) and is answered with an ack saying how
  many other members are bound; a bind with an unknown token gets no answer;
- any other datagram from a bound address is media: it is sent unchanged to every
  other bound member of the same call, never back to its sender and never to
  another call; within the sender's packet and byte rate (else dropped and counted);
  from an unknown address it is dropped and counted;
- a bound member nothing has come from for ``gone_after_s`` is reported once by
  :meth:`~GroupForwardTable.handle_timer` (the service marks it gone) and unbound.

The forwarder never decrypts: the media is SFrame under keys only the members hold.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pqcall.server.ratelimit import RateLimit, TokenBucket
from pqcall.transport.group_wire import encode_ack, parse_bind

GONE_AFTER_S = 5.0  # a joined member sends media every 20 ms and binds every second
MEMBER_PACKETS_PER_S = 200.0  # one member's sending; a voice stream needs 50
MEMBER_BYTES_PER_S = 64 * 1024.0
BURST_S = 1.0

Address = tuple[str | int, ...]


@dataclass(slots=True)
class _Binding:
    call_id: str
    token: bytes
    address: Address | None = None
    last_heard: float = 0.0
    packets: TokenBucket | None = None
    octets: TokenBucket | None = None


@dataclass(frozen=True, slots=True)
class ForwardStats:
    """Counters since the forwarder started."""

    members: int
    bound: int
    packets_in: int
    packets_forwarded: int
    bytes_forwarded: int
    dropped: dict[str, int] = field(default_factory=dict)


class GroupForwardTable:
    """Who is bound where, and where each datagram goes.

    Args:
        gone_after_s: silence after which a bound member is reported gone.
        packets_per_s: each member's sustained packet rate.
        bytes_per_s: each member's sustained byte rate.
    """

    def __init__(
        self,
        *,
        gone_after_s: float = GONE_AFTER_S,
        packets_per_s: float = MEMBER_PACKETS_PER_S,
        bytes_per_s: float = MEMBER_BYTES_PER_S,
    ) -> None:
        self.gone_after_s = gone_after_s
        self._packet_limit = RateLimit(packets_per_s, packets_per_s * BURST_S)
        self._byte_limit = RateLimit(bytes_per_s, max(bytes_per_s * BURST_S, 65_535.0))
        self._by_token: dict[bytes, _Binding] = {}
        self._by_address: dict[Address, _Binding] = {}
        self._groups: dict[str, set[bytes]] = {}  # call id -> tokens
        self._packets_in = 0
        self._forwarded = 0
        self._forwarded_bytes = 0
        self._dropped: Counter[str] = Counter()

    def add(self, call_id: str, token: bytes) -> None:
        """Let ``token``'s holder bind and forward within ``call_id`` (again: nothing)."""
        if token in self._by_token:
            return
        self._by_token[token] = _Binding(call_id, token)
        self._groups.setdefault(call_id, set()).add(token)

    def remove(self, token: bytes) -> None:
        """Forget a member (left, gone, call ended); its address is unbound at once."""
        binding = self._by_token.pop(token, None)
        if binding is None:
            return
        if binding.address is not None:
            self._by_address.pop(binding.address, None)
        tokens = self._groups.get(binding.call_id)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._groups[binding.call_id]

    def bound_addresses(self, call_id: str) -> list[Address]:
        """The bound addresses of a call's members."""
        tokens = self._groups.get(call_id, set())
        found = (self._by_token[token].address for token in tokens)
        return [address for address in found if address is not None]

    def receive_datagram(
        self, data: bytes, address: Address, now: float
    ) -> list[tuple[bytes, Address]]:
        """What to send for one received datagram: an ack, the fan-out, or nothing."""
        self._packets_in += 1
        token = parse_bind(data)
        if token is not None and token in self._by_token:
            return [self._bind(self._by_token[token], address, now)]
        binding = self._by_address.get(address)
        if binding is None:
            self._dropped["bad_bind" if token is not None else "unknown_address"] += 1
            return []
        binding.last_heard = now
        assert binding.packets is not None and binding.octets is not None
        binding.packets.refill(now)
        binding.octets.refill(now)
        if binding.packets.wait_s(1) > 0 or binding.octets.wait_s(len(data)) > 0:
            self._dropped["rate_limited"] += 1
            return []
        binding.packets.take(1)
        binding.octets.take(len(data))
        targets = [
            other for other in self.bound_addresses(binding.call_id) if other != binding.address
        ]
        self._forwarded += len(targets)
        self._forwarded_bytes += len(targets) * len(data)
        return [(data, target) for target in targets]

    def handle_timer(self, now: float) -> list[tuple[str, bytes]]:
        """Unbind members silent for ``gone_after_s``; returns their (call id, token)."""
        gone = [
            binding
            for binding in self._by_token.values()
            if binding.address is not None and now - binding.last_heard >= self.gone_after_s
        ]
        for binding in gone:
            assert binding.address is not None
            self._by_address.pop(binding.address, None)
            binding.address = None
        return [(binding.call_id, binding.token) for binding in gone]

    def stats(self) -> ForwardStats:
        """A snapshot of the counters."""
        return ForwardStats(
            members=len(self._by_token),
            bound=len(self._by_address),
            packets_in=self._packets_in,
            packets_forwarded=self._forwarded,
            bytes_forwarded=self._forwarded_bytes,
            dropped=dict(self._dropped),
        )

    def _bind(self, binding: _Binding, address: Address, now: float) -> tuple[bytes, Address]:
        if binding.address != address:
            if binding.address is not None:
                self._by_address.pop(binding.address, None)
            previous = self._by_address.get(address)
            if previous is not None and previous is not binding:
                previous.address = None  # one address, one member
            binding.address = address
            self._by_address[address] = binding
        if binding.packets is None:
            binding.packets = TokenBucket(self._packet_limit, now)
            binding.octets = TokenBucket(self._byte_limit, now)
        binding.last_heard = now
        others = len(self.bound_addresses(binding.call_id)) - 1
        return encode_ack(others), address
