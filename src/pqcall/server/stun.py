"""The server's STUN responder: answers Binding requests (RFC 5389) on the relay's UDP port.

Scope: a phone learns its server-reflexive address (what its NAT maps its media
socket to) by sending a STUN Binding request from that socket to the server's UDP
port; ``docs/protocol.md#candidates`` says how the phone uses the answer. Any
standard STUN client works too (``--stun HOST:PORT`` on a phone may name any public
STUN server; this makes the pqcall server one). The message format is aioice's
(:mod:`aioice.stun`), not written here. Sans-I/O: :meth:`StunResponder.answer` takes
the datagram, its source and ``now`` and returns the answer's bytes or None;
:mod:`pqcall.server.relay` sends it from the same socket.

What is answered: a Binding *request* (class 0x000, method 0x001) with the RFC 5389
magic cookie, a length that matches the datagram, and a FINGERPRINT that verifies
if present. The answer is a Binding success response with the same transaction ID
and XOR-MAPPED-ADDRESS (the source address and port, as seen here), plus a
FINGERPRINT when the request had one. No MESSAGE-INTEGRITY: the service is
unauthenticated, as public STUN servers are; what the phone does with the address
is authenticated later by the MAC'd connectivity checks.

Abuse limits (an unauthenticated UDP service can be aimed at a victim by spoofing
the source address):

- **No amplification**: an answer is never more than :data:`MAX_GROWTH_BYTES` (12)
  bytes longer than its request, and never more than one datagram per request.
  An IPv4 answer is the request's header (20) + XOR-MAPPED-ADDRESS (12) [+
  FINGERPRINT (8), only if the request carried one, so it was at least 28 bytes]:
  exactly 12 bytes more than the shortest request that gets it. Requests that would
  be answered with more (an IPv6 source with a header-only request) are dropped.
- **Rate limits**: per source (IPv4 address, IPv6 /64) :data:`PER_SOURCE_LIMIT`, and
  for the whole server :data:`TOTAL_LIMIT`, so a flood spread over spoofed sources
  reflects at most that many small datagrams per second.
- Unknown comprehension-required attributes are not rejected with 420 (an error
  answer would be traffic for nothing): the request is answered or dropped silently.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from dataclasses import dataclass, field
from typing import Final

from aioice import stun

from pqcall.server.ratelimit import RateLimit, RateLimiter, TokenBucket, client_key

__all__ = [
    "MAX_GROWTH_BYTES",
    "PER_SOURCE_LIMIT",
    "TOTAL_LIMIT",
    "StunResponder",
    "StunStats",
    "is_stun_request",
]

logger = logging.getLogger(__name__)

MAX_GROWTH_BYTES: Final = 12
"""An answer is at most this much longer than its request (an IPv4 XOR-MAPPED-ADDRESS)."""
PER_SOURCE_LIMIT: Final = RateLimit(rate_per_s=10.0, burst=20.0)
"""Requests answered per source: a phone sends a few per call (and retransmits)."""
TOTAL_LIMIT: Final = RateLimit(rate_per_s=2000.0, burst=2000.0)
"""Requests answered per second by the whole server."""
MAX_SOURCES: Final = 4096
"""Sources whose rate is remembered at once (the least recent are forgotten)."""
MAX_REQUEST_BYTES: Final = 548
"""Longer datagrams are not taken as Binding requests (RFC 5389 section 7.1 sizes)."""

_BINDING_REQUEST: Final = stun.Method.BINDING | stun.Class.REQUEST  # 0x0001
_FINGERPRINT_TYPE: Final = 0x8028


def is_stun_request(data: bytes) -> bool:
    """Whether ``data`` looks like a STUN Binding request (header checks only, cheap).

    The relay asks this first: a relay bind starts with ``PQRB`` and relayed media is
    an SFrame packet, neither of which has the magic cookie at bytes 4-8 and a
    matching length (a chance of 2^-48 for a random packet; it would then only be
    answered or dropped, never forwarded).
    """
    if not stun.HEADER_LENGTH <= len(data) <= MAX_REQUEST_BYTES or len(data) % 4:
        return False
    kind, length, cookie = struct.unpack_from("!HHI", data)
    return bool(kind == _BINDING_REQUEST) and cookie == stun.COOKIE and length == len(data) - 20


@dataclass(slots=True)
class StunStats:
    """What the responder did, since it started."""

    answered: int = 0
    """Binding requests answered."""
    dropped: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("malformed", "rate_limited", "too_large"), 0)
    )
    """Requests not answered, by reason: ``malformed`` (not a valid Binding request),
    ``rate_limited`` (the source's or the server's limit), ``too_large`` (the answer
    would grow by more than :data:`MAX_GROWTH_BYTES`)."""


class StunResponder:
    """Answers STUN Binding requests under the abuse limits in the module docstring.

    Args:
        per_source: each source's rate limit.
        total: the whole responder's rate limit.
    """

    def __init__(
        self, *, per_source: RateLimit = PER_SOURCE_LIMIT, total: RateLimit = TOTAL_LIMIT
    ) -> None:
        self._per_source = RateLimiter(per_source, max_keys=MAX_SOURCES)  # by client_key
        self._total_limit = total  # the global bucket's limit
        self._total: TokenBucket | None = None  # made at the first request (needs `now`)
        self.stats = StunStats()  # counters

    def answer(self, data: bytes, addr: tuple[str | int, ...], now: float) -> bytes | None:
        """The answer to the datagram ``data`` from ``addr``, or None to send nothing.

        Call only for datagrams :func:`is_stun_request` accepts. Never raises on the
        datagram's content.
        """
        host, port = str(addr[0]), int(addr[1])
        try:
            request = stun.parse_message(data)
        except (ValueError, struct.error) as exc:  # bad fingerprint, method, attribute
            logger.debug("stun: malformed request: %s", exc)
            self.stats.dropped["malformed"] += 1
            return None
        if request.message_class is not stun.Class.REQUEST or (
            request.message_method is not stun.Method.BINDING
        ):
            self.stats.dropped["malformed"] += 1
            return None
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            self.stats.dropped["malformed"] += 1
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket: answer with the IPv4 address
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
            attributes={"XOR-MAPPED-ADDRESS": (str(ip), port)},
        )
        if "FINGERPRINT" in request.attributes:
            response.add_fingerprint()
        encoded = bytes(response)
        if len(encoded) > len(data) + MAX_GROWTH_BYTES:
            self.stats.dropped["too_large"] += 1
            return None
        if not self._allowed(client_key(str(ip)), now):
            self.stats.dropped["rate_limited"] += 1
            return None
        self.stats.answered += 1
        return encoded

    def _allowed(self, key: str, now: float) -> bool:
        if self._total is None:
            self._total = TokenBucket(self._total_limit, now)
        self._total.refill(now)
        if self._total.wait_s(1.0) > 0:
            return False
        if not self._per_source.check(key, now).allowed:
            return False
        self._total.take(1.0)
        return True
