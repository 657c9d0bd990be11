"""An in-process signaling server whose clients come from addresses a test chooses.

The attacks on the server's availability and exposure (issue 20 findings 1, 8,
11) depend on *where* a request comes from: a flood from one address must not
lock out the owner at another, ``/metrics`` answers loopback only. Over real
loopback sockets every client is 127.0.0.1, so these tests run the app in
process (``httpx.ASGITransport`` sets the ASGI ``client``), with its lifespan
(storage on a copy of the migrated SQLite template) and a fake clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.server.app import create_app
from pqcall.server.context import AppContext
from pqcall.signaling import usernames
from pqcall.signaling.messages import LOGIN_CONTEXT, b64decode, b64encode, login_signed_data
from tests.server.conftest import SERVER_NAME, FakeClock, copy_database, make_settings, registration

LOOPBACK = "127.0.0.1"


@dataclass
class InProcessServer:
    """A started app, its clock, and clients at chosen addresses."""

    app: FastAPI
    clock: FakeClock
    _clients: contextlib.AsyncExitStack

    @property
    def context(self) -> AppContext:
        """The server's shared state."""
        context: AppContext = self.app.state.context
        return context

    async def client(self, address: str, token: str | None = None) -> httpx.AsyncClient:
        """An HTTP client whose requests come from ``address`` (closed with the server)."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.AsyncClient(transport=transport, base_url="http://pqcall", headers=headers)
        return await self._clients.enter_async_context(client)


@contextlib.asynccontextmanager
async def in_process_server(
    migrated_sqlite: Path, directory: Path, **overrides: Any
) -> AsyncIterator[InProcessServer]:
    """Start the app (rate limits at their defaults unless ``overrides`` say otherwise)."""
    options: dict[str, Any] = {"rate_limit_scale": 1.0} | overrides
    settings = make_settings(
        copy_database(migrated_sqlite, directory / "db"), directory / "data", **options
    )
    clock = FakeClock()
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), contextlib.AsyncExitStack() as clients:
        yield InProcessServer(app, clock, clients)


async def register(client: httpx.AsyncClient, username: str) -> IdentityPrivateKey:
    """Register ``username`` with a new identity; the identity."""
    identity = IdentityPrivateKey.generate()
    answer = await client.post("/register", json=registration(identity, username))
    assert answer.status_code == 201, answer.text
    return identity


async def log_in(
    client: httpx.AsyncClient, identity: IdentityPrivateKey, username: str
) -> httpx.Response:
    """Challenge, sign and log in as an honest phone does; the login's response."""
    answer = await client.post("/auth/challenge", json={"username": username})
    assert answer.status_code == 200, answer.text
    challenge = b64decode(answer.json()["challenge"])
    signature = identity.sign(
        login_signed_data(SERVER_NAME, usernames.normalize(username), challenge),
        context=LOGIN_CONTEXT,
    )
    return await client.post(
        "/auth/login",
        json={
            "username": username,
            "challenge": b64encode(challenge),
            "signature": b64encode(signature),
        },
    )
