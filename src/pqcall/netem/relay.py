"""A user-space UDP relay that impairs traffic between two endpoints, for tests and benchmarks.

Kernel netem is not available everywhere (nor without root), so this relay plays the network:
it owns two UDP sockets, side A and side B. Endpoint A sends to :attr:`ImpairmentRelay.address_a`
and the relay forwards to endpoint B from :attr:`ImpairmentRelay.address_b`; B's replies go the
other way. Each endpoint sees the relay as its peer. Each direction has its own
:class:`~pqcall.netem.model.Impairment`, applied by a sans-I/O
:class:`~pqcall.netem.model.ImpairedLink` with ``random.Random(impairment.seed)``;
this module is only the pump (datagram in, ``now=loop.time()``, send what is due, re-arm one
``loop.call_at`` timer per direction).

Peers: an endpoint's address is either given (``peer_a``, ``peer_b``) or learned from the first
datagram that reaches its side, and then fixed for the relay's life. Datagrams from any other
address, and datagrams whose destination is not known yet, are not forwarded and are counted
in :attr:`ImpairmentRelay.ignored` (they do not consume the direction's random draws).

Example::

    async with ImpairmentRelay(a_to_b=Impairment(loss=0.1, seed=7)) as relay:
        ...  # A sends to relay.address_a, B to relay.address_b
        print(relay.stats(Direction.A_TO_B).dropped)
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import random
from types import TracebackType

from pqcall.exceptions import LocalProtocolError
from pqcall.netem.model import (
    QUEUE_LIMIT_DATAGRAMS,
    ImpairedLink,
    Impairment,
    LinkStats,
)

LOOPBACK_HOST = "127.0.0.1"
EPHEMERAL_PORT = 0  # let the kernel choose

Address = tuple[str, int]

logger = logging.getLogger(__name__)


class Direction(enum.Enum):
    """A direction through the relay."""

    A_TO_B = "a->b"
    B_TO_A = "b->a"


class _Side(enum.Enum):
    A = "a"
    B = "b"


_FROM_SIDE = {_Side.A: Direction.A_TO_B, _Side.B: Direction.B_TO_A}  # where a side's input goes
_TO_SIDE = {Direction.A_TO_B: _Side.B, Direction.B_TO_A: _Side.A}  # which side a direction exits


class _SideProtocol(asyncio.DatagramProtocol):
    """Hands one socket's datagrams to the relay."""

    def __init__(self, relay: ImpairmentRelay, side: _Side) -> None:
        self._relay = relay  # the owner
        self._side = side  # which socket this is
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._relay._datagram_received(self._side, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (a peer that went away) must not stop the relay
        logger.debug("impairment relay side %s: %s", self._side.value, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class ImpairmentRelay:
    """Forwards UDP datagrams between endpoints A and B, impairing each direction.

    Args:
        a_to_b: settings for datagrams from A to B (default: forward untouched).
        b_to_a: settings for datagrams from B to A (default: forward untouched).
        host: address both relay sockets bind to.
        peer_a: endpoint A's address, or None to learn it from A's first datagram.
        peer_b: endpoint B's address, or None to learn it from B's first datagram.
        queue_limit: most copies in flight per direction; more are discarded and counted.

    Call :meth:`start` (or enter ``async with``) before use and :meth:`close` after.
    """

    def __init__(
        self,
        a_to_b: Impairment | None = None,
        b_to_a: Impairment | None = None,
        *,
        host: str = LOOPBACK_HOST,
        peer_a: Address | None = None,
        peer_b: Address | None = None,
        queue_limit: int = QUEUE_LIMIT_DATAGRAMS,
    ) -> None:
        self._host = host  # where both sockets bind
        self._peers: dict[_Side, Address | None] = {_Side.A: peer_a, _Side.B: peer_b}
        self._links = {  # one sans-I/O link per direction
            direction: ImpairedLink(imp, random.Random(imp.seed), queue_limit=queue_limit)
            for direction, imp in (
                (Direction.A_TO_B, a_to_b or Impairment()),
                (Direction.B_TO_A, b_to_a or Impairment()),
            )
        }
        self._timers: dict[Direction, asyncio.TimerHandle] = {}  # armed delivery timers
        self._transports: dict[_Side, asyncio.DatagramTransport] = {}  # bound sockets
        self._protocols: dict[_Side, _SideProtocol] = {}  # their protocols, for close
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start
        self._is_closed = False  # close() was called
        self._ignored = 0  # datagrams not forwarded: foreign sender or unknown destination

    async def start(self) -> None:
        """Bind both sockets on ``host`` (ephemeral ports).

        Raises:
            LocalProtocolError: if the relay was already started or closed.
            OSError: if a socket cannot be bound.
        """
        if self._loop is not None or self._is_closed:
            raise LocalProtocolError("impairment relay can only be started once")
        self._loop = asyncio.get_running_loop()
        try:
            for side in _Side:
                transport, protocol = await self._loop.create_datagram_endpoint(
                    functools.partial(_SideProtocol, self, side),
                    local_addr=(self._host, EPHEMERAL_PORT),
                )
                self._transports[side] = transport
                self._protocols[side] = protocol
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop forwarding, drop datagrams still in flight, close both sockets. Idempotent."""
        self._is_closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for transport in self._transports.values():
            transport.close()
        await asyncio.gather(*(protocol.closed for protocol in self._protocols.values()))

    async def __aenter__(self) -> ImpairmentRelay:
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
    def address_a(self) -> Address:
        """Where endpoint A sends, and where B's datagrams come from."""
        return self._local_address(_Side.A)

    @property
    def address_b(self) -> Address:
        """Where endpoint B sends, and where A's datagrams come from."""
        return self._local_address(_Side.B)

    @property
    def peer_a(self) -> Address | None:
        """Endpoint A's address, configured or learned; None until known."""
        return self._peers[_Side.A]

    @property
    def peer_b(self) -> Address | None:
        """Endpoint B's address, configured or learned; None until known."""
        return self._peers[_Side.B]

    @property
    def ignored(self) -> int:
        """Datagrams not forwarded: from an unexpected sender, or with no destination yet."""
        return self._ignored

    def stats(self, direction: Direction) -> LinkStats:
        """A snapshot of one direction's counters."""
        return self._links[direction].stats

    def impairment(self, direction: Direction) -> Impairment:
        """The settings one direction applies now."""
        return self._links[direction].impairment

    def set_impairment(self, direction: Direction, impairment: Impairment) -> None:
        """Change one direction's settings (and reseed it) for datagrams received from now on.

        Datagrams in flight keep their delivery times; counters go on.
        """
        self._links[direction].reconfigure(impairment, random.Random(impairment.seed))

    def _local_address(self, side: _Side) -> Address:
        transport = self._transports.get(side)
        if transport is None:
            raise LocalProtocolError("impairment relay is not started")
        sockname = transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1]))

    def _datagram_received(self, side: _Side, data: bytes, addr: Address) -> None:
        # route: latch or check the sender, then find the other side's peer
        if self._is_closed or self._loop is None:
            return
        expected = self._peers[side]
        if expected is None:
            self._peers[side] = expected = addr
        destination_side = _Side.B if side is _Side.A else _Side.A
        if addr != expected or self._peers[destination_side] is None:
            self._ignored += 1
            return
        direction = _FROM_SIDE[side]
        now = self._loop.time()
        self._links[direction].receive_datagram(data, now)
        self._pump(direction, now)

    def _on_timer(self, direction: Direction, when: float) -> None:
        assert self._loop is not None
        del self._timers[direction]
        # call_at may fire up to the clock resolution early; never pass a now before `when`
        self._pump(direction, max(when, self._loop.time()))

    def _pump(self, direction: Direction, now: float) -> None:
        # send what is due, then re-arm this direction's single timer
        assert self._loop is not None
        link = self._links[direction]
        side = _TO_SIDE[direction]
        destination = self._peers[side]
        transport = self._transports[side]
        for data in link.datagrams_to_send(now):
            transport.sendto(data, destination)
        when = link.get_timer()
        timer = self._timers.get(direction)
        if timer is not None and timer.when() == when:
            return
        if timer is not None:
            timer.cancel()
            del self._timers[direction]
        if when is not None:
            self._timers[direction] = self._loop.call_at(when, self._on_timer, direction, when)
