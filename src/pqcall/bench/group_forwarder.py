"""Group forwarder capacity: packets forwarded per second and per core, against a bare one.

:func:`forwarder_capacity` runs the server's :class:`~pqcall.server.group_relay.GroupRelay`
(its :class:`~pqcall.server.group_forward.GroupForwardTable`, rate limits lifted)
in this process, on one pinned core when there are two, with one group call of
``members`` tokens. A child process (``python -m pqcall.bench.group_forwarder``,
on the other core) binds one UDP socket per member with its token, waits for
each ack, then sends 200-byte datagrams from every member as fast as it can.
Each datagram the forwarder accepts goes out ``members - 1`` times.

:func:`bare_capacity` measures the same with the baseline: a bare asyncio
forwarder that learns the first ``members`` addresses (acking each first
datagram, so the same child binds to it) and sends every later datagram to the
others, with no tokens, table, rate limits or counters by kind: the floor any
Python forwarder on the default event loop pays for the same fan-out.

Figures, for each: datagrams sent out per second of wall clock while saturated
(the kernel drops what the forwarder cannot read; that is saturation), and the
same per CPU second the forwarder's process used in the window ("per core":
on a loaded machine the process gets less than a core, and this figure divides
that out). :func:`run` reports the group forwarder's figures against the bare
forwarder's, measured in the same run, and how many calls of 4 and of 8 members
(50 frames a second each) one core could carry at that rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pqcall.bench.report import Figure
from pqcall.server.group_forward import GroupForwardTable
from pqcall.server.group_relay import RECEIVE_BUFFER_BYTES, GroupRelay
from pqcall.transport.group_wire import ACK_LENGTH, encode_ack, encode_bind, parse_ack

PACKET_BYTES = 200  # about one 20 ms Opus frame at 40 kbit/s with SFrame's overhead
MEMBERS = 4  # one call of four: each datagram goes to three
SECONDS_FULL = 5.0
SECONDS_QUICK = 1.5
WARMUP_S = 0.5
BIND_TIMEOUT_S = 10.0
UNLIMITED = 1e12
LOOPBACK = "127.0.0.1"
FRAMES_PER_S = 50


@dataclass(frozen=True, slots=True)
class Capacity:
    """One saturated forwarder's figures over the window."""

    forwarded_per_s: float
    """Datagrams sent out per second of wall clock."""
    cpu_share: float
    """CPU seconds the forwarder's process used per wall second (1.0: a whole core)."""

    @property
    def per_core(self) -> float:
        """Datagrams sent out per CPU second of the forwarder."""
        return self.forwarded_per_s / self.cpu_share if self.cpu_share else 0.0


async def forwarder_capacity(seconds: float, members: int = MEMBERS) -> Capacity:
    """The group forwarder, saturated by one call of ``members``."""
    table = GroupForwardTable(packets_per_s=UNLIMITED, bytes_per_s=UNLIMITED)
    tokens = [secrets.token_bytes(16) for _ in range(members)]
    for token in tokens:
        table.add("bench", token)
    relay = GroupRelay(LOOPBACK, 0, table=table)
    await relay.start()
    try:
        return await _measure(
            relay.address, tokens, lambda: relay.stats().packets_forwarded, seconds
        )
    finally:
        await relay.close()


async def bare_capacity(seconds: float, members: int = MEMBERS) -> Capacity:
    """The bare forwarder (the baseline), saturated the same way."""
    loop = asyncio.get_running_loop()
    transport, forwarder = await loop.create_datagram_endpoint(
        lambda: _BareFanOut(members), local_addr=(LOOPBACK, 0)
    )
    transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES
    )
    try:
        address = transport.get_extra_info("sockname")[:2]
        tokens = [secrets.token_bytes(16) for _ in range(members)]
        return await _measure(address, tokens, lambda: forwarder.forwarded, seconds)
    finally:
        transport.close()


