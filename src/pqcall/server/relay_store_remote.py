"""Relay allocations for separate ``pqcall relay`` processes, made by the server.

With ``pqcall server --relay-url udp://HOST:PORT`` (repeatable) the server runs no
relay socket. :class:`StoredRelay` makes each call's grant here (the tokens go to the
phones over signaling, as with the in-server relay) and writes the allocation to the
shared database (:mod:`pqcall.server.relay_store`); the relay process finds it when the
first bind names it, and drops it when the server deletes the row at hang-up. Calls
are spread over the relays by their call id.

:class:`StoredRelay` is a :class:`~pqcall.server.relay.MediaRelay` without a socket:
the call code (``allocate``, ``allocation``, ``release``, ``address``) does not tell
them apart. It ends allocations only at hang-up or at their lifetime; idleness is the
relay process's to judge (it sees the datagrams).
"""

from __future__ import annotations

import asyncio
import hashlib
from urllib.parse import urlsplit

from pqcall.exceptions import LocalProtocolError, ServerError
from pqcall.server.relay import MediaRelay
from pqcall.server.relay_store import RelayStore
from pqcall.server.relay_table import RELAY_MAX_LIFETIME_S


def parse_relay_url(url: str) -> tuple[str | None, int]:
    """``udp://HOST:PORT`` as ``(host, port)``; an empty host (``udp://:PORT``) is None:
    phones use the host they reach the server at.

    Raises:
        ServerError: not such a URL.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "udp" or port is None or not 0 < port < 65536 or parts.path:
        raise ServerError(f"relay URL must be udp://HOST:PORT, got {url!r}")
    return (parts.hostname or None, port)


class StoredRelay(MediaRelay):
    """The server's side of separate relay processes: grants made here, rows in ``store``.

    Args:
        urls: the relays, ``udp://HOST:PORT`` each (:func:`parse_relay_url`).
        store: the database the relays read.
        max_lifetime_s: an allocation's longest life (its row's expiry).
    """

    def __init__(
        self, urls: list[str], store: RelayStore, *, max_lifetime_s: float = RELAY_MAX_LIFETIME_S
    ) -> None:
        if not urls:
            raise LocalProtocolError("StoredRelay needs at least one relay URL")
        self.endpoints = [parse_relay_url(url) for url in urls]  # (host or None, port)
        super().__init__(
            "127.0.0.1",
            0,
            idle_timeout_s=max_lifetime_s,  # never idle here: the relay process judges that
            max_lifetime_s=max_lifetime_s,
            store=store,
        )
        self._started = False  # start() ran, close() did not

    async def start(self) -> None:
        """Start writing allocations to the store (no socket, nothing restored)."""
        if self._started or self._is_closed:
            raise LocalProtocolError("stored relay can only be started once")
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._tasks.append(asyncio.create_task(self._write_loop()))

    async def close(self) -> None:
        """Write what is pending and stop. Idempotent; the rows stay."""
        was_open, self._is_closed = self._started, True
        self._started = False
        async with self._write_lock:
            for task in self._tasks:
                task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if was_open and self._tasks:
            await self._write_changes()
        self._tasks.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def address(self) -> tuple[str, int]:
        """The first relay's (host, port) ("" for the host phones reach the server at)."""
        host, port = self.endpoints[0]
        return (host or "", port)

    def endpoint_for(self, call_id: str) -> tuple[str | None, int]:
        """The relay serving ``call_id`` (spread by a hash of it)."""
        digest = hashlib.sha256(call_id.encode()).digest()
        return self.endpoints[int.from_bytes(digest[:4], "big") % len(self.endpoints)]
