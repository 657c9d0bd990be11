"""Fixtures for server tests: databases, a real server on loopback, accounts.

- ``db_url``: every test that uses it runs twice, on a SQLite file and on
  PostgreSQL (marked ``postgres``): the storage tests, and the restart tests
  that ask for it. The PostgreSQL run needs ``PQCALL_TEST_DATABASE_URL`` (e.g.
  ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``) and is otherwise
  skipped with that reason. The session creates a database of its own next to
  the given one (so concurrent runs do not meet) and empties its schema before
  each test.
- ``server``: the real app under uvicorn on 127.0.0.1 and a free port, in a
  background thread, with a :class:`FakeClock`, on a SQLite database of its
  own (on ``db_url`` instead where the test asks for ``db_url``);
  ``start_server`` runs more. Each starts from a copy of one database migrated
  once per session, so a start does not run the migrations again.
- ``shared_server``: one such server for a whole test module, for tests that
  need no isolation; they make accounts with :func:`unique_name`.
- ``account``: a factory that makes an identity and key bundle, registers,
  logs in and returns an authenticated :class:`Phone`.

Timeouts are multiplied by ``PQCALL_TEST_TIMEOUT_SCALE`` (default 1; ``tests/harness.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from pqcall.crypto.filekey import FilePrivateKey, KeyBundle
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.server.app import create_app
from pqcall.server.context import Component
from pqcall.server.settings import ServerSettings
from pqcall.server.storage import Storage
from pqcall.signaling import usernames
from pqcall.signaling.messages import (
    LOGIN_CONTEXT,
    REGISTER_CONTEXT,
    b64decode,
    b64encode,
    login_signed_data,
    register_signed_data,
)
from tests.harness import scaled

PG_ENV = "PQCALL_TEST_DATABASE_URL"
START_TIMEOUT_S = scaled(10.0)
SERVER_NAME = "test.pqcall"
BUNDLE_CREATED = 1_700_000_000


# ---------------------------------------------------------------- databases


async def _pg_execute(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str | None]:
    """A private PostgreSQL database for this test session, or None without the variable."""
    base = os.environ.get(PG_ENV)
    if not base:
        yield None
        return
    name = f"pqcall_test_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_pg_execute(base, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def reset_postgresql(url: str) -> None:
    """Drop every table (and Alembic's version) of the test database."""
    asyncio.run(_pg_execute(url, "DROP SCHEMA IF EXISTS public CASCADE", "CREATE SCHEMA public"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_session_url: str | None) -> str:
    """An empty database, SQLite or PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'pqcall.db'}"
    if pg_session_url is None:
        pytest.skip(f"{PG_ENV} not set")
    reset_postgresql(pg_session_url)
    return pg_session_url


def sqlite_url(path: Path) -> str:
    """The URL of a SQLite database file at ``path``."""
    return f"sqlite+aiosqlite:///{path}"


async def _migrate(url: str) -> None:
    storage = await Storage.open(url)
    await storage.close()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database file migrated to the newest schema, to copy (never to use)."""
    path = tmp_path_factory.mktemp("template") / "pqcall.db"
    asyncio.run(_migrate(sqlite_url(path)))
    return path


def copy_database(template: Path, directory: Path) -> str:
    """A fresh copy of the migrated ``template`` in ``directory``; its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    for part in template.parent.glob(template.name + "*"):  # with -wal/-shm, if any
        shutil.copyfile(part, directory / part.name)
    return sqlite_url(directory / template.name)


# ---------------------------------------------------------------- a running server


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now  # current unix seconds

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RunningServer:
    """A server running in a background thread."""

    base_url: str
    settings: ServerSettings
    clock: FakeClock
    app: Any

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client for this server, with a bearer token if given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=START_TIMEOUT_S)


@contextlib.contextmanager
def run_server(
    settings: ServerSettings,
    clock: FakeClock | None = None,
    components: tuple[Component, ...] = (),
) -> Iterator[RunningServer]:
    """Run the app under uvicorn on 127.0.0.1 until the block ends."""
    clock = clock or FakeClock()
    app = create_app(settings, clock=clock, components=components)
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only then (else Nagle adds ~40 ms)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("server failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start in time")
            time.sleep(0.01)
        yield RunningServer(f"http://127.0.0.1:{port}", settings, clock, app)
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()
        assert not thread.is_alive(), "server did not stop"


def make_settings(db_url: str, data_dir: Path, **overrides: Any) -> ServerSettings:
    """Settings for a test server: loopback, no mDNS, no rate limits, a fixed name."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": data_dir,
        "db_url": db_url,
        "announce_mdns": False,
        "rate_limit_scale": 0.0,  # off: tests send bursts; test_ops.py turns limits on
        "server_name": SERVER_NAME,
    }
    options.update(overrides)
    return ServerSettings(**options)


@pytest.fixture
def server_db_url(request: pytest.FixtureRequest, tmp_path: Path, migrated_sqlite: Path) -> str:
    """The test's database: ``db_url`` (both kinds) if the test asks for it, else a SQLite copy."""
    if "db_url" in request.fixturenames:
        url: str = request.getfixturevalue("db_url")
        return url
    return copy_database(migrated_sqlite, tmp_path / "db")


@pytest.fixture
def start_server(
    server_db_url: str, tmp_path: Path
) -> Callable[..., contextlib.AbstractContextManager[RunningServer]]:
    """``with start_server(**settings_overrides) as server:`` on the test's database."""

    def start(
        clock: FakeClock | None = None, components: tuple[Component, ...] = (), **overrides: Any
    ) -> contextlib.AbstractContextManager[RunningServer]:
        settings = make_settings(server_db_url, tmp_path / "data", **overrides)
        return run_server(settings, clock, components)

    return start


@pytest.fixture
def server(
    start_server: Callable[..., contextlib.AbstractContextManager[RunningServer]],
) -> Iterator[RunningServer]:
    """A running server on an empty database of its own."""
    with start_server() as running:
        yield running


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_sqlite: Path
) -> Iterator[RunningServer]:
    """One running server for the whole module: its tests must use :func:`unique_name`."""
    directory = tmp_path_factory.mktemp("shared-server")
    settings = make_settings(copy_database(migrated_sqlite, directory / "db"), directory / "data")
    with run_server(settings) as running:
        yield running


