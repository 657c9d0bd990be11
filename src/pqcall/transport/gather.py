"""Candidate gathering on the media socket: host and server-reflexive candidates, NAT openers.

Scope: what a phone offers for the direct path (``docs/protocol.md#candidates``), as
ICE does (RFC 8445 section 5.1): its host candidates (every IPv4 address of this
machine with the media port) and its server-reflexive candidate, the address its
NAT maps the media socket to, learned with a STUN Binding request (RFC 5389) sent
*from the media socket* to the pqcall server's UDP port or any STUN server
(``--stun HOST:PORT``). Each has an RFC 8445 priority; the offer is sorted by it.
STUN messages are aioice's (:mod:`aioice.stun`), not written here. The relay
candidate is the server's relay grant, which path selection falls back to
(:mod:`pqcall.transport.pathcheck`).

It also sends the *NAT openers*: before a phone's candidates can reach the peer
(the callee before it accepts, the caller before it confirms), it sends one small
datagram from the media socket to each of the peer's candidates with an IP TTL of
:data:`OPENER_TTL`. The datagram passes the phone's own NAT, which so maps the
media socket towards the peer (as it will when checks flow), and dies at the next
router, so it never reaches the peer's NAT. Why: a NAT that *accepts* unsolicited
input to itself (no firewall) keeps a connection-tracking entry for the peer's
first check if that check arrives before the phone ever sent to the peer; Linux
masquerade then maps the phone's own checks to another port (the tuple is taken)
and both sides' checks miss (seen in namespaces; RFC 5128 section 3.5 describes
low-TTL packets for the same reason). The opener opens the mapping first.

Example (one side)::

    sock = open_media_socket(media_port)
    offer = await gather_candidates(sock, stun_server=("pqcall.example", 5001))
    ...                                  # signaling: send offer, get the peer's
    await send_openers(sock, their_candidates)   # before the peer can check
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from aioice import stun

from pqcall.transport.candidates import (
    MAX_CANDIDATES,
    Candidate,
    HostPort,
    candidate_priority,
)
from pqcall.transport.connect import local_candidates, resolve_candidates
from pqcall.transport.path_messages import Address

__all__ = [
    "GATHER_TIMEOUT_S",
    "OPENER",
    "OPENER_TTL",
    "STUN_RETRANSMIT_S",
    "gather_candidates",
    "send_openers",
    "stun_binding",
    "stun_server_of",
]

logger = logging.getLogger(__name__)

GATHER_TIMEOUT_S: Final = 0.5
"""Longest wait for the STUN answer; without one the offer has no server-reflexive
candidate (the server's guess and the relay remain)."""
STUN_RETRANSMIT_S: Final = (0.0, 0.1, 0.25)
"""When the Binding request is sent, after the start (RFC 5389's 500 ms RTO is for
the open internet; a lost request here delays a call's setup)."""
OPENER_TTL: Final = 2
"""IP TTL of a NAT opener: through this phone's own NAT, not to the next router's."""
OPENER: Final = b"PQOP"
"""A NAT opener's payload: neither a path message nor media. Path selection drops it
(``not_path_message``); a media session drops and counts it apart, with late STUN
answers (:mod:`pqcall.transport.stray`), not as rejected."""
MAX_STUN_ANSWER_BYTES: Final = 1500
_IP_RECVERR: Final = getattr(socket, "IP_RECVERR", 11)  # Linux's value


def stun_server_of(server_url: str) -> tuple[str, int] | None:
    """The pqcall server's STUN address: its host and its HTTP port's number over UDP.

    The relay (which answers STUN) listens on the same number unless the server
    runs with ``--relay-port``; phones of such a server need ``--stun``, or do
    without a server-reflexive candidate (after :data:`GATHER_TIMEOUT_S`).
    None: the URL names no host.
    """
    parts = urlsplit(server_url)
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname, port or (443 if parts.scheme == "https" else 80))


