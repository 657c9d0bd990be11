"""Helpers for the client tests: async tests, accounts through ServerApi, restartable servers.

The server fixtures (``db_url``, ``start_server``, ``server``) come from
``tests/server/conftest.py``; :class:`RestartableServer` adds what those
cannot do: stop a server and start another on the *same port* (and the same
database), as a phone sees a server restart, from inside a running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from pqcall.client.api import ServerApi
from pqcall.client.event_stream import EventStream
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.server.app import create_app
from pqcall.signaling.messages import Event
from tests.harness import (  # noqa: F401  (for the tests here)
    EVENT_TIMEOUT_S,
    TEST_TIMEOUT_S,
    free_port,
    run_async,
    scaled,
)

from ..server.conftest import (  # noqa: F401  (fixtures)
    FakeClock,
    RunningServer,
    bundle_for,
    db_url,
    make_settings,
    migrated_sqlite,
    pg_session_url,
    server,
    server_db_url,
    start_server,
)

QUIET_S = scaled(0.3)  # listening to show that nothing comes


async def new_account(
    base_url: str, username: str, identity: IdentityPrivateKey | None = None, **options: Any
) -> ServerApi:
    """A ServerApi for a freshly registered account (not logged in yet)."""
    identity = identity or IdentityPrivateKey.generate()
    api = ServerApi(base_url, username, identity, **options)
    await api.register(bundle_for(identity, api.username))
    return api


async def next_event(stream: EventStream, timeout: float = EVENT_TIMEOUT_S) -> Event:
    """The stream's next event, which must come within ``timeout``."""
    async with asyncio.timeout(timeout):
        return await anext(stream)


def new_call_id() -> str:
    """A fresh call id (32 hex digits)."""
    return secrets.token_hex(16)


@contextlib.contextmanager
def _run_on_port(
    database_url: str,
    data_dir: Path,
    clock: FakeClock,
    port: int,
    tls: tuple[Path, Path] | None = None,
    **overrides: Any,
) -> Iterator[RunningServer]:
    """``run_server`` on a fixed port (it binds a free one), with TLS if given (cert, key)."""
    settings = make_settings(database_url, data_dir, **overrides)
    app = create_app(settings, clock=clock, components=())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    uv_server = uvicorn.Server(config)
    thread = threading.Thread(target=uv_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while not uv_server.started:
            if not thread.is_alive():
                raise RuntimeError("server failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start in time")
            time.sleep(0.01)
        scheme = "https" if tls else "http"
        yield RunningServer(f"{scheme}://127.0.0.1:{port}", settings, clock, app)
    finally:
        uv_server.should_exit = True
        thread.join(EVENT_TIMEOUT_S)
        sock.close()
        assert not thread.is_alive(), "server did not stop"


class RestartableServer:
    """A server on a fixed port that a test stops and starts again from async code.

    Starting and stopping run in a worker thread, so the test's event loop
    (and the phones in it) keep running while the server goes down: its
    WebSockets get their 1012 close handshakes answered.
    """

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        tls: tuple[Path, Path] | None = None,
        **overrides: Any,
    ) -> None:
        self.port = free_port()  # the same on every start
        scheme = "https" if tls else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"  # where phones reach it
        self._tls = tls  # certificate and key files, for HTTPS
        self.clock = FakeClock()  # shared by every start
        self._db_url = database_url  # the same database on every start
        self._data_dir = data_dir  # and the same data directory
        self._overrides = overrides  # settings
        self._stack: contextlib.ExitStack | None = None  # the running server
        self.running: RunningServer | None = None  # while started

    async def start(self, port: int | None = None) -> RunningServer:
        """Start it (on ``port`` instead of its own, if given)."""
        assert self._stack is None
        stack = contextlib.ExitStack()
        context = _run_on_port(
            self._db_url,
            self._data_dir,
            self.clock,
            port or self.port,
            self._tls,
            **self._overrides,
        )
        self.running = await asyncio.to_thread(stack.enter_context, context)
        self._stack = stack
        return self.running

    async def stop(self) -> None:
        """Stop it (idempotent)."""
        stack, self._stack = self._stack, None
        self.running = None
        if stack is not None:
            await asyncio.to_thread(stack.close)
