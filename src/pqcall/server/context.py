"""What every route and background task of one server process shares.

:class:`AppContext` is created by :func:`pqcall.server.app.create_app` and
lives on ``app.state.context``. Routes get it with the :data:`Context`
dependency. Long-lived parts (the media relay, mDNS, metrics, the call
sweeper, the event hub) are :class:`Component` objects: pass them to
``create_app(components=...)`` and they are started in order after storage is
open and stopped in reverse order before it closes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request

from pqcall.server.faults import StorageStatus
from pqcall.server.presence import PresenceRegistry
from pqcall.server.settings import ServerSettings
from pqcall.server.storage import Storage

Clock = Callable[[], float]
"""Returns unix time in seconds; injected so tests can move time."""


class Component(Protocol):
    """Something that runs as long as the server: relay, mDNS, sweeper, event hub."""

    async def start(self, context: AppContext) -> None:
        """Start; storage is open. Raising aborts the server's start."""

    async def stop(self) -> None:
        """Stop and release everything; called once, in reverse start order."""


@dataclass(eq=False)
class AppContext:
    """Shared state of one server process."""

    settings: ServerSettings
    """The settings the server was started with."""
    clock: Clock = time.time
    """Unix seconds; the only clock routes may read."""
    presence: PresenceRegistry = field(default_factory=PresenceRegistry)
    """Live push connections of this process."""
    storage_status: StorageStatus = field(default_factory=StorageStatus)
    """The storage fault on record (database down, disk full), logged once per change."""
    components: list[Component] = field(default_factory=list)
    """Started after storage opens, stopped before it closes."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Components publish themselves here by name ("relay", "events", "metrics")."""
    _storage: Storage | None = field(default=None, init=False, repr=False)

    @property
    def storage(self) -> Storage:
        """The database; open between startup and shutdown."""
        if self._storage is None:
            raise RuntimeError("storage is not open (the app has not started)")
        return self._storage

    def attach_storage(self, storage: Storage | None) -> None:
        """Set (at startup) or clear (at shutdown) the open storage."""
        self._storage = storage

    def now(self) -> float:
        """The current unix time from :attr:`clock`."""
        return self.clock()


def context_of(request: Request) -> AppContext:
    """The process's :class:`AppContext`, from a request."""
    context: AppContext = request.app.state.context
    return context


async def get_context(request: Request) -> AppContext:
    """FastAPI dependency: the process's :class:`AppContext`.

    ``async`` so FastAPI calls it on the event loop; a plain ``def`` is run in
    its thread pool, a hand-off on every request (10 % of a call setup's CPU).
    """
    return context_of(request)


Context = Annotated[AppContext, Depends(get_context)]
"""Route parameter type that receives the :class:`AppContext`."""


def api_error(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> HTTPException:
    """An error the API answers as ``{"error": message}`` with ``status_code``."""
    return HTTPException(status_code=status_code, detail=message, headers=headers)


def seen_address(request: Request) -> str | None:
    """``host:port`` the request came from, as the server sees it (``[v6]:port`` for IPv6).

    Behind a reverse proxy this is the proxy unless uvicorn trusts its
    forwarding headers (``--forwarded-allow-ips``).
    """
    if request.client is None:
        return None
    host, port = request.client.host, request.client.port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
