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
REQUEST_TIMEOUT_S = 30.0  # one HTTP request


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
    with crypto_pool() as pool:
        figures += asyncio.run(_bench_database("SQLite", None, scale, pool))
        if postgres is not None:
            figures += asyncio.run(_bench_database("PostgreSQL", postgres, scale, pool))
    say("relay forwarding")
    figures += relay.run(quick)
    return figures


async def _bench_database(
    label: str, postgres: str | None, scale: Scale, pool: concurrent.futures.Executor
) -> list[Figure]:
    import httpx

    async with contextlib.AsyncExitStack() as stack:
        db_url = (
            None
            if postgres is None
            else await stack.enter_async_context(scratch_database(postgres))
        )
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pqcall-bench-")))
        server = stack.enter_context(ServerProcess.start(data_dir, db_url))
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=server.base_url,
                timeout=REQUEST_TIMEOUT_S,
                limits=httpx.Limits(max_connections=4 * REGISTER_CONCURRENCY + 4 * scale.pairs),
            )
        )
        say(f"{label}: registering and logging in {scale.phones} accounts")
        accounts = await bounded(create_accounts(http, scale.phones, pool), "registering")
        phones = [Phone(username, token) for username, token in accounts]
        stack.push_async_callback(close_all, phones)

        say(f"{label}: opening {len(phones)} push WebSockets")
        rss_before = server.rss_bytes()
        connected = await bounded(connect_all(server.ws_url, phones), "connecting")
        await asyncio.sleep(scale.hold_s)
        still_open = [phone for phone in connected if phone.is_open]
        rss_after = server.rss_bytes()
        say(f"{label}: {len(still_open)} of {len(phones)} phones connected")

        pairs = [
            (still_open[2 * i], still_open[2 * i + 1])
            for i in range(min(scale.pairs, len(still_open) // 2))
        ]
        if not pairs:
            raise RuntimeError(f"{label}: no phones stayed connected; see the server log above")
        say(f"{label}: /health baseline, {len(pairs)} concurrent clients")
        health = await timed_loops(
            server, len(pairs), scale.setup_s, lambda _: health_round_trip(http)
        )
        say(f"{label}: call setups, {len(pairs)} concurrent pairs")
        hangups: list[asyncio.Task[None]] = []
        setups = await timed_loops(
            server,
            len(pairs),
            scale.setup_s,
            lambda index: call_setup(http, *pairs[index], hangups),
        )
        await asyncio.gather(*hangups, return_exceptions=True)
        if setups.failures:
            say(f"{label}: {setups.failures} call setups failed or timed out")

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
