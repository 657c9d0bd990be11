"""Media path selection on a real UDP socket: candidates, the check pump, the media socket.

Scope: the I/O around :class:`~pqcall.transport.pathcheck.PathSelection` (which holds
every rule; ``docs/protocol.md#media-path-selection``): open the call's UDP socket
before the handshake so its port can be offered, list this machine's candidate
addresses, resolve the peer's, and pump the socket through the selection with
``now=loop.time()`` until it chooses a path or fails. The media session then adopts
the same socket, so the path the checks opened (NAT bindings included) is the path
the media takes.

Example (one side; the other runs the same with its role)::

    sock = open_media_socket(media_port)           # before the handshake
    offer = local_candidates(sock.getsockname()[1], advertise)
    ...                                            # signaling: keys, the peer's candidates
    choice = await establish_path(sock, keys, PathRole.of(keys.role), their_candidates, relay)
    session = MediaSession(keys, source, sink, side_channel=PathResponder(keys, choice))
    await session.open(sock=sock)
    session.connect(choice.peer)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import secrets
import socket
from collections.abc import Sequence

import ifaddr

from pqcall.crypto.handshake import CallKeys
from pqcall.exceptions import CallError, LocalProtocolError, PathFailed
from pqcall.transport.candidates import MAX_CANDIDATES, Candidate, HostPort, priority_of
from pqcall.transport.path_choice import PathChoice
from pqcall.transport.path_messages import Address, PathRole
from pqcall.transport.path_responder import PathResponder
from pqcall.transport.pathcheck import (
    DIRECT_TIMEOUT_S,
    MAX_REMOTE_CANDIDATES,
    PATH_TIMEOUT_S,
    PathSelection,
)
from pqcall.transport.relay_wire import RelayTarget

__all__ = [
    "MAX_DATAGRAM_BYTES",
    "RESOLVE_TIMEOUT_S",
    "PathChoice",
    "PathResponder",
    "PathRole",
    "RelayTarget",
    "establish_path",
    "local_candidates",
    "open_media_socket",
    "parse_host_port",
    "resolve_candidates",
    "run_path_selection",
]

logger = logging.getLogger(__name__)

MAX_DATAGRAM_BYTES = 2048
"""Receive buffer per datagram: path messages are 40 bytes, media about 120."""
RESOLVE_TIMEOUT_S = 2.0
"""Longest wait for the DNS names among the candidates."""


def open_media_socket(port: int = 0, *, host: str = "0.0.0.0") -> socket.socket:
    """Open the call's UDP socket (IPv4, non-blocking), bound to ``(host, port)``.

    Args:
        port: the media port (``--media-port``); 0 lets the system choose.
        host: the address to bind; every interface by default.

    Raises:
        CallError: the port is in use, or cannot be bound.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CallError(f"media port {port} is in use") from None
        raise CallError(f"cannot open media port {port} on {host}: {exc.strerror}") from None
    return sock


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``--advertise``); HOST is an IPv4 address or a DNS name.

    Raises:
        LocalProtocolError: not ``HOST:PORT``, or a port outside 1-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 1 << 16:
        raise LocalProtocolError(f"expected HOST:PORT with a port from 1 to 65535, got {text!r}")
    return (host, int(port))


def local_candidates(port: int, advertise: tuple[str, int] | None = None) -> list[Candidate]:
    """The candidates this phone offers for the direct path.

    With ``advertise`` (``--advertise HOST:PORT``: port forwarding, or a relay in
    front of the phone), only that address. Otherwise every IPv4 address of this
    machine with ``port``: others first, loopback last (so two phones on one machine
    reach each other), no link-local ones, at most ``MAX_CANDIDATES``.
    :func:`pqcall.transport.gather.gather_candidates` adds priorities and the
    server-reflexive candidate (STUN); the signaling server adds its own guess.

    Raises:
        LocalProtocolError: a port outside 1-65535, or an advertised host that is no
            IP address or DNS name.
    """
    if advertise is not None:
        try:
            return [Candidate(host=advertise[0], port=advertise[1])]
        except LocalProtocolError:
            raise LocalProtocolError(
                f"cannot advertise {advertise[0]}:{advertise[1]}: not a host and port"
            ) from None
    if not 0 < port < 1 << 16:
        raise LocalProtocolError(f"media port must be from 1 to 65535, got {port}")
    others: list[str] = []
    loopback: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue  # IPv6: the media socket is IPv4
            address = ipaddress.IPv4Address(ip.ip)
            if address.is_link_local or address.is_unspecified:
                continue
            (loopback if address.is_loopback else others).append(str(address))
    hosts = list(dict.fromkeys(others + loopback))[:MAX_CANDIDATES]
    return [Candidate(host=host, port=port) for host in hosts]


async def resolve_candidates(
    candidates: Sequence[HostPort | tuple[str, int]],
) -> list[Address]:
    """The peer's candidates as numeric IPv4 addresses, in order, without duplicates.

    DNS names are resolved (IPv4; at most ``RESOLVE_TIMEOUT_S``); candidates that do
    not resolve, and IPv6 ones, are skipped (logged). At most
    ``MAX_REMOTE_CANDIDATES`` are kept.
    """
    loop = asyncio.get_running_loop()

    async def resolve(host: str, port: int) -> Address | None:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            if isinstance(address, ipaddress.IPv6Address):
                mapped = address.ipv4_mapped
                if mapped is None:
                    logger.debug("path: skipping IPv6 candidate %s", host)
                    return None
                return (str(mapped), port)
            return (str(address), port)
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM),
                RESOLVE_TIMEOUT_S,
            )
        except (OSError, UnicodeError, TimeoutError) as exc:
            logger.info("path: candidate %s does not resolve (%s), skipped", host, exc)
            return None
        for *_, sockaddr in infos:
            return (str(sockaddr[0]), int(sockaddr[1]))
        return None

    pairs = [c if isinstance(c, tuple) else (c.host, c.port) for c in candidates]
    resolved = await asyncio.gather(*(resolve(host, int(port)) for host, port in pairs))
    addresses = [a for a in resolved if a is not None and 0 < a[1] < 1 << 16]
    return list(dict.fromkeys(addresses))[:MAX_REMOTE_CANDIDATES]


