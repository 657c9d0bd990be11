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

With a :class:`~pqcall.server.relay_store.RelayStore` (``MediaRelay(..., store=store)``)
the relay writes each allocation's stored form behind the datagram path (made, a party
bound or moved, ended), restores every live one at :meth:`MediaRelay.start`, and looks a
grant it does not hold up in the store (at most ``LOOKUPS_PER_S``): allocations made
by another process (the server, for a separate ``pqcall relay``) or before a restart.
With ``follow_store=True`` (a separate relay process) it also drops, every
``SYNC_S``, the allocations whose rows the server deleted (hang-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import socket
import time
from types import TracebackType
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from pqcall.server.relay_store import RelayStore

DEFAULT_RELAY_HOST = "0.0.0.0"
DEFAULT_RELAY_PORT = 5001  # UDP; the same number as the HTTP API's TCP port
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # asked of the kernel (it may grant less)
LOOKUPS_PER_S = 20  # store lookups of grants this relay does not hold (binds are not yet
# authentic then: the bound keeps a flood of made-up grant ids off the database)
STORE_RETRY_S = 1.0  # a failed store write is tried again this much later
SYNC_S = 2.0  # follow_store: how often to drop allocations whose rows were deleted

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
        store: where allocations persist (None: in memory only, lost with the process).
        follow_store: also drop allocations whose rows vanished (a separate relay).

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
        store: RelayStore | None = None,
        follow_store: bool = False,
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
        self._store = store  # where allocations persist, if anywhere
        self._follow_store = follow_store  # drop allocations whose rows vanished
        self._dirty = asyncio.Event()  # the table may have changes to write
        self._write_lock = asyncio.Lock()  # one write of changes at a time
        self._tasks: list[asyncio.Task[None]] = []  # writer (and follower) while running
        self._lookups: set[bytes] = set()  # grant ids being looked up
        self._lookup_window = (0.0, 0)  # (second, lookups started in it)
        self._store_failing = False  # the last store operation failed (log once per change)
        self.restored = 0  # allocations restored from the store at start

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
        if self._store is not None:
            await self._restore_all()
            self._tasks.append(asyncio.create_task(self._write_loop()))
            if self._follow_store:
                self._tasks.append(asyncio.create_task(self._follow_loop()))

    async def close(self) -> None:
        """Stop relaying and close the socket. Idempotent.

        Without a store, allocations are forgotten; with one, pending writes finish and
        the rows stay for the next start (they expire there as they would have here).
        """
        was_open, self._is_closed = not self._is_closed, True
        async with self._write_lock:  # never cancel a write half done
            for task in self._tasks:
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tasks and was_open:
            await self._write_changes()  # what is still pending
        self._tasks.clear()
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
        self._dirty.set()
        if self._timer is None:
            self._arm_timer()
        return allocation

    def release(self, call_id: str) -> bool:
        """Stop relaying ``call_id`` now (hang-up). Returns whether it had an allocation."""
        self._dirty.set()
        return self._table.release(call_id)

    def allocation(self, call_id: str) -> RelayAllocation | None:
        """``call_id``'s live allocation, if any made here (a restored one has no grant
        secrets to hand out: None)."""
        allocation = self._table.allocation(call_id)
        return allocation if allocation is not None and allocation.caller_token else None

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
        if outgoing is None or not outgoing.is_forward:
            self._after_control()
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
            self._dirty.set()
        self._arm_timer()

    # persistence (server/relay_store.py)

    def _after_control(self) -> None:
        if self._store is None:
            return
        if self._table.has_changes:
            self._dirty.set()
        for grant_id in self._table.unknown_grants():
            self._look_up(grant_id)

    def _look_up(self, grant_id: bytes) -> None:
        assert self._loop is not None
        second = int(self._loop.time())
        window, started = self._lookup_window
        if window != second:
            window, started = second, 0
        if grant_id in self._lookups or started >= LOOKUPS_PER_S or self._is_closed:
            return
        self._lookup_window = (window, started + 1)
        self._lookups.add(grant_id)
        task = asyncio.create_task(self._find(grant_id))
        task.add_done_callback(lambda _: self._lookups.discard(grant_id))

    async def _find(self, grant_id: bytes) -> None:
        assert self._store is not None and self._loop is not None
        try:
            stored = await self._store.find_grant(grant_id, time.time())
        except Exception as exc:
            self._store_failed(exc)
            return
        self._store_ok()
        if stored is not None and not self._is_closed:
            if self._table.restore(stored, self._loop.time(), time.time()):
                logger.info("relay allocation for call %s found in the store", stored.call_id)
                if self._timer is None:
                    self._arm_timer()

    async def _restore_all(self) -> None:
        assert self._store is not None and self._loop is not None
        try:
            stored = await self._store.load_live(time.time())
        except Exception as exc:
            self._store_failed(exc)
            return
        for allocation in stored:
            if self._table.restore(allocation, self._loop.time(), time.time()):
                self.restored += 1
        if self.restored:
            logger.info("media relay restored %d allocations from the store", self.restored)
            self._arm_timer()

    async def _write_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._write_changes()

    async def _write_changes(self) -> None:
        async with self._write_lock:
            await self._write_changed()

    async def _write_changed(self) -> None:
        assert self._store is not None and self._loop is not None
        changed = self._table.changed()
        if not changed:
            return
        now, wall_now = self._loop.time(), time.time()
        try:
            gone = []
            for call_id in changed:
                stored = self._table.snapshot(call_id, now, wall_now)
                if stored is None:
                    gone.append(call_id)
                else:
                    await self._store.put(stored)
            await self._store.delete(gone)
        except Exception as exc:
            self._store_failed(exc)
            self._table.mark_changed(changed)  # written again at the next change or retry
            if not self._is_closed:
                assert self._loop is not None
                self._loop.call_later(STORE_RETRY_S, self._dirty.set)
            return
        self._store_ok()

    async def _follow_loop(self) -> None:
        assert self._store is not None
        while True:
            await asyncio.sleep(SYNC_S)
            held = self._table.call_ids()
            try:
                live = await self._store.live_calls(held)
            except Exception as exc:
                self._store_failed(exc)
                continue
            self._store_ok()
            for call_id in held:
                if call_id not in live and self._table.release(call_id):
                    logger.info("relay allocation for call %s ended (row deleted)", call_id)

    def _store_failed(self, exc: Exception) -> None:
        if not self._store_failing:
            logger.warning("media relay: the allocation store failed: %s", type(exc).__name__)
        self._store_failing = True

    def _store_ok(self) -> None:
        if self._store_failing:
            logger.warning("media relay: the allocation store works again")
        self._store_failing = False
