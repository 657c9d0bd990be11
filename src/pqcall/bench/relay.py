"""Media relay benchmark: datagrams forwarded per second on loopback.

``relay_packets_per_second(seconds)`` starts a :class:`~pqcall.server.relay.MediaRelay`
on 127.0.0.1 (rate limits lifted), allocates one call, and runs two phones in a child
process (so they do not share the relay's interpreter and core) that bind with their
tokens and then blast 200-byte datagrams at the relay from both sides as fast as they
can. The figure is the relay's own forwarded counter over the measured window: what one
relay process (one event loop, one core) forwards when saturated. Datagrams the kernel
drops before the relay reads them are not counted; that is the point of saturation.

``run(quick)`` reports it next to a baseline measured the same way: a bare asyncio
forwarder between two learned addresses with no tokens, table or rate limits, which is
the floor any Python relay on the default event loop pays; and the relay as the separate
``pqcall relay`` process runs it (``stored_relay_packets_per_second``: the same
``MediaRelay`` on a SQLite store, following it; the allocation written by the server's
side and found by the first bind). That one runs in the benchmark's process on its
pinned core, as ``pqcall relay`` would on its own: one event loop, one core.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import cast

from pqcall.bench.report import Figure
from pqcall.server.relay import RECEIVE_BUFFER_BYTES, MediaRelay
from pqcall.transport.relay_wire import (
    ACK_LENGTH,
    ACK_MAGIC,
    ACK_PEER_BOUND,
    CHALLENGE_LENGTH,
    RelayTarget,
)

PACKET_BYTES = 200
SECONDS_FULL = 5.0
SECONDS_QUICK = 1.0
WARMUP_S = 0.3  # blasting runs this long before the window opens
BIND_TIMEOUT_S = 5.0
UNLIMITED = 1e12  # packets or bytes per second: rate limits out of the way
LOOPBACK = "127.0.0.1"


async def relay_packets_per_second(seconds: float) -> float:
    """Datagrams per second one :class:`MediaRelay` forwards on loopback when saturated."""
    async with MediaRelay(
        LOOPBACK, 0, packets_per_s=UNLIMITED, bytes_per_s=UNLIMITED, idle_timeout_s=3600.0
    ) as relay:
        allocation = relay.allocate("bench")
        tokens = (allocation.caller_token.hex(), allocation.callee_token.hex())
        return await _measure(
            relay.address, tokens, lambda: relay.stats().packets_forwarded, seconds
        )


async def stored_relay_packets_per_second(seconds: float) -> float:
    """The same for the relay as ``pqcall relay`` runs it: on a SQLite store, following it
    (the allocation made by a :class:`~pqcall.server.relay_store_remote.StoredRelay`, as
    the server makes it, and found by the phones' first bind)."""
    from pqcall.server.relay_store import RelayStore
    from pqcall.server.relay_store_remote import StoredRelay

    with tempfile.TemporaryDirectory(prefix="pqcall-bench-relay-") as folder:
        store = await RelayStore.open(f"sqlite+aiosqlite:///{folder}/relay.db")
        server = StoredRelay(["udp://127.0.0.1:1"], store)
        await server.start()
        try:
            allocation = server.allocate("bench")
            await server.close()  # writes the row
            relay = MediaRelay(
                LOOPBACK,
                0,
                packets_per_s=UNLIMITED,
                bytes_per_s=UNLIMITED,
                idle_timeout_s=3600.0,
                store=store,
                follow_store=True,
            )
            async with relay:
                tokens = (allocation.caller_token.hex(), allocation.callee_token.hex())
                return await _measure(
                    relay.address, tokens, lambda: relay.stats().packets_forwarded, seconds
                )
        finally:
            await store.close()


async def bare_forwarder_packets_per_second(seconds: float) -> float:
    """The same measurement through a bare asyncio forwarder (the baseline)."""
    loop = asyncio.get_running_loop()
    transport, forwarder = await loop.create_datagram_endpoint(
        _BareForwarder, local_addr=(LOOPBACK, 0)
    )
    # the same receive buffer as the relay's
    transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES
    )
    try:
        address = transport.get_extra_info("sockname")[:2]
        return await _measure(address, ("00" * 16, "01" * 16), lambda: forwarder.forwarded, seconds)
    finally:
        transport.close()


