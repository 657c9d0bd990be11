"""An impairment relay in a process of its own, for benchmark calls.

The media benchmark charges a call's CPU time to its two sides, so the
network they talk through must not run in their process: in another thread
it would still cost them the GIL hand-offs of every datagram. This module
runs an :class:`~pqcall.netem.ImpairmentRelay` in a spawned
process and steers it through a pipe: switch the impairment on or off, read
its counters, stop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from dataclasses import replace
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Final

from pqcall.netem import Address, Direction, Impairment, ImpairmentRelay

__all__ = ["RelayProcess"]

LOOPBACK: Final = "127.0.0.1"
START_TIMEOUT_S: Final = 30.0
"""Longest wait for the relay process to start (a cold interpreter on a busy machine)."""
REPLY_TIMEOUT_S: Final = 10.0


def _reverse(impairment: Impairment) -> Impairment:
    """The impairment of the reverse direction: the same, with the next seed."""
    return replace(impairment, seed=impairment.seed + 1)


class RelayProcess:
    """An impairment relay between ``peer_a`` and ``peer_b``, running in a child process.

    Args:
        impairment: the caller-to-callee impairment (the reverse uses ``seed + 1``).
        is_impaired: whether it applies from the start, or only after :meth:`impair`.
        peer_a: endpoint A (the caller).
        peer_b: endpoint B (the callee).

    Use as a context manager; :attr:`address_a` and :attr:`address_b` are where
    A and B send.
    """

    def __init__(
        self, impairment: Impairment, is_impaired: bool, peer_a: Address, peer_b: Address
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(child, impairment, is_impaired, peer_a, peer_b),
            name="bench-relay",
            daemon=True,
        )
        self.address_a: Address = ("", 0)
        """Where endpoint A sends."""
        self.address_b: Address = ("", 0)
        """Where endpoint B sends."""

    def __enter__(self) -> RelayProcess:
        self._process.start()
        address_a, address_b = self._reply(START_TIMEOUT_S)
        self.address_a = (str(address_a[0]), int(address_a[1]))
        self.address_b = (str(address_b[0]), int(address_b[1]))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._conn.send(("close", None))
        except OSError:
            pass  # it is gone already
        self._process.join(REPLY_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()

    def impair(self, on: bool) -> None:
        """Switch the impairment on or off, both directions (does not wait)."""
        self._conn.send(("impair", on))

    def counts(self) -> tuple[int, int]:
        """Datagrams received and dropped, caller to callee (blocks briefly)."""
        self._conn.send(("counts", None))
        received, dropped = self._reply(REPLY_TIMEOUT_S)
        return int(received), int(dropped)

    def queue(self) -> float:
        """The bottleneck's backlog, ms, caller to callee, as the last datagram found it."""
        self._conn.send(("queue", None))
        queue_ms, _ = self._reply(REPLY_TIMEOUT_S)
        return float(queue_ms)

    def _reply(self, timeout_s: float) -> tuple[Any, Any]:
        if not self._conn.poll(timeout_s):
            raise TimeoutError("the benchmark relay process did not answer")
        first, second = self._conn.recv()
        return first, second


def _serve(
    conn: Connection, impairment: Impairment, is_impaired: bool, peer_a: Address, peer_b: Address
) -> None:
    """The child process: run the relay until told to close or the pipe breaks."""
    asyncio.run(_relay(conn, impairment, is_impaired, peer_a, peer_b))


async def _relay(
    conn: Connection, impairment: Impairment, is_impaired: bool, peer_a: Address, peer_b: Address
) -> None:
    loop = asyncio.get_running_loop()
    forward = impairment if is_impaired else Impairment()
    relay = ImpairmentRelay(forward, _reverse(forward), host=LOOPBACK, peer_a=peer_a, peer_b=peer_b)
    await relay.start()
    conn.send((relay.address_a, relay.address_b))
    done: asyncio.Future[None] = loop.create_future()

    def on_command() -> None:
        try:
            command, argument = conn.recv()
        except EOFError:
            command, argument = "close", None
        if command == "impair":
            on = impairment if argument else Impairment()
            relay.set_impairment(Direction.A_TO_B, on)
            relay.set_impairment(Direction.B_TO_A, _reverse(on))
        elif command == "queue":
            stats = relay.stats(Direction.A_TO_B)
            conn.send((stats.queue_delay_ms, stats.queue_dropped))
        elif command == "counts":
            stats = relay.stats(Direction.A_TO_B)
            conn.send((stats.received, stats.dropped))
        elif not done.done():
            done.set_result(None)

    loop.add_reader(conn.fileno(), on_command)
    try:
        await done
    finally:
        loop.remove_reader(conn.fileno())
        await relay.close()
