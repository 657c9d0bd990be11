"""Signaling server load benchmark: ``pqcall bench server [--quick] [--db URL] [--processes N]``.

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
- **the load generator's CPU** (this process) during the call setups, next to the
  servers', and **call setups per server CPU-second** next to ``GET /health`` per
  server CPU-second: on a machine whose cores the generator shares, the figure that
  holds on a bigger one.
- **several nodes** (``--processes N``, PostgreSQL only; then SQLite is not run): the
  phases above on one server process, then on N server nodes on one scratch
  database and a Redis bus (``--bus``); phone ``i`` talks to node ``i % N`` only and
  the two phones of a pair are neighbours, so every setup crosses nodes both ways.
- **relay forwarding** (once; it does not touch the database):
  :func:`pqcall.bench.relay.run`, the media relay against a bare asyncio forwarder.

Every phase is bounded in count and time; all traffic stays on 127.0.0.1. The
client runs in this one process (crypto for registration and login in a small
process pool), so on a 2-core machine the client and the server share the cores.
The server process is :mod:`pqcall.bench.server_process`'s, the simulated phones
and timed loops :mod:`pqcall.bench.server_load`'s; this module runs the phases
and reports the figures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pqcall.bench import relay
from pqcall.bench.report import Figure
from pqcall.bench.server_load import (
    REGISTER_CONCURRENCY,
    Phone,
    Timings,
    bounded,
    call_setup,
    close_all,
    connect_all,
    create_accounts,
    crypto_pool,
    health_round_trip,
    timed_loops,
)
from pqcall.bench.server_process import ServerProcess, say, scratch_database
from pqcall.exceptions import PqcallError

PG_ENV = "PQCALL_TEST_DATABASE_URL"
REDIS_ENV = "PQCALL_TEST_REDIS_URL"
DEFAULT_BUS = "redis://127.0.0.1:6379/0"
REQUEST_TIMEOUT_S = 30.0  # one HTTP request
# idle connections are dropped well before the server's keep-alive timeout (5 s): a
# connection the server closed while idle failed the next request sent on it (ReadError)
KEEPALIVE_S = 2.0


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


def run(
    quick: bool = False,
    db_url: str | None = None,
    processes: int = 1,
    bus_url: str | None = None,
) -> list[Figure]:
    """Every figure, for ``pqcall bench server``.

    Args:
        quick: a small run (seconds), for tests.
        db_url: a PostgreSQL URL to run against as well (default:
            ``$PQCALL_TEST_DATABASE_URL`` if set); a scratch database is created next
            to it, so nothing in the named database is touched.
        processes: above 1, PostgreSQL with one server process and then with
            ``processes`` server nodes on one scratch database and the ``bus_url``
            Redis bus, instead of SQLite and PostgreSQL (needs PostgreSQL).
        bus_url: the Redis bus of the multi-node run (default:
            ``$PQCALL_TEST_REDIS_URL``, else ``redis://127.0.0.1:6379/0``).

    Raises:
        PqcallError: a URL of the wrong kind, or ``processes`` above 1 without PostgreSQL.
    """
    scale = QUICK if quick else FULL
    postgres = db_url or os.environ.get(PG_ENV) or None
    if postgres is not None and not postgres.startswith("postgresql+asyncpg://"):
        raise PqcallError("--db takes a postgresql+asyncpg:// URL (SQLite always runs)")
    if processes < 1:
        raise PqcallError("--processes must be 1 or more")
    bus = bus_url or os.environ.get(REDIS_ENV) or DEFAULT_BUS
    if processes > 1:
        if postgres is None:
            raise PqcallError(
                "--processes above 1 needs PostgreSQL (--db or $PQCALL_TEST_DATABASE_URL)"
            )
        if not bus.startswith(("redis://", "rediss://")):
            raise PqcallError("--bus takes a redis:// or rediss:// URL")
    figures: list[Figure] = []
    with crypto_pool() as pool:
        if processes == 1:  # SQLite is one process per file: not part of a nodes comparison
            figures += asyncio.run(_bench_database("SQLite", None, scale, pool))
        if postgres is not None:
            figures += asyncio.run(_bench_database("PostgreSQL", postgres, scale, pool))
        if processes > 1 and postgres is not None:
            label = f"PostgreSQL, {processes} nodes on a Redis bus"
            figures += asyncio.run(
                _bench_database(label, postgres, scale, pool, nodes=processes, bus=bus)
            )
    say("relay forwarding")
    figures += relay.run(quick)
    return figures


async def _bench_database(
    label: str,
    postgres: str | None,
    scale: Scale,
    pool: concurrent.futures.Executor,
    *,
    nodes: int = 1,
    bus: str | None = None,
) -> list[Figure]:
    """One database's figures; with ``nodes`` > 1, that many servers on it and ``bus``.

    Phone ``i`` talks to node ``i % nodes`` only (its HTTP requests and its push
    WebSocket); the caller and callee of a pair are neighbours, so with several
    nodes every call setup crosses nodes both ways (pushed over the bus).
    """
    import httpx

    async with contextlib.AsyncExitStack() as stack:
        db_url = (
            None
            if postgres is None
            else await stack.enter_async_context(scratch_database(postgres))
        )
        servers: list[ServerProcess] = []
        # every phone's socket, the HTTP clients' pools, and room to spare
        max_connections = scale.phones + 8 * (REGISTER_CONCURRENCY + scale.pairs) + 1000
        https: list[httpx.AsyncClient] = []
        for _ in range(nodes):
            data_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="pqcall-bench-"))
            )
            servers.append(
                stack.enter_context(
                    ServerProcess.start(data_dir, db_url, bus, max_connections=max_connections)
                )
            )
            https.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=servers[-1].base_url,
                        timeout=REQUEST_TIMEOUT_S,
                        limits=httpx.Limits(
                            max_connections=4 * REGISTER_CONCURRENCY + 4 * scale.pairs,
                            keepalive_expiry=KEEPALIVE_S,
                        ),
                    )
                )
            )
        say(f"{label}: registering and logging in {scale.phones} accounts")
        accounts = await bounded(create_accounts(https[0], scale.phones, pool), "registering")
        phones = [Phone(username, token) for username, token in accounts]
        home = {id(phone): index % nodes for index, phone in enumerate(phones)}
        stack.push_async_callback(close_all, phones)

        say(f"{label}: opening {len(phones)} push WebSockets")
        rss_before = sum(server.rss_bytes() for server in servers)
        connected: list[Phone] = []
        for index, server in enumerate(servers):
            mine = [phone for phone in phones if home[id(phone)] == index]
            connected += await bounded(connect_all(server.ws_url, mine), "connecting")
        await asyncio.sleep(scale.hold_s)
        still_open = [phone for phone in phones if phone in connected and phone.is_open]
        rss_after = sum(server.rss_bytes() for server in servers)
        say(f"{label}: {len(still_open)} of {len(phones)} phones connected")

        pairs = [
            (still_open[2 * i], still_open[2 * i + 1])
            for i in range(min(scale.pairs, len(still_open) // 2))
        ]
        if not pairs:
            raise RuntimeError(f"{label}: no phones stayed connected; see the server log above")
        if nodes > 1:
            crossing = sum(home[id(a)] != home[id(b)] for a, b in pairs)
            say(f"{label}: {crossing} of {len(pairs)} pairs have caller and callee on two nodes")

        def http_of(phone: Phone) -> httpx.AsyncClient:
            return https[home[id(phone)]]

        say(f"{label}: /health baseline, {len(pairs)} concurrent clients")
        health = await timed_loops(
            servers,
            len(pairs),
            scale.setup_s,
            lambda index: health_round_trip(https[index % nodes]),
        )
        say(f"{label}: call setups, {len(pairs)} concurrent pairs")
        hangups: list[asyncio.Task[None]] = []
        setups = await timed_loops(
            servers,
            len(pairs),
            scale.setup_s,
            lambda index: call_setup(
                http_of(pairs[index][0]),
                *pairs[index],
                hangups,
                callee_http=http_of(pairs[index][1]),
            ),
        )
        await asyncio.gather(*hangups, return_exceptions=True)
        if setups.failures:
            say(f"{label}: {setups.failures} call setups failed or timed out")

    return _figures(
        label, scale, len(phones), len(still_open), (rss_before, rss_after), health, setups
    )


def _figures(
    label: str,
    scale: Scale,
    phones: int,
    still_open: int,
    rss: tuple[int, int],
    health: Timings,
    setups: Timings,
) -> list[Figure]:
    pairs = scale.pairs
    rss_before, rss_after = rss
    return [
        Figure(
            name=f"{label}: push WebSockets open after {scale.hold_s:g} s",
            value=still_open,
            unit="phones",
            baseline_name="phones that tried to connect",
            baseline=phones,
        ),
        Figure(
            name=f"{label}: server memory (RSS) with the phones connected",
            value=rss_after / 2**20,
            unit="MiB",
            baseline_name="the same server before they connected",
            baseline=rss_before / 2**20,
        ),
        Figure(
            name=f"{label}: call setups per second, {pairs} concurrent pairs",
            value=setups.rate_per_s,
            unit="/s",
            baseline_name=f"GET /health round trips per second, {pairs} concurrent",
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
        Figure(
            name=f"{label}: call setups per server CPU-second",
            value=setups.per_server_cpu_s,
            unit="/CPU-s",
            baseline_name="GET /health per server CPU-second",
            baseline=health.per_server_cpu_s,
        ),
        Figure(
            name=f"{label}: load generator CPU during the call setups",
            value=setups.client_cores,
            unit="cores",
            baseline_name="the server processes' CPU in the same window",
            baseline=setups.server_cores,
        ),
    ]
