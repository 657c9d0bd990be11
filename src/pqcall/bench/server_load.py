"""The server benchmark's load: accounts, push WebSockets and call setups, over real HTTP.

Everything a simulated phone does against a :class:`~pqcall.bench.server_process.ServerProcess`:
:func:`create_accounts` registers and logs in accounts (the signing in a process
pool), :class:`Phone` holds one push WebSocket (answering heartbeats,
acknowledging events), and :func:`timed_loops` runs concurrent loops of one step
(:func:`health_round_trip`, :func:`call_setup`) for a fixed time and measures latency, rate
and the server's CPU time. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pqcall.bench.server_process import SERVER_NAME, ServerProcess
from pqcall.crypto.filekey import FilePrivateKey, KeyBundle
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.signaling.messages import (
    EVENT_CALL_ACCEPTED,
    EVENT_CALL_INCOMING,
    LOGIN_CONTEXT,
    REGISTER_CONTEXT,
    b64decode,
    b64encode,
    login_signed_data,
    register_signed_data,
)

# httpx and websockets are imported where they are used: ``pqcall`` loads this module at
# every start, the server's included
if TYPE_CHECKING:
    import httpx
    from websockets.asyncio.client import ClientConnection

T = TypeVar("T")

OFFER_BYTES = 6683  # the real sizes of the handshake messages (docs/protocol.md)
ANSWER_BYTES = 6525
BUNDLE_CREATED = 1_700_000_000

CONNECT_TIMEOUT_S = 30.0  # one WebSocket, until the server says "ready"
EVENT_TIMEOUT_S = 10.0  # one pushed event
PHASE_TIMEOUT_S = 600.0  # registering or connecting every phone
REGISTER_CONCURRENCY = 32  # accounts being registered at once
CONNECT_CONCURRENCY = 64  # WebSockets being opened at once
ACCOUNTS_PER_BATCH = 500  # registered, then logged in, together (challenges live 60 s)


@contextlib.contextmanager
def crypto_pool() -> Iterator[concurrent.futures.Executor]:
    workers = max(1, min(2, os.cpu_count() or 1))
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        yield pool


def _registration(username: str) -> tuple[bytes, dict[str, str]]:
    """(in a worker) A new identity and the signed ``POST /register`` body for it."""
    identity = IdentityPrivateKey.generate()
    identity_bytes = identity.public_key().encode()
    bundle = KeyBundle.create(
        identity, username, FilePrivateKey.generate().public_key(), BUNDLE_CREATED
    )
    signature = identity.sign(
        register_signed_data(SERVER_NAME, username, identity_bytes), context=REGISTER_CONTEXT
    )
    body = {
        "username": username,
        "identity": b64encode(identity_bytes),
        "key_bundle": b64encode(bundle.encode()),
        "signature": b64encode(signature),
    }
    return identity.encode(), body


def _login_signature(identity: bytes, username: str, challenge: bytes) -> bytes:
    """(in a worker) The login signature over ``challenge``."""
    return IdentityPrivateKey.decode(identity).sign(
        login_signed_data(SERVER_NAME, username, challenge), context=LOGIN_CONTEXT
    )


async def create_accounts(
    http: httpx.AsyncClient, count: int, pool: concurrent.futures.Executor
) -> list[tuple[str, str]]:
    """Register and log in ``count`` accounts; their (username, token)."""
    loop = asyncio.get_running_loop()
    prefix = secrets.token_hex(3)
    accounts: list[tuple[str, str]] = []
    for start in range(0, count, ACCOUNTS_PER_BATCH):
        names = [f"b{prefix}-{i}" for i in range(start, min(count, start + ACCOUNTS_PER_BATCH))]
        made = await asyncio.gather(
            *(loop.run_in_executor(pool, _registration, name) for name in names)
        )
        identities = dict(zip(names, (identity for identity, _ in made), strict=True))

        async def register(body: dict[str, str]) -> None:
            answer = await http.post("/register", json=body)
            _expect(answer, 201)

        await _concurrently([register(body) for _, body in made], REGISTER_CONCURRENCY)

        async def log_in(name: str, identity: bytes) -> tuple[str, str]:
            answer = await http.post("/auth/challenge", json={"username": name})
            _expect(answer, 200)
            challenge = b64decode(answer.json()["challenge"])
            signature = await loop.run_in_executor(
                pool, _login_signature, identity, name, challenge
            )
            answer = await http.post(
                "/auth/login",
                json={
                    "username": name,
                    "challenge": b64encode(challenge),
                    "signature": b64encode(signature),
                },
            )
            _expect(answer, 200)
            return name, str(answer.json()["token"])

        accounts += await _concurrently(
            [log_in(name, identities[name]) for name in names], REGISTER_CONCURRENCY
        )
    return accounts


def _expect(answer: httpx.Response, status: int) -> None:
    if answer.status_code != status:
        raise RuntimeError(
            f"{answer.request.method} {answer.request.url.path}: {answer.status_code}"
            f" {answer.text[:200]}"
        )


# ---------------------------------------------------------------- phones


@dataclass(eq=False)
class Phone:
    """One benchmark phone: an account and its push WebSocket."""

    username: str
    token: str
    ws: ClientConnection | None = None
    reader: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: dict[tuple[str, str], asyncio.Future[float]] = field(default_factory=dict)
    early: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def is_open(self) -> bool:
        from websockets.protocol import State

        return (
            self.ws is not None
            and self.ws.state is State.OPEN
            and self.reader is not None
            and not self.reader.done()
        )

    async def connect(self, url: str) -> None:
        """Open the push WebSocket and wait for the server's ``ready``."""
        from websockets.asyncio.client import connect

        self.ws = await connect(
            url, additional_headers=self.headers, open_timeout=CONNECT_TIMEOUT_S, ping_interval=None
        )
        self.reader = asyncio.create_task(self._read())
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await self.ready.wait()

    async def wait_event(self, kind: str, call_id: str) -> float:
        """When (loop time) the event ``kind`` for ``call_id`` arrived."""
        key = (kind, call_id)
        if key in self.early:
            return self.early.pop(key)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[key] = future
        try:
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                return await future
        finally:
            self.waiters.pop(key, None)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader

    async def _read(self) -> None:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                message = json.loads(raw)
                kind = message.get("type")
                seq = message.get("seq")
                if seq is None:
                    if kind == "ready":
                        self.ready.set()
                    elif kind == "ping":
                        await self.ws.send('{"type":"pong"}')
                    continue
                if kind in (EVENT_CALL_INCOMING, EVENT_CALL_ACCEPTED):
                    key = (kind, str(message["payload"].get("call_id")))
                    future = self.waiters.pop(key, None)
                    if future is not None and not future.done():
                        future.set_result(loop.time())
                    else:
                        self.early[key] = loop.time()
                await self.ws.send(json.dumps({"ack": seq}))


