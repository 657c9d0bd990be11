"""The media session's socket side: its asyncio datagram protocol and the types at its edge.

Scope: what :class:`~pqcall.transport.session.MediaSession` needs from asyncio's UDP
endpoint: :class:`MediaDatagrams` hands each datagram (IPv6 addresses cut to host and
port) and the socket's loss to two callbacks and swallows ICMP errors (a peer that
went away must not stop the call); :class:`SideChannel` is the shape of another
protocol sharing the socket (the path checks), :class:`EndReason` why a session
ended. :mod:`pqcall.transport.session` re-exports the public names.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["Address", "EndReason", "MediaDatagrams", "SideChannel"]

logger = logging.getLogger("pqcall.transport.session")

Address = tuple[str, int]


class EndReason(enum.StrEnum):
    """Why a session ended (what ``MediaSession.wait_ended`` returns)."""

    LOCAL_HANGUP = "local hangup"
    PEER_HANGUP = "peer hangup"
    PEER_UNREACHABLE = "peer unreachable"
    """Nothing authenticated from the peer for ``media_timeout_s`` (was "timeout")."""
    CLOSED = "closed"
    """``MediaSession.close`` without a hang-up."""
    SOCKET_ERROR = "socket error"
    """The socket closed under us."""


class SideChannel(Protocol):
    """Another protocol on the media socket (path checks); sees every datagram first."""

    def __call__(
        self, data: bytes, addr: Address, now: float
    ) -> Sequence[tuple[bytes, Address]] | None:
        """Take ``data`` from ``addr`` if it is this protocol's.

        Returns:
            None: not taken, the session handles it as media; else the datagrams to
            send in answer, each with its destination (maybe none).
        """
        ...


class MediaDatagrams(asyncio.DatagramProtocol):
    """Hands the socket's datagrams to ``received``, its loss to ``lost``."""

    def __init__(
        self, received: Callable[[bytes, Address], None], lost: Callable[[], None]
    ) -> None:
        self._received = received
        self._lost = lost
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done when the socket has closed."""

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(addr) != 2:  # IPv6: (host, port, flow info, scope id)
            addr = (str(addr[0]), int(addr[1]))
        # IPv4's (host, port) as it is, rather than a new tuple per datagram
        self._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (a peer that went away) must not stop the session
        logger.debug("media session socket: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._lost()
