"""The media relay's UDP socket: one asyncio pump around :class:`RelayTable`.

All decisions (tokens, bindings, who may send to whom, rate limits, expiry) live in
:mod:`pqcall.server.relay_table`, the bind/ack wire format in
:mod:`pqcall.transport.relay_wire`; read their docstrings for the protocol. This
module owns one UDP socket for every call, feeds each datagram to the table with
``now=loop.time()``, sends what the table returns, and runs the table's expiry timer.

Example (what the signaling server does)::

    relay = MediaRelay("0.0.0.0", 5001)
    await relay.start()
    allocation = relay.allocate(call_id)  # when a call needs relaying
    # send allocation.caller_token to the caller, allocation.callee_token to the callee
    # (grant secrets: they never travel to this port, binds are MAC'd with keys derived
    # from them), each with the relay's public host and relay.address[1]
    relay.release(call_id)  # at hang-up
    await relay.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import socket
from types import TracebackType

from pqcall.exceptions import LocalProtocolError
from pqcall.server.relay_table import (
    MAX_RELAY_ALLOCATIONS,
    RELAY_BURST_S,
    RELAY_BYTES_PER_S,
    RELAY_IDLE_TIMEOUT_S,
    RELAY_MAX_LIFETIME_S,
    RELAY_PACKETS_PER_S,
    Address,
    DropReason,
    RelayAllocation,
    RelayStats,
    RelayTable,
)
from pqcall.server.stun import StunResponder, is_stun_request

DEFAULT_RELAY_HOST = "0.0.0.0"
DEFAULT_RELAY_PORT = 5001  # UDP; the same number as the HTTP API's TCP port
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # asked of the kernel (it may grant less)

logger = logging.getLogger(__name__)


class _RelayProtocol(asyncio.DatagramProtocol):
    """Hands the socket's datagrams to the relay."""

    def __init__(self, relay: MediaRelay) -> None:
        self._relay = relay  # the owner
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._relay._datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (a party that went away) must not stop the relay
        logger.debug("media relay: %s", exc)

    def pause_writing(self) -> None:
        self._relay._is_send_paused = True

    def resume_writing(self) -> None:
        self._relay._is_send_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class MediaRelay:
    """A UDP relay for calls whose parties cannot reach each other directly.

    Args:
        host: address to bind (``"0.0.0.0"`` for every IPv4 interface, ``"::"`` for
            IPv4 and IPv6).
        port: UDP port to bind (0: let the kernel choose; see :attr:`address`).
        idle_timeout_s: release an allocation after this long without a datagram.
        max_lifetime_s: release an allocation this long after it was made.
        packets_per_s: each direction's sustained packet rate.
        bytes_per_s: each direction's sustained byte rate.
        burst_s: each rate bucket holds this many seconds of its rate.
        max_allocations: most live allocations (:meth:`allocate` raises ``RelayFull``).

    Call :meth:`start` (or enter ``async with``) before use and :meth:`close` after.
    """

    def __init__(
        self,
        host: str = DEFAULT_RELAY_HOST,
        port: int = DEFAULT_RELAY_PORT,
        *,
        idle_timeout_s: float = RELAY_IDLE_TIMEOUT_S,
        max_lifetime_s: float = RELAY_MAX_LIFETIME_S,
        packets_per_s: float = RELAY_PACKETS_PER_S,
        bytes_per_s: float = RELAY_BYTES_PER_S,
        burst_s: float = RELAY_BURST_S,
        max_allocations: int = MAX_RELAY_ALLOCATIONS,
    ) -> None:
        self._host = host  # where the socket binds
        self._port = port  # requested port (0: ephemeral)
        self._table = RelayTable(
            token_source=secrets.token_bytes,
            idle_timeout_s=idle_timeout_s,
            max_lifetime_s=max_lifetime_s,
            packets_per_s=packets_per_s,
            bytes_per_s=bytes_per_s,
            burst_s=burst_s,
            max_allocations=max_allocations,
        )
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start
        self._transport: asyncio.DatagramTransport | None = None  # the socket
        self._protocol: _RelayProtocol | None = None  # its protocol, for close
        self._timer: asyncio.TimerHandle | None = None  # the armed expiry timer
        self._is_closed = False  # close() was called
        self._is_send_paused = False  # the transport's send buffer is over its high mark
        self._send_blocked = 0  # forwards dropped because the send buffer was full
        self._send_blocked_bytes = 0  # their bytes
        self.stun = StunResponder()  # answers STUN Binding requests on the same port

    async def start(self) -> None:
        """Bind the UDP socket.

        Raises:
            LocalProtocolError: if the relay was already started or closed.
            OSError: if the socket cannot be bound (e.g. the port is in use).
        """
        if self._loop is not None or self._is_closed:
            raise LocalProtocolError("media relay can only be started once")
        self._loop = asyncio.get_running_loop()
        transport, protocol = await self._loop.create_datagram_endpoint(
            lambda: _RelayProtocol(self), local_addr=(self._host, self._port)
        )
        self._transport = transport
        self._protocol = protocol
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        logger.info("media relay listening on UDP %s:%d", *self.address)

    async def close(self) -> None:
        """Stop relaying and close the socket. Idempotent. Allocations are forgotten."""
        self._is_closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
        if self._protocol is not None:
            await self._protocol.closed

    async def __aenter__(self) -> MediaRelay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); tell phones the server's public host and this port."""
        if self._transport is None:
            raise LocalProtocolError("media relay is not started")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def allocate(self, call_id: str) -> RelayAllocation:
        """Allocate relaying for ``call_id`` (or return its live allocation).

        Raises:
            LocalProtocolError: if the relay is not running.
            RelayFull: if it holds its maximum number of allocations.
        """
        loop = self._running_loop()
        allocation = self._table.allocate(call_id, loop.time())
        if self._timer is None:
            self._arm_timer()
        return allocation

    def release(self, call_id: str) -> bool:
        """Stop relaying ``call_id`` now (hang-up). Returns whether it had an allocation."""
        return self._table.release(call_id)

    def allocation(self, call_id: str) -> RelayAllocation | None:
        """``call_id``'s live allocation, if any."""
        return self._table.allocation(call_id)

    def stats(self) -> RelayStats:
        """A snapshot of the relay's counters (cheap; read at every metrics scrape)."""
        stats = self._table.stats()
        if not self._send_blocked:
            return stats
        dropped = dict(stats.dropped)
        dropped[DropReason.SEND_BLOCKED] = self._send_blocked
        return dataclasses.replace(
            stats,
            packets_forwarded=stats.packets_forwarded - self._send_blocked,
            bytes_forwarded=stats.bytes_forwarded - self._send_blocked_bytes,
            dropped=dropped,
        )

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._is_closed:
            raise LocalProtocolError("media relay is not running")
        return self._loop

    def _datagram_received(self, data: bytes, addr: Address) -> None:
        assert self._loop is not None and self._transport is not None
        if is_stun_request(data):  # STUN Binding (server-reflexive candidates): server/stun.py
            self._stun_answer(data, addr)
            return
        outgoing = self._table.receive_datagram(data, addr, self._loop.time())
        if outgoing is None:
            return
        notices = () if outgoing.is_forward else self._table.notices()  # acks to the other
        if self._is_send_paused:
            # late media is useless: drop rather than queue without bound
            if outgoing.is_forward:
                self._send_blocked += 1
                self._send_blocked_bytes += len(outgoing.data)
            return
        self._transport.sendto(outgoing.data, outgoing.address)
        for notice in notices:
            self._transport.sendto(notice.data, notice.address)

    def _stun_answer(self, data: bytes, addr: Address) -> None:
        assert self._loop is not None and self._transport is not None
        answer = self.stun.answer(data, addr, self._loop.time())
        if answer is not None and not self._is_send_paused:
            self._transport.sendto(answer, addr)

    def _arm_timer(self) -> None:
        assert self._loop is not None
        when = self._table.get_timer()
        self._timer = None if when is None else self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        for ended in self._table.handle_timer(self._loop.time()):
            logger.info("relay allocation for call %s ended (%s)", ended.call_id, ended.reason)
        self._arm_timer()
