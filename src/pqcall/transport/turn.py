"""A phone's TURN relay (RFC 8656) through a standard TURN server such as coturn.

Scope: for networks where the phone cannot use UDP to the world (or both NATs are
symmetric), the signaling server may hand out, with a call's relay grant,
time-limited credentials for a TURN server (``RelayGrant.turn``; made by
:mod:`pqcall.server.turn`). The phone allocates a relayed UDP address on that
server over UDP, TCP or TLS (``turn:`` / ``turns:`` URLs, RFC 7065) and sends and
receives datagrams to and from peers through it. The TURN messages themselves
(Allocate, Refresh, CreatePermission, ChannelBind, ChannelData) are aioice's
(:func:`aioice.turn.create_turn_endpoint`); nothing here encodes TURN. What travels
through it is what the phone would send on its UDP socket: path checks and SFrame
media, end to end; the TURN server sees ciphertext and addresses.

Use::

    url = TurnUrl.parse("turn:turn.example.org:3478?transport=tcp")
    relay = await TurnRelay.allocate(url, username, password)
    relay.relayed_address            # offer it to the peer as a relay candidate
    relay.sendto(data, peer)         # through the TURN server (permission made as needed)
    relay.receiver = some_datagram_protocol   # gets datagram_received(data, peer)
    await relay.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Self
from urllib.parse import parse_qs

from aioice.turn import (
    DEFAULT_ALLOCATION_LIFETIME,
    DEFAULT_CHANNEL_REFRESH_TIME,
    TurnClientTcpProtocol,
    TurnTransport,
    create_turn_endpoint,
)

from pqcall.exceptions import LocalProtocolError, PathFailed
from pqcall.transport.path_choice import PathChoice, TurnRoute
from pqcall.transport.pathcheck import PathSelection

__all__ = [
    "DEFAULT_TURNS_PORT",
    "DEFAULT_TURN_PORT",
    "TurnRelay",
    "TurnTransportName",
    "TurnUrl",
    "run_path_selection_over_turn",
]

logger = logging.getLogger(__name__)

DEFAULT_TURN_PORT: Final = 3478
"""RFC 8656: ``turn:`` over UDP or TCP."""
DEFAULT_TURNS_PORT: Final = 5349
"""RFC 8656: ``turns:`` (TLS over TCP)."""
ALLOCATE_TIMEOUT_S: Final = 5.0
"""Longest wait for an allocation (aioice retransmits within it)."""
MAX_URL_LENGTH: Final = 256

TurnTransportName = Literal["udp", "tcp", "tls"]
"""How the phone reaches the TURN server (the relayed address is always UDP)."""


@dataclass(frozen=True, slots=True)
class TurnUrl:
    """A TURN server, as in RFC 7065: ``turn:host[:port][?transport=udp|tcp]`` or
    ``turns:host[:port][?transport=tcp]`` (TLS)."""

    host: str
    port: int
    transport: TurnTransportName

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse a ``turn:`` or ``turns:`` URL.

        Raises:
            LocalProtocolError: not such a URL (one line saying what is wrong).
        """
        if len(text) > MAX_URL_LENGTH:
            raise LocalProtocolError(f"TURN URL longer than {MAX_URL_LENGTH} characters")
        scheme, sep, rest = text.partition(":")
        if not sep or scheme not in ("turn", "turns"):
            raise LocalProtocolError(f"TURN URL {text!r} must start with turn: or turns:")
        address, _, query = rest.partition("?")
        params = parse_qs(query, strict_parsing=False) if query else {}
        if set(params) - {"transport"}:
            raise LocalProtocolError(f"TURN URL {text!r}: only ?transport= is understood")
        names = params.get("transport", ["udp" if scheme == "turn" else "tcp"])
        if len(names) != 1 or names[0] not in ("udp", "tcp"):
            raise LocalProtocolError(f"TURN URL {text!r}: transport must be udp or tcp")
        name: TurnTransportName = "udp" if names[0] == "udp" else "tcp"
        if scheme == "turns":
            if name == "udp":
                raise LocalProtocolError(f"TURN URL {text!r}: turns: runs over tcp only")
            name = "tls"
        host, port = _host_port(
            address, DEFAULT_TURNS_PORT if scheme == "turns" else DEFAULT_TURN_PORT
        )
        if not host:
            raise LocalProtocolError(f"TURN URL {text!r} has no host")
        return cls(host, port, name)

    def __str__(self) -> str:
        scheme = "turns" if self.transport == "tls" else "turn"
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "" if self.transport == "tls" else f"?transport={self.transport}"
        return f"{scheme}:{host}:{self.port}{suffix}"


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    if address.startswith("["):  # an IPv6 literal
        host, _, tail = address[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    else:
        host, port_text = address, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise LocalProtocolError(f"TURN URL port {port_text!r} is out of range")
    return host, int(port_text)


async def _endpoint_on(
    sock: socket.socket,
    url: TurnUrl,
    username: str,
    password: str,
    tls: ssl.SSLContext | None,
    demux: _Demux,
) -> tuple[TurnTransport, _Demux]:
    """aioice's ``create_turn_endpoint`` for TCP, over a socket already connected."""
    loop = asyncio.get_running_loop()
    inner_transport, inner_protocol = await loop.create_connection(
        lambda: TurnClientTcpProtocol(
            (url.host, url.port),
            username=username,
            password=password,
            lifetime=DEFAULT_ALLOCATION_LIFETIME,
            channel_refresh_time=DEFAULT_CHANNEL_REFRESH_TIME,
        ),
        sock=sock,
        ssl=tls,
        server_hostname=url.host if tls is not None else None,
    )
    try:
        turn = TurnTransport(inner_protocol)
        await turn._connect(demux)  # what create_turn_endpoint does after connecting
    except BaseException:
        inner_transport.close()
        raise
    return turn, demux


class _Demux(asyncio.DatagramProtocol):
    """Hands the relay's datagrams to whichever receiver is current (selection, then media)."""

    def __init__(self) -> None:
        self.receiver: asyncio.DatagramProtocol | None = None
        self.backlog: list[tuple[bytes, tuple[str, int]]] = []  # before any receiver (bounded)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.receiver is not None:
            self.receiver.datagram_received(data, addr)
        elif len(self.backlog) < 64:
            self.backlog.append((data, addr))

    def error_received(self, exc: Exception) -> None:
        logger.debug("turn: %s", exc)
        if self.receiver is not None:
            self.receiver.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.receiver is not None:
            self.receiver.connection_lost(exc)


class _Transport(asyncio.DatagramTransport):
    """aioice's TURN transport with the rest of a datagram transport (``is_closing``)."""

    def __init__(self, turn: TurnTransport) -> None:
        super().__init__()
        self._turn = turn  # aioice's
        self._closing = False  # close() was called

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if not self._closing:
            self._turn.sendto(bytes(data), addr)

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._turn.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._turn.get_extra_info(name, default)


class TurnRelay:
    """An allocation on a TURN server: a relayed UDP address that sends and receives for us.

    Made by :meth:`allocate`. Set :attr:`receiver` to the protocol that should get
    ``datagram_received(data, peer)``; datagrams that arrive before are kept (64 at most)
    and handed to the first receiver. aioice refreshes the allocation, creates a
    permission for each new peer and binds channels.
    """

    def __init__(self, url: TurnUrl, transport: TurnTransport, demux: _Demux) -> None:
        self.url = url
        """The server it is allocated on."""
        self._turn = transport  # aioice's
        self._transport = _Transport(transport)  # what selection and media send on
        self._demux = demux  # our receiver switch

    @classmethod
    async def allocate(
        cls,
        url: TurnUrl,
        username: str,
        password: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = ALLOCATE_TIMEOUT_S,
        sock: socket.socket | None = None,
    ) -> Self:
        """Allocate a relayed address on ``url``'s server with these credentials.

        Args:
            ssl_context: for ``turns:``, the TLS context (default: the system's CAs).
            sock: for tcp and tls, a TCP socket connected to the server to use (one
                made in another network namespace, in tests); default: connect.

        Raises:
            OSError: the server cannot be reached.
            TimeoutError: no allocation within ``timeout_s``.
            aioice.stun.TransactionFailed: the server refused (e.g. 401 for expired
                or wrong credentials).
        """
        demux = _Demux()
        tls: ssl.SSLContext | None = None
        if url.transport == "tls":
            tls = ssl_context if ssl_context is not None else ssl.create_default_context()
        if sock is not None:
            if url.transport == "udp":
                raise LocalProtocolError("a socket of our own is for TURN over tcp or tls")
            made = _endpoint_on(sock, url, username, password, tls, demux)
        else:
            made = create_turn_endpoint(
                lambda: demux,
                (url.host, url.port),
                username,
                password,
                ssl=tls,
                transport="udp" if url.transport == "udp" else "tcp",
            )
        transport, _ = await asyncio.wait_for(made, timeout_s)
        logger.info("turn: allocated on %s", url)
        return cls(url, transport, demux)

    @property
    def relayed_address(self) -> tuple[str, int]:
        """The relayed UDP address on the server: what the peer sends to."""
        host, port = self._turn.get_extra_info("sockname")
        return (str(host), int(port))

    @property
    def route(self) -> TurnRoute:
        """The server, how it is reached and the relayed address: what a path through
        this allocation shows (``PathChoice.turn``)."""
        return TurnRoute(self.url.transport, (self.url.host, self.url.port), self.relayed_address)

    @property
    def mapped_address(self) -> tuple[str, int] | None:
        """Our address as the TURN server saw it (server-reflexive), if it said."""
        mapped = self._turn.get_extra_info("related_address")
        return None if mapped is None else (str(mapped[0]), int(mapped[1]))

    @property
    def transport(self) -> asyncio.DatagramTransport:
        """A datagram transport over the allocation (``sendto(data, peer)``, ``close()``)."""
        return self._transport

    async def endpoint(
        self, protocol_factory: Callable[[], asyncio.DatagramProtocol]
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        """Hand the allocation to a new protocol, as ``create_datagram_endpoint`` would
        (``MediaSession.open(endpoint=relay.endpoint)``): it receives from now on."""
        protocol = protocol_factory()
        protocol.connection_made(self._transport)
        self.receiver = protocol
        return self._transport, protocol

    @property
    def receiver(self) -> asyncio.DatagramProtocol | None:
        """Who gets the datagrams peers send to the relayed address."""
        return self._demux.receiver

    @receiver.setter
    def receiver(self, protocol: asyncio.DatagramProtocol | None) -> None:
        self._demux.receiver = protocol
        backlog, self._demux.backlog = self._demux.backlog, []
        if protocol is not None:
            for data, addr in backlog:
                protocol.datagram_received(data, addr)

    def sendto(self, data: bytes, peer: tuple[str, int]) -> None:
        """Send ``data`` to ``peer`` through the TURN server (never blocks)."""
        self._transport.sendto(data, peer)

    async def close(self) -> None:
        """Delete the allocation (best effort) and close the connection to the server."""
        self._transport.close()
        await asyncio.sleep(0)


async def run_path_selection_over_turn(relay: TurnRelay, selection: PathSelection) -> PathChoice:
    """Pump ``relay`` through ``selection`` (not started yet) until it chooses or fails,
    as :func:`pqcall.transport.connect.run_path_selection` pumps a UDP socket.

    Raises:
        PathFailed: the selection failed (its reason is the message).
    """
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue(maxsize=256)

    class _Pump(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                arrived.put_nowait((data, (str(addr[0]), int(addr[1]))))

    relay.receiver = _Pump()
    selection.start(loop.time())
    try:
        while True:
            for data, addr in selection.datagrams_to_send(loop.time()):
                relay.sendto(data, addr)
            if selection.choice is not None:
                logger.info(
                    "path: %s via %s:%d over TURN", selection.choice.kind, *selection.choice.peer
                )
                return selection.choice
            if selection.failure is not None:
                raise PathFailed(selection.failure)
            when = selection.get_timer()
            timeout = None if when is None else max(0.0, when - loop.time())
            try:
                data, addr = await asyncio.wait_for(arrived.get(), timeout)
            except TimeoutError:
                pass
            else:
                selection.receive_datagram(data, addr, loop.time())
            if when is not None and loop.time() >= when:
                selection.handle_timer(max(when, loop.time()))
    finally:
        relay.receiver = None