async def connect_all(url: str, phones: Sequence[Phone]) -> list[Phone]:
    """Connect every phone (a bounded number at a time); those that got ``ready``."""

    async def attempt(phone: Phone) -> Phone | None:
        try:
            await phone.connect(url)
        except (OSError, TimeoutError, Exception):
            return None
        return phone

    results = await _concurrently([attempt(phone) for phone in phones], CONNECT_CONCURRENCY)
    return [phone for phone in results if phone is not None]


async def close_all(phones: Sequence[Phone]) -> None:
    await _concurrently([phone.close() for phone in phones], CONNECT_CONCURRENCY)


# ---------------------------------------------------------------- timed loops


@dataclass
class Timings:
    """What a set of loops achieved in their window."""

    latencies_s: list[float]
    failures: int
    elapsed_s: float
    server_cpu_s: float
    """CPU time of every server process in the window, summed."""
    client_cpu_s: float = 0.0
    """CPU time of this process (the load generator) in the window."""

    @property
    def rate_per_s(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, percent: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    @property
    def server_cpu_ms_each(self) -> float:
        return self.server_cpu_s / len(self.latencies_s) * 1000 if self.latencies_s else 0.0

    @property
    def per_server_cpu_s(self) -> float:
        """Steps done per second of server CPU (holds on a machine with more cores)."""
        return len(self.latencies_s) / self.server_cpu_s if self.server_cpu_s > 0 else 0.0

    @property
    def server_cores(self) -> float:
        """Cores the servers used on average in the window."""
        return self.server_cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def client_cores(self) -> float:
        """Cores the load generator used on average in the window."""
        return self.client_cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def timed_loops(
    servers: ServerProcess | Sequence[ServerProcess],
    loops: int,
    seconds: float,
    step: Callable[[int], Awaitable[float]],
) -> Timings:
    """Run ``loops`` loops of ``step(loop_index)`` (returns its latency) for ``seconds``.

    The CPU time of ``servers`` (summed) and of this process is measured over the window.
    """
    import httpx

    servers = [servers] if isinstance(servers, ServerProcess) else list(servers)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failures = 0

    def server_cpu() -> float:
        return sum(server.cpu_seconds() for server in servers)

    cpu_start, client_start, start = server_cpu(), time.process_time(), loop.time()
    deadline = start + seconds

    async def one(index: int) -> None:
        nonlocal failures
        while loop.time() < deadline:
            try:
                latencies.append(await step(index))
            except (httpx.HTTPError, TimeoutError, RuntimeError, KeyError):
                failures += 1

    await asyncio.wait_for(
        asyncio.gather(*(one(i) for i in range(loops))), seconds + 2 * EVENT_TIMEOUT_S
    )
    elapsed = loop.time() - start
    return Timings(
        latencies,
        failures,
        elapsed,
        server_cpu() - cpu_start,
        time.process_time() - client_start,
    )


async def health_round_trip(http: httpx.AsyncClient) -> float:
    start = time.perf_counter()
    answer = await http.get("/health")
    _expect(answer, 200)
    return time.perf_counter() - start


_OFFER = b64encode(secrets.token_bytes(OFFER_BYTES))
_ANSWER = b64encode(secrets.token_bytes(ANSWER_BYTES))


async def call_setup(
    http: httpx.AsyncClient,
    caller: Phone,
    callee: Phone,
    hangups: list[asyncio.Task[None]],
    *,
    callee_http: httpx.AsyncClient | None = None,
) -> float:
    """One call setup; its latency (initiate sent → ``call.accepted`` at the caller).

    The caller's requests go through ``http``, the callee's through ``callee_http``
    (default: the same; another node's client when they are on two nodes).
    """
    loop = asyncio.get_running_loop()
    call_id = secrets.token_hex(16)
    start = loop.time()
    answer = await http.post(
        "/call/initiate",
        json={"call_id": call_id, "callee": callee.username, "offer": _OFFER},
        headers=caller.headers,
    )
    _expect(answer, 201)
    await callee.wait_event(EVENT_CALL_INCOMING, call_id)
    answer = await (callee_http or http).post(
        "/call/accept", json={"call_id": call_id, "answer": _ANSWER}, headers=callee.headers
    )
    _expect(answer, 200)
    accepted = await caller.wait_event(EVENT_CALL_ACCEPTED, call_id)
    hangups.append(asyncio.create_task(_hang_up(http, caller, call_id)))
    return accepted - start


async def _hang_up(http: httpx.AsyncClient, caller: Phone, call_id: str) -> None:
    import httpx

    with contextlib.suppress(httpx.HTTPError):
        await http.post("/call/hangup", json={"call_id": call_id}, headers=caller.headers)


# ---------------------------------------------------------------- helpers


async def _concurrently(work: Sequence[Awaitable[T]], limit: int) -> list[T]:
    """Await every item, at most ``limit`` at a time, keeping the order."""
    semaphore = asyncio.Semaphore(limit)

    async def bounded(item: Awaitable[T]) -> T:
        async with semaphore:
            return await item

    return list(await asyncio.gather(*(bounded(item) for item in work)))


async def bounded(work: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(work, PHASE_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"{what} took longer than {PHASE_TIMEOUT_S:g} s") from None
