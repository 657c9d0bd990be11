"""Signaling server load benchmark: ``pqcall bench server [--quick] [--db URL]``.

Starts a real ``pqcall server`` process on 127.0.0.1 (a free port, a temporary data
directory, mDNS off, request rate limits raised 1000-fold so one benchmark client is
not refused, though every request still passes through the limiter) and drives it
from this process over real HTTP and WebSocket connections. For each database
(SQLite on a temporary file always; PostgreSQL when ``--db`` or
``PQCALL_TEST_DATABASE_URL`` names one, in a scratch database created next to it and
dropped afterwards) it measures:

- **connected phones**: registers and logs in N accounts, opens N push WebSockets
  (``GET /events``; a phone counts once the server has said ``ready``), keeps them
  for a while answering heartbeats and acknowledging events, then counts how many are
  still open. Baseline: N, the number attempted. Also the server process's resident
  memory with them connected, against the same process just before they connected.
- **call setups**: M caller/callee pairs among the connected phones, each running
  setups back to back for a fixed time: ``POST /call/initiate`` → the callee's
  WebSocket receives ``call.incoming`` → ``POST /call/accept`` → the caller's
  WebSocket receives ``call.accepted``; latency is initiate sent to accepted
  received. Each call is then hung up in the background (the server does that work
  too, but the pair does not wait for it). Handshake messages are random bytes of
  the real sizes (the server carries them without reading them). Baseline: M loops
  of ``GET /health`` (an HTTP round trip and a database ping) on the same server
  and connections, right before. Also the server process's CPU time per setup
  against per ``/health``.
- **relay forwarding** (once; it does not touch the database):
  :func:`pqcall.bench.relay.run`, the media relay against a bare asyncio forwarder.

Every phase is bounded in count and time; all traffic stays on 127.0.0.1. The
client runs in this one process (crypto for registration and login in a small
process pool), so on a 2-core machine the client and the server share the cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pqcall.bench import relay
from pqcall.bench.report import Figure
from pqcall.crypto.filekey import FilePrivateKey, KeyBundle
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import PqcallError
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

PG_ENV = "PQCALL_TEST_DATABASE_URL"
HOST = "127.0.0.1"
SERVER_NAME = "bench.pqcall"
RATE_LIMIT_SCALE = 1000.0  # the server's request limits, raised for one busy client
OFFER_BYTES = 6683  # the real sizes of the handshake messages (docs/protocol.md)
ANSWER_BYTES = 6525
BUNDLE_CREATED = 1_700_000_000

START_TIMEOUT_S = 60.0  # server start, migrations included
STOP_TIMEOUT_S = 30.0  # server stop (it closes every WebSocket first)
REQUEST_TIMEOUT_S = 30.0  # one HTTP request
CONNECT_TIMEOUT_S = 30.0  # one WebSocket, until the server says "ready"
EVENT_TIMEOUT_S = 10.0  # one pushed event
PHASE_TIMEOUT_S = 600.0  # registering or connecting every phone
REGISTER_CONCURRENCY = 32  # accounts being registered at once
CONNECT_CONCURRENCY = 64  # WebSockets being opened at once
ACCOUNTS_PER_BATCH = 500  # registered, then logged in, together (challenges live 60 s)


@dataclass(frozen=True, slots=True)
class Scale:
    """How big one run is."""

    phones: int
    """Accounts registered and push WebSockets opened."""
    pairs: int
    """Concurrent caller/callee pairs in the call-setup run (2 * pairs <= phones)."""
    setup_s: float
    """How long the call-setup run (and its /health baseline) lasts."""
    hold_s: float
    """How long the phones stay connected before they are counted."""


FULL = Scale(phones=5000, pairs=25, setup_s=20.0, hold_s=30.0)
QUICK = Scale(phones=12, pairs=3, setup_s=1.0, hold_s=0.5)


def run(quick: bool = False, db_url: str | None = None) -> list[Figure]:
    """Every figure, for ``pqcall bench server``.

    Args:
        quick: a small run (seconds), for tests.
        db_url: a PostgreSQL URL to run against as well (default:
            ``$PQCALL_TEST_DATABASE_URL`` if set); a scratch database is created next
            to it, so nothing in the named database is touched.
    """
    scale = QUICK if quick else FULL
    postgres = db_url or os.environ.get(PG_ENV) or None
    if postgres is not None and not postgres.startswith("postgresql+asyncpg://"):
        raise PqcallError("--db takes a postgresql+asyncpg:// URL (SQLite always runs)")
    figures: list[Figure] = []
    with _crypto_pool() as pool:
        figures += asyncio.run(_bench_database("SQLite", None, scale, pool))
        if postgres is not None:
            figures += asyncio.run(_bench_database("PostgreSQL", postgres, scale, pool))
    _say("relay forwarding")
    figures += relay.run(quick)
    return figures


async def _bench_database(
    label: str, postgres: str | None, scale: Scale, pool: concurrent.futures.Executor
) -> list[Figure]:
    import httpx

    async with contextlib.AsyncExitStack() as stack:
        db_url = None if postgres is None else await stack.enter_async_context(_scratch(postgres))
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pqcall-bench-")))
        server = stack.enter_context(_ServerProcess.start(data_dir, db_url))
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=server.base_url,
                timeout=REQUEST_TIMEOUT_S,
                limits=httpx.Limits(max_connections=4 * REGISTER_CONCURRENCY + 4 * scale.pairs),
            )
        )
        _say(f"{label}: registering and logging in {scale.phones} accounts")
        accounts = await _bounded(_create_accounts(http, scale.phones, pool), "registering")
        phones = [_Phone(username, token) for username, token in accounts]
        stack.push_async_callback(_close_all, phones)

        _say(f"{label}: opening {len(phones)} push WebSockets")
        rss_before = server.rss_bytes()
        connected = await _bounded(_connect_all(server.ws_url, phones), "connecting")
        await asyncio.sleep(scale.hold_s)
        still_open = [phone for phone in connected if phone.is_open]
        rss_after = server.rss_bytes()
        _say(f"{label}: {len(still_open)} of {len(phones)} phones connected")

        pairs = [
            (still_open[2 * i], still_open[2 * i + 1])
            for i in range(min(scale.pairs, len(still_open) // 2))
        ]
        if not pairs:
            raise RuntimeError(f"{label}: no phones stayed connected; see the server log above")
        _say(f"{label}: /health baseline, {len(pairs)} concurrent clients")
        health = await _timed_loops(server, len(pairs), scale.setup_s, lambda _: _health(http))
        _say(f"{label}: call setups, {len(pairs)} concurrent pairs")
        hangups: list[asyncio.Task[None]] = []
        setups = await _timed_loops(
            server,
            len(pairs),
            scale.setup_s,
            lambda index: _call_setup(http, *pairs[index], hangups),
        )
        await asyncio.gather(*hangups, return_exceptions=True)
        if setups.failures:
            _say(f"{label}: {setups.failures} call setups failed or timed out")

    n = len(phones)
    return [
        Figure(
            name=f"{label}: push WebSockets open after {scale.hold_s:g} s",
            value=len(still_open),
            unit="phones",
            baseline_name="phones that tried to connect",
            baseline=n,
        ),
        Figure(
            name=f"{label}: server memory (RSS) with the phones connected",
            value=rss_after / 2**20,
            unit="MiB",
            baseline_name="the same server before they connected",
            baseline=rss_before / 2**20,
        ),
        Figure(
            name=f"{label}: call setups per second, {len(pairs)} concurrent pairs",
            value=setups.rate_per_s,
            unit="/s",
            baseline_name=f"GET /health round trips per second, {len(pairs)} concurrent",
            baseline=health.rate_per_s,
        ),
        Figure(
            name=f"{label}: call setup latency p50",
            value=setups.percentile_ms(50),
            unit="ms",
            baseline_name="GET /health round trip p50",
            baseline=health.percentile_ms(50),
        ),
        Figure(
            name=f"{label}: call setup latency p99",
            value=setups.percentile_ms(99),
            unit="ms",
            baseline_name="GET /health round trip p99",
            baseline=health.percentile_ms(99),
        ),
        Figure(
            name=f"{label}: server CPU per call setup (server process only)",
            value=setups.server_cpu_ms_each,
            unit="ms",
            baseline_name="server CPU per GET /health",
            baseline=health.server_cpu_ms_each,
        ),
    ]


# ---------------------------------------------------------------- the server process


@dataclass
class _ServerProcess:
    """A ``pqcall server`` child process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/events"

    @classmethod
    @contextlib.contextmanager
    def start(cls, data_dir: Path, db_url: str | None) -> Iterator[_ServerProcess]:
        port, relay_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
        command = [
            *(sys.executable, "-m", "pqcall", "server", "--host", HOST, "--port", str(port)),
            *("--relay-port", str(relay_port), "--data-dir", str(data_dir), "--no-mdns"),
            *("--name", SERVER_NAME, "--log-level", "warning"),
            *("--rate-limit-scale", str(RATE_LIMIT_SCALE)),
        ]
        if db_url is not None:
            command += ["--db", db_url]
        log_path = data_dir / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        server = cls(process, port, log_path)
        try:
            server._wait_until_up()
            yield server
        finally:
            server._stop()

    def _wait_until_up(self) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at start:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not start in {START_TIMEOUT_S:g} s")

    def _stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        errors = [line for line in self.log_tail(200).splitlines() if "Traceback" in line]
        if errors:
            _say(f"the server logged {len(errors)} tracebacks; its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc; 0 elsewhere)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc; 0 elsewhere)."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def _scratch(base_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on the server of ``base_url``; dropped afterwards."""
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"pqcall_bench_{os.getpid()}_{secrets.token_hex(4)}"

    async def execute(statement: str) -> None:
        engine = create_async_engine(base_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    await execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- accounts


@contextlib.contextmanager
def _crypto_pool() -> Iterator[concurrent.futures.Executor]:
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


async def _create_accounts(
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
class _Phone:
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


async def _connect_all(url: str, phones: Sequence[_Phone]) -> list[_Phone]:
    """Connect every phone (a bounded number at a time); those that got ``ready``."""

    async def attempt(phone: _Phone) -> _Phone | None:
        try:
            await phone.connect(url)
        except (OSError, TimeoutError, Exception):
            return None
        return phone

    results = await _concurrently([attempt(phone) for phone in phones], CONNECT_CONCURRENCY)
    return [phone for phone in results if phone is not None]


async def _close_all(phones: Sequence[_Phone]) -> None:
    await _concurrently([phone.close() for phone in phones], CONNECT_CONCURRENCY)


# ---------------------------------------------------------------- timed loops


@dataclass
class _Timings:
    """What a set of loops achieved in their window."""

    latencies_s: list[float]
    failures: int
    elapsed_s: float
    server_cpu_s: float

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


async def _timed_loops(
    server: _ServerProcess,
    loops: int,
    seconds: float,
    step: Callable[[int], Awaitable[float]],
) -> _Timings:
    """Run ``loops`` loops of ``step(loop_index)`` (returns its latency) for ``seconds``."""
    import httpx

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failures = 0
    cpu_start, start = server.cpu_seconds(), loop.time()
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
    return _Timings(latencies, failures, elapsed, server.cpu_seconds() - cpu_start)


async def _health(http: httpx.AsyncClient) -> float:
    start = time.perf_counter()
    answer = await http.get("/health")
    _expect(answer, 200)
    return time.perf_counter() - start


_OFFER = b64encode(secrets.token_bytes(OFFER_BYTES))
_ANSWER = b64encode(secrets.token_bytes(ANSWER_BYTES))


async def _call_setup(
    http: httpx.AsyncClient, caller: _Phone, callee: _Phone, hangups: list[asyncio.Task[None]]
) -> float:
    """One call setup; its latency (initiate sent → ``call.accepted`` at the caller)."""
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
    answer = await http.post(
        "/call/accept", json={"call_id": call_id, "answer": _ANSWER}, headers=callee.headers
    )
    _expect(answer, 200)
    accepted = await caller.wait_event(EVENT_CALL_ACCEPTED, call_id)
    hangups.append(asyncio.create_task(_hang_up(http, caller, call_id)))
    return accepted - start


async def _hang_up(http: httpx.AsyncClient, caller: _Phone, call_id: str) -> None:
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


async def _bounded(work: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(work, PHASE_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"{what} took longer than {PHASE_TIMEOUT_S:g} s") from None


def _say(message: str) -> None:
    print(f"pqcall bench server: {message}", file=sys.stderr, flush=True)