def run(quick: bool = False) -> list[Figure]:
    """The relay figure next to the bare forwarder, for ``python -m pqcall.bench``."""
    seconds = SECONDS_QUICK if quick else SECONDS_FULL
    # the first measurement of a process runs cold (about 3x slower here): a short one first
    asyncio.run(bare_forwarder_packets_per_second(SECONDS_QUICK / 2))
    relay = asyncio.run(relay_packets_per_second(seconds))
    bare = asyncio.run(bare_forwarder_packets_per_second(seconds))
    stored = asyncio.run(stored_relay_packets_per_second(seconds))
    return [
        Figure(
            name=f"relay forwarding, {PACKET_BYTES}-byte datagrams, loopback, one core",
            value=relay,
            unit="packets/s",
            baseline_name="bare asyncio forwarder (no tokens, no limits)",
            baseline=bare,
        ),
        Figure(
            name="the same, relay as `pqcall relay` runs it (SQLite store, following it)",
            value=stored,
            unit="packets/s",
            baseline_name="bare asyncio forwarder (no tokens, no limits)",
            baseline=bare,
        ),
    ]


async def _measure(
    address: tuple[str, int],
    tokens: tuple[str, str],
    forwarded: Callable[[], int],
    seconds: float,
) -> float:
    host, port = address
    # the relay on one core, the phones on another (when there are two)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    our_cpus = set(cpus)
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[0]})
    blaster = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pqcall.bench.relay",
        host,
        str(port),
        *tokens,
        str(WARMUP_S + seconds + 1.0),
        str(cpus[-1] if len(cpus) >= 2 else -1),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert blaster.stdout is not None
        line = await asyncio.wait_for(blaster.stdout.readline(), BIND_TIMEOUT_S)
        if line.strip() != b"bound":
            raise RuntimeError(f"relay benchmark phones did not bind: {line!r}")
        await asyncio.sleep(WARMUP_S)
        loop = asyncio.get_running_loop()
        start_count, start = forwarded(), loop.time()
        await asyncio.sleep(seconds)
        end_count, end = forwarded(), loop.time()
        return (end_count - start_count) / (end - start)
    finally:
        with contextlib.suppress(ProcessLookupError):
            blaster.kill()
        await blaster.wait()
        if len(cpus) >= 2:
            os.sched_setaffinity(0, our_cpus)


class _BareForwarder(asyncio.DatagramProtocol):
    """Forwards between the first two addresses it hears from; acks their first datagram."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: list[tuple[str | int, ...]] = []
        self.forwarded = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.transport is not None
        if addr not in self.peers:
            if len(self.peers) == 2:
                return
            self.peers.append(addr)
            self.transport.sendto(ACK_MAGIC + bytes([ACK_PEER_BOUND]), addr)
            return
        if len(self.peers) == 2:
            self.transport.sendto(data, self.peers[1 - self.peers.index(addr)])
            self.forwarded += 1


def _blast(host: str, port: int, tokens: list[bytes], duration_s: float, cpu: int) -> None:
    """The child process: bind both phones, say "bound", then send until the time is up."""
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    relay = (host, port)
    phones = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in tokens]
    for phone in phones:
        phone.bind((LOOPBACK, 0))
        phone.settimeout(0.2)
    # bind the caller, then the callee, until the callee's ack says both are bound (the
    # bare forwarder acks the first datagram; the relay challenges first, then acks)
    deadline = time.monotonic() + BIND_TIMEOUT_S
    for phone, token in zip(phones, tokens, strict=True):
        target = RelayTarget(relay, token)
        while True:
            if time.monotonic() > deadline:
                raise SystemExit("no ack from the relay")
            phone.sendto(target.bind, relay)
            with contextlib.suppress(TimeoutError):
                reply = phone.recv(64)
                if len(reply) == CHALLENGE_LENGTH:
                    phone.sendto(target.answer(reply, relay) or b"", relay)
                    reply = phone.recv(64)
                if len(reply) == ACK_LENGTH and reply.startswith(ACK_MAGIC):
                    break
    print("bound", flush=True)
    for phone in phones:
        phone.setblocking(False)
    payload = bytes(PACKET_BYTES)
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        for _ in range(64):
            for phone in phones:
                with contextlib.suppress(BlockingIOError):
                    phone.sendto(payload, relay)
            # keep the phones' receive buffers from filling (not needed for the figure)
            for phone in phones:
                with contextlib.suppress(BlockingIOError):
                    phone.recv(PACKET_BYTES)


if __name__ == "__main__":
    _blast(
        sys.argv[1],
        int(sys.argv[2]),
        [bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])],
        float(sys.argv[5]),
        int(sys.argv[6]),
    )