_NAME_NUMBERS = itertools.count(1)


def unique_name(prefix: str) -> str:
    """A username no other test in this process has: ``prefix-N``."""
    return f"{prefix}-{next(_NAME_NUMBERS)}"


# ---------------------------------------------------------------- accounts


@dataclass
class Phone:
    """A registered, logged-in account and its HTTP client."""

    username: str
    identity: IdentityPrivateKey
    file_key: FilePrivateKey
    client: httpx.Client
    token: str
    server: RunningServer
    extra_clients: list[httpx.Client] = field(default_factory=list)

    def close(self) -> None:
        self.client.close()
        for extra in self.extra_clients:
            extra.close()


def bundle_for(identity: IdentityPrivateKey, username: str, created: int = BUNDLE_CREATED) -> bytes:
    """A fresh key bundle for ``username``, signed by ``identity``."""
    return KeyBundle.create(
        identity, username, FilePrivateKey.generate().public_key(), created
    ).encode()


def registration(
    identity: IdentityPrivateKey,
    username: str,
    *,
    server_name: str = SERVER_NAME,
    bundle: bytes | None = None,
    signed_name: str | None = None,
) -> dict[str, str]:
    """A valid ``POST /register`` body for ``username`` as typed.

    The signature and bundle are over the normalized name, as a client makes
    them; ``signed_name`` signs another name instead.
    """
    normalized = usernames.normalize(username)
    identity_bytes = identity.public_key().encode()
    signature = identity.sign(
        register_signed_data(server_name, signed_name or normalized, identity_bytes),
        context=REGISTER_CONTEXT,
    )
    if bundle is None:
        bundle = bundle_for(identity, normalized)
    return {
        "username": username,
        "identity": b64encode(identity_bytes),
        "key_bundle": b64encode(bundle),
        "signature": b64encode(signature),
    }


def login(
    client: httpx.Client,
    identity: IdentityPrivateKey,
    username: str,
    server_name: str = SERVER_NAME,
) -> httpx.Response:
    """Run challenge and login; the login response."""
    answer = client.post("/auth/challenge", json={"username": username})
    assert answer.status_code == 200, answer.text
    challenge = b64decode(answer.json()["challenge"])
    signature = identity.sign(
        login_signed_data(server_name, usernames.normalize(username), challenge),
        context=LOGIN_CONTEXT,
    )
    return client.post(
        "/auth/login",
        json={
            "username": username,
            "challenge": b64encode(challenge),
            "signature": b64encode(signature),
        },
    )


@pytest.fixture
def account(server: RunningServer) -> Iterator[Callable[[str], Phone]]:
    """``account("alice")``: register and log in a new account on ``server``."""
    phones: list[Phone] = []

    def make(username: str) -> Phone:
        identity = IdentityPrivateKey.generate()
        file_key = FilePrivateKey.generate()
        bundle = KeyBundle.create(identity, username, file_key.public_key(), BUNDLE_CREATED)
        with server.client() as client:
            answer = client.post(
                "/register", json=registration(identity, username, bundle=bundle.encode())
            )
            assert answer.status_code == 201, answer.text
            logged_in = login(client, identity, username)
            assert logged_in.status_code == 200, logged_in.text
        token = logged_in.json()["token"]
        phone = Phone(username, identity, file_key, server.client(token), token, server)
        phones.append(phone)
        return phone

    yield make
    for phone in phones:
        phone.close()
