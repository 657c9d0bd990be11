"""The group forwarder's UDP socket: one asyncio pump around :class:`GroupForwardTable`.

The decisions are :mod:`pqcall.server.group_forward`'s, the wire
:mod:`pqcall.transport.group_wire`'s. This module owns one UDP socket for every
group call, feeds each datagram to the table with ``now=loop.time()``, sends what
it returns, and every :data:`SWEEP_S` asks it for members gone silent, which it
hands to ``on_gone(call_id, token)``.

It is a socket of its own, beside the 1:1 relay (decision 0600): the 1:1 relay's
bind format is changing, and a group fan-out has other limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from pqcall.exceptions import LocalProtocolError
from pqcall.server.group_forward import Address, ForwardStats, GroupForwardTable

logger = logging.getLogger(__name__)

SWEEP_S = 0.5
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024

OnGone = Callable[[str, bytes], None]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, relay: GroupRelay) -> None:
        self._relay = relay
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._relay.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("group forwarder: %s", exc)  # a member that went away

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class GroupRelay:
    """Forwards group media on one UDP socket.

    Args:
        host: address to bind.
        port: UDP port (0: the kernel chooses; see :attr:`address`).
        table: the forwarding table (a default one if omitted).
        on_gone: told of each member the table reports silent.
    """

    def __init__(
        self,
        host: str,
        port: int = 0,
        *,
        table: GroupForwardTable | None = None,
        on_gone: OnGone | None = None,
    ) -> None:
        self.table = table or GroupForwardTable()
        self.on_gone = on_gone
        self._host = host
        self._port = port
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Bind the socket and start the sweeper.

        Raises:
            OSError: the socket cannot be bound.
        """
        if self._loop is not None:
            raise LocalProtocolError("the group forwarder can only be started once")
        self._loop = asyncio.get_running_loop()
        transport, protocol = await self._loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self._host, self._port)
        )
        self._transport, self._protocol = transport, protocol
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self._sweeper = asyncio.create_task(self._sweep(), name="pqcall-group-sweep")
        logger.info("group forwarder listening on UDP %s:%d", *self.address)

    async def close(self) -> None:
        """Stop forwarding and close the socket. Idempotent."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            if self._protocol is not None:
                await self._protocol.closed

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        if self._transport is None:
            raise LocalProtocolError("the group forwarder is not running")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def stats(self) -> ForwardStats:
        """The table's counters."""
        return self.table.stats()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self._transport is None or self._loop is None:
            return
        for datagram, target in self.table.receive_datagram(data, addr, self._loop.time()):
            self._transport.sendto(datagram, target)

    async def _sweep(self) -> None:
        assert self._loop is not None
        while True:
            await asyncio.sleep(SWEEP_S)
            for call_id, token in self.table.handle_timer(self._loop.time()):
                if self.on_gone is not None:
                    try:
                        self.on_gone(call_id, token)
                    except Exception:
                        logger.exception("group forwarder: on_gone failed")
