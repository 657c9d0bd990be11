"""Connection limits uvicorn lacks: a header timeout, a per-address cap, a total cap.

uvicorn 0.55 (h11) arms its keep-alive timer only after a response, so a
connection that never finishes its request line and headers is held forever,
and its ``limit_concurrency`` answers 503 to requests but still accepts and
keeps connections. Such connections never reach the app, so the per-address
request limiter (:mod:`pqcall.server.ratelimit`) never sees them (issue 20,
finding 5: "slowloris"). :func:`guarded_protocol` subclasses uvicorn's h11
protocol to close, from the transport up:

- a connection whose request line and headers are not complete within
  ``header_timeout_s`` of its opening, or of the end of its previous response;
- a new connection while its address already has ``max_pending_per_address``
  new connections that have not finished their first request's headers (a
  kept-alive connection is not counted: it got there through a complete
  request, which the rate limiter counted);
- a new connection while ``max_connections`` are open (WebSockets included).

A request whose headers arrived is the app's from then on (body size and the
rate limits apply). The protocol is always h11: httptools, if installed, would
not have these guards (why a subclass: docs/decisions/0420-server-header-timeout.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)


def guarded_protocol(
    *, header_timeout_s: float, max_pending_per_address: int, max_connections: int
) -> type[H11Protocol]:
    """An h11 protocol class for ``uvicorn.Config(http=...)`` with these limits.

    Each call returns a new class with its own count of pending connections,
    so two servers in one process do not share it.
    """
    pending: Counter[str] = Counter()  # address -> connections still sending headers

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol that closes connections slow to send headers, or too many."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None  # armed while headers are due
            self._pending_address: str | None = None  # counted in ``pending`` while set

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else ""
            if len(self.connections) > max_connections:
                logger.warning("too many open connections (%d): closing a new one", max_connections)
                transport.abort()
                return
            if pending[address] >= max_pending_per_address:
                logger.warning(
                    "%d connections from one address without complete headers: closing a new one",
                    max_pending_per_address,
                )
                transport.abort()
                return
            self._await_headers(count=True)

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_done()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # a request line and headers arrived
                self._headers_done()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_headers(count=False)  # the next request on this connection

        def _await_headers(self, *, count: bool) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)
            if count and self._pending_address is None:
                self._pending_address = self.client[0] if self.client else ""
                pending[self._pending_address] += 1

        def _headers_done(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self._pending_address is not None:
                pending[self._pending_address] -= 1
                if pending[self._pending_address] <= 0:
                    del pending[self._pending_address]
                self._pending_address = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                logger.debug("closing a connection that sent no complete headers in time")
                self.transport.abort()  # connection_lost follows and uncounts it

    return GuardedH11Protocol