async def _resolve_relay(relay: RelayTarget) -> RelayTarget | None:
    resolved = await resolve_candidates([relay.address])
    if not resolved:
        logger.warning("path: relay %s:%d does not resolve; not using it", *relay.address)
        return None
    return RelayTarget(resolved[0], relay.token, relay.sequence)


async def establish_path(
    sock: socket.socket,
    keys: CallKeys,
    role: PathRole,
    remote: Sequence[HostPort | tuple[str, int]],
    relay: RelayTarget | None,
    *,
    direct_timeout_s: float = DIRECT_TIMEOUT_S,
    timeout_s: float = PATH_TIMEOUT_S,
) -> PathChoice:
    """Choose the call's media path on ``sock`` (``docs/protocol.md#media-path-selection``).

    Both parties run this at once, each with its role, after the handshake. Pass
    the result to :class:`PathResponder` as the media session's side channel, so the
    peer's late checks and nominations are still answered once media runs.

    Args:
        sock: the call's UDP socket (:func:`open_media_socket`); left open.
        keys: the call's keys (the checks are authenticated with a key exported from them).
        role: CONTROLLING for the caller, CONTROLLED for the callee.
        remote: the peer's candidates (DNS names are resolved, IPv6 ones skipped); checked
            by priority, highest first.
        relay: the relay grant, if any (a DNS name in its address is resolved).
        direct_timeout_s: the caller turns to the relay when no direct path answered by then.
        timeout_s: give up after this long.

    Returns:
        The chosen path: send media to ``choice.peer``.

    Raises:
        PathFailed: neither a direct path nor the relay worked within ``timeout_s``.
        LocalProtocolError: a role that does not match the keys.
    """
    if relay is not None and relay.turn is not None:  # UDP blocked? then through TURN
        from pqcall.transport.turn_path import through_turn  # (it imports this module)

        kwargs = {"direct_timeout_s": direct_timeout_s, "timeout_s": timeout_s}
        turned = await through_turn(sock, keys, role, remote, relay, **kwargs)
        if turned is not None:
            return turned
    # checked in priority order (RFC 8445 section 6.1.2.6); the server's guesses, with
    # no priority, last; a stable sort keeps the offer's order among equals
    addresses = await resolve_candidates(sorted(remote, key=lambda c: -priority_of(c)))
    target = None if relay is None else await _resolve_relay(relay)
    selection = PathSelection(
        keys,
        role,
        addresses,
        target,
        token_source=secrets.token_bytes,
        direct_timeout_s=direct_timeout_s,
        timeout_s=timeout_s,
    )
    return await run_path_selection(sock, selection)


async def run_path_selection(sock: socket.socket, selection: PathSelection) -> PathChoice:
    """Pump ``sock`` through ``selection`` (not started yet) until it chooses or fails.

    Raises:
        PathFailed: the selection failed (its reason is the message).
    """
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    selection.start(loop.time())
    receiving: asyncio.Task[tuple[bytes, tuple[str, int]]] | None = None
    try:
        while True:
            _transmit(sock, selection, loop.time())
            if selection.choice is not None:
                # no receive is pending here (it was handled above), so no datagram is lost
                choice = selection.choice
                logger.info(
                    "path: %s via %s:%d after %.0f ms",
                    choice.kind,
                    *choice.peer,
                    choice.elapsed_ms,
                )
                return choice
            if selection.failure is not None:
                raise PathFailed(selection.failure)
            if receiving is None:
                receiving = asyncio.ensure_future(loop.sock_recvfrom(sock, MAX_DATAGRAM_BYTES))
            when = selection.get_timer()
            timeout = None if when is None else max(0.0, when - loop.time())
            # asyncio.wait, unlike wait_for, leaves the receive running on a timeout
            done, _ = await asyncio.wait({receiving}, timeout=timeout)
            if receiving in done:
                finished, receiving = receiving, None
                try:
                    data, addr = finished.result()
                except OSError as exc:  # e.g. an ICMP error reported on some systems
                    logger.debug("path: receive failed: %s", exc)
                else:
                    selection.receive_datagram(data, (str(addr[0]), int(addr[1])), loop.time())
            if when is not None and loop.time() >= when:
                # call_at-like timers may wake a little early; never pass a `now` before `when`
                selection.handle_timer(max(when, loop.time()))
    finally:
        if receiving is not None:
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await receiving


def _transmit(sock: socket.socket, selection: PathSelection, now: float) -> None:
    # a plain sendto: it never blocks on a non-blocking UDP socket, and a full buffer
    # or an unreachable network only loses this copy (the next one is scheduled)
    for data, addr in selection.datagrams_to_send(now):
        try:
            sock.sendto(data, addr)
        except OSError as exc:
            logger.debug("path: send to %s:%d failed: %s", *addr, exc)
