"""A call's media socket through a TURN allocation, without the media session knowing.

Scope: when :mod:`pqcall.transport.turn_path` decides a call goes through TURN, path
selection runs over the allocation; the media session then needs a UDP socket that
talks to the peer. :class:`TurnProxy` gives it one: a loopback UDP socket L. The
phone's media socket sends to L as if L were the peer (``PathChoice.peer`` is L);
L hands each datagram to the TURN allocation for the real peer, and whatever the peer
sends through TURN leaves L towards the media socket. The bytes are unchanged: MAC'd
checks and SFrame media, end to end. It ends when its owner closes it or after
``IDLE_TIMEOUT_S`` without a datagram either way (the call is over), deleting the
allocation.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from pqcall.transport.path_messages import Address
from pqcall.transport.turn import TurnRelay

__all__ = ["IDLE_TIMEOUT_S", "TurnProxy"]

logger = logging.getLogger(__name__)

IDLE_TIMEOUT_S: Final = 30.0
"""No datagram either way for this long: the call is over, the allocation is deleted."""
LOOPBACK: Final = "127.0.0.1"


class _Local(asyncio.DatagramProtocol):
    def __init__(self, proxy: TurnProxy) -> None:
        self._proxy = proxy

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._proxy._from_media(data, (str(addr[0]), int(addr[1])))


class _Remote(asyncio.DatagramProtocol):
    def __init__(self, proxy: TurnProxy) -> None:
        self._proxy = proxy

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._proxy._from_peer(data, (str(addr[0]), int(addr[1])))


class TurnProxy:
    """Relays between a local media socket and one peer through a TURN allocation.

    Made by :meth:`start`; :attr:`address` is where the media socket sends (its
    ``PathChoice.peer``). Only ``media`` (the media socket's loopback address) may send
    through it; only ``peer`` is heard.
    """

    def __init__(self, turn: TurnRelay, media: Address, peer: Address) -> None:
        self._turn = turn  # the allocation
        self._media = media  # the phone's media socket, on loopback
        self._peer = peer  # the real peer (or the pqcall relay), through TURN
        self._local: asyncio.DatagramTransport | None = None  # L
        self._last = 0.0  # loop time of the last datagram either way
        self._idle: asyncio.TimerHandle | None = None
        self._closing: asyncio.Future[None] | None = None  # close() started by idleness
        self.closed = asyncio.get_running_loop().create_future()
        """Done once closed (by :meth:`close` or idleness)."""

    @classmethod
    async def start(
        cls, turn: TurnRelay, media_port: int, peer: Address, idle_timeout_s: float = IDLE_TIMEOUT_S
    ) -> TurnProxy:
        """Open L on loopback and start relaying for the media socket on ``media_port``."""
        proxy = cls(turn, (LOOPBACK, media_port), peer)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Local(proxy), local_addr=(LOOPBACK, 0)
        )
        proxy._local = transport
        proxy._last = loop.time()
        turn.receiver = _Remote(proxy)
        proxy._arm(idle_timeout_s)
        return proxy

    @property
    def address(self) -> Address:
        """L: where the media socket sends to reach the peer."""
        assert self._local is not None
        host, port = self._local.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def _from_media(self, data: bytes, addr: Address) -> None:
        if addr[1] != self._media[1]:
            return  # another local process: not ours to relay
        self._last = asyncio.get_running_loop().time()
        self._turn.sendto(data, self._peer)

    def _from_peer(self, data: bytes, addr: Address) -> None:
        if addr != self._peer or self._local is None:
            return
        self._last = asyncio.get_running_loop().time()
        self._local.sendto(data, self._media)

    def _arm(self, idle_timeout_s: float) -> None:
        loop = asyncio.get_running_loop()

        def check() -> None:
            if loop.time() - self._last >= idle_timeout_s:
                logger.info("turn: the call's media stopped; deleting the allocation")
                self._closing = asyncio.ensure_future(self.close())
            else:
                self._idle = loop.call_at(self._last + idle_timeout_s, check)

        self._idle = loop.call_at(self._last + idle_timeout_s, check)

    async def close(self) -> None:
        """Stop relaying and delete the allocation. Idempotent."""
        if self.closed.done():
            return
        self.closed.set_result(None)
        if self._idle is not None:
            self._idle.cancel()
        if self._local is not None:
            self._local.close()
        await self._turn.close()