async def stun_binding(
    sock: socket.socket, server: tuple[str, int], *, timeout_s: float = GATHER_TIMEOUT_S
) -> Address | None:
    """Our address as ``server`` sees it (XOR-MAPPED-ADDRESS), asked from ``sock``.

    Sends a Binding request with FINGERPRINT at :data:`STUN_RETRANSMIT_S`; takes
    the first success response from the server's address with the request's
    transaction ID. Other datagrams that arrive meanwhile are dropped (nothing
    else is expected on the socket before candidates are exchanged).

    Returns:
        ``(ip, port)``, or None: the server does not resolve or did not answer in time.
    """
    resolved = await resolve_candidates([server])
    if not resolved:
        logger.info("stun: %s:%d does not resolve", *server)
        return None
    target = resolved[0]
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.add_fingerprint()
    data = bytes(request)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def sender() -> None:
        for at in STUN_RETRANSMIT_S:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            with contextlib.suppress(OSError):
                sock.sendto(data, target)

    async def receiver() -> Address:
        while True:
            answer, addr = await loop.sock_recvfrom(sock, MAX_STUN_ANSWER_BYTES)
            if (str(addr[0]), int(addr[1])) != target:
                continue
            try:
                message = stun.parse_message(answer)
            except ValueError:
                continue
            if (
                message.transaction_id != request.transaction_id
                or message.message_class is not stun.Class.RESPONSE
            ):
                continue
            mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get(
                "MAPPED-ADDRESS"
            )
            if mapped is not None:
                return (str(mapped[0]), int(mapped[1]))

    # while asking, an ICMP "port unreachable" (no STUN server there, e.g. a relay on
    # another port) ends the wait at once instead of after timeout_s
    reporting = _report_errors(sock, True)
    sending = asyncio.ensure_future(sender())
    try:
        return await asyncio.wait_for(receiver(), timeout_s)
    except (TimeoutError, OSError) as exc:
        logger.info("stun: no answer from %s:%d (%s)", *target, type(exc).__name__)
        return None
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        if reporting:
            _report_errors(sock, False)


def _report_errors(sock: socket.socket, on: bool) -> bool:
    """Turn ICMP error reports on the unconnected ``sock`` on or off (IP_RECVERR, Linux).

    Turning them off drops the errors reported meanwhile, so media never sees them.
    Returns whether the option could be set.
    """
    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1 if on else 0)
    except OSError:
        return False
    if not on:
        for _ in range(64):  # the queued errors: one per ICMP message, few
            try:
                sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
            except OSError:  # BlockingIOError: none left
                break
    return True


async def gather_candidates(
    sock: socket.socket,
    *,
    stun_server: tuple[str, int] | None,
    advertise: tuple[str, int] | None = None,
    timeout_s: float = GATHER_TIMEOUT_S,
) -> list[Candidate]:
    """The candidates to offer for ``sock``, highest priority first.

    With ``advertise`` only that address (as :func:`local_candidates`). Otherwise the
    host candidates (local preference falling in their order) and, when
    ``stun_server`` answers with an address that is not one of them, the
    server-reflexive one; at most ``MAX_CANDIDATES``.
    """
    port = sock.getsockname()[1]
    hosts = local_candidates(port, advertise)
    if advertise is not None:
        return [Candidate(c.host, c.port, "host", candidate_priority("host")) for c in hosts]
    offer = [
        Candidate(c.host, c.port, "host", candidate_priority("host", 65535 - index))
        for index, c in enumerate(hosts)
    ]
    mapped = (
        None if stun_server is None else await stun_binding(sock, stun_server, timeout_s=timeout_s)
    )
    if mapped is not None and all((c.host, c.port) != mapped for c in offer):
        reflexive = Candidate(mapped[0], mapped[1], "srflx", candidate_priority("srflx"))
        # keep it even when the host candidates fill the offer: it is the one that crosses NATs
        offer = [*offer[: MAX_CANDIDATES - 1], reflexive]
    logger.debug("candidates: %s", ", ".join(f"{c.kind} {c.host}:{c.port}" for c in offer))
    return sorted(offer, key=lambda c: -c.priority)


async def send_openers(
    sock: socket.socket, remote: Sequence[HostPort | tuple[str, int]], *, ttl: int = OPENER_TTL
) -> int:
    """Send a NAT opener (low TTL) from ``sock`` to each of the peer's candidates.

    Returns:
        How many were sent (0 when the socket's TTL cannot be set: then none is sent,
        since a full-TTL opener would do the harm it is meant to avoid).
    """
    addresses = await resolve_candidates(remote)
    try:
        previous = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    except OSError as exc:
        logger.debug("openers: cannot set the TTL: %s", exc)
        return 0
    sent = 0
    try:
        for address in addresses:
            try:
                sock.sendto(OPENER, address)
            except OSError as exc:
                logger.debug("openers: send to %s:%d failed: %s", *address, exc)
            else:
                sent += 1
    finally:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, previous)
    return sent