def run(quick: bool = False) -> list[Figure]:
    """The group forwarder against the bare forwarder, one run each after a warm-up."""
    seconds = SECONDS_QUICK if quick else SECONDS_FULL
    asyncio.run(bare_capacity(SECONDS_QUICK / 2))  # the first measurement runs cold
    group = asyncio.run(forwarder_capacity(seconds))
    bare = asyncio.run(bare_capacity(seconds))
    name = f"{PACKET_BYTES}-byte datagrams, a call of {MEMBERS}, loopback"
    baseline = "bare asyncio fan-out (no tokens, table or limits)"
    figures = [
        Figure(f"group forwarder: sent out, {name}", group.forwarded_per_s, "packets/s",
               baseline, bare.forwarded_per_s),
        Figure(f"group forwarder: sent out per CPU core, {name}", group.per_core,
               "packets/s/core", baseline, bare.per_core),
        Figure("group forwarder: CPU share it got (load)", group.cpu_share, "cores",
               "the bare forwarder's", bare.cpu_share),
    ]  # fmt: skip
    for size in (4, 8):
        need = size * (size - 1) * FRAMES_PER_S
        figures.append(
            Figure(f"calls of {size} one core carries (group forwarder)", group.per_core / need,
                   "calls", "the same for the bare forwarder", bare.per_core / need)
        )  # fmt: skip
    return figures


async def _measure(
    address: tuple[str, int],
    tokens: list[bytes],
    forwarded: Callable[[], int],
    seconds: float,
) -> Capacity:
    host, port = address
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    our_cpus = set(cpus)
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[0]})
    blaster = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pqcall.bench.group_forwarder",
        host,
        str(port),
        ",".join(token.hex() for token in tokens),
        str(WARMUP_S + seconds + 2.0),
        str(cpus[-1] if len(cpus) >= 2 else -1),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert blaster.stdout is not None
        line = await asyncio.wait_for(blaster.stdout.readline(), BIND_TIMEOUT_S + 20.0)
        if line.strip() != b"bound":
            raise RuntimeError(f"group forwarder benchmark members did not bind: {line!r}")
        await asyncio.sleep(WARMUP_S)
        loop = asyncio.get_running_loop()
        count0, wall0, cpu0 = forwarded(), loop.time(), time.process_time()
        await asyncio.sleep(seconds)
        count1, wall1, cpu1 = forwarded(), loop.time(), time.process_time()
        elapsed = wall1 - wall0
        return Capacity((count1 - count0) / elapsed, (cpu1 - cpu0) / elapsed)
    finally:
        with contextlib.suppress(ProcessLookupError):
            blaster.kill()
        await blaster.wait()
        if len(cpus) >= 2:
            os.sched_setaffinity(0, our_cpus)


class _BareFanOut(asyncio.DatagramProtocol):
    """Learns the first ``members`` addresses (acking each); sends the rest to the others."""

    def __init__(self, members: int) -> None:
        self.members = members
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: list[tuple[str | int, ...]] = []
        self.forwarded = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.transport is not None
        if addr not in self.peers:
            if len(self.peers) < self.members:
                self.peers.append(addr)
            self.transport.sendto(encode_ack(len(self.peers) - 1), addr)
            return
        for peer in self.peers:
            if peer != addr:
                self.transport.sendto(data, peer)
                self.forwarded += 1


def _blast(host: str, port: int, tokens: list[bytes], duration_s: float, cpu: int) -> None:
    """The child process: bind every member, say "bound", then send until the time is up."""
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    forwarder = (host, port)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in tokens]
    deadline = time.monotonic() + BIND_TIMEOUT_S
    for sock, token in zip(sockets, tokens, strict=True):
        sock.bind((LOOPBACK, 0))
        sock.settimeout(0.2)
        while True:
            if time.monotonic() > deadline:
                raise SystemExit("no ack from the forwarder")
            sock.sendto(encode_bind(token), forwarder)
            with contextlib.suppress(TimeoutError):
                reply = sock.recv(64)
                if len(reply) == ACK_LENGTH and parse_ack(reply) is not None:
                    break
    print("bound", flush=True)
    for sock in sockets:
        sock.setblocking(False)
    payload = bytes(PACKET_BYTES)
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        for _ in range(64):
            for sock in sockets:
                with contextlib.suppress(BlockingIOError):
                    sock.sendto(payload, forwarder)
            for sock in sockets:  # keep the members' receive buffers from filling
                for _ in range(len(tokens)):
                    try:
                        sock.recv(PACKET_BYTES)
                    except BlockingIOError:
                        break


if __name__ == "__main__":
    _blast(
        sys.argv[1],
        int(sys.argv[2]),
        [bytes.fromhex(token) for token in sys.argv[3].split(",")],
        float(sys.argv[4]),
        int(sys.argv[5]),
    )
