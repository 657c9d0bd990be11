"""The test harness every test directory shares: time limits, async tests, polling, ports, UDP.

- Every wall-clock limit a test waits on is written as ``scaled(seconds)``:
  ``PQCALL_TEST_TIMEOUT_SCALE`` (default 1) multiplies them all, so a slow or
  busy machine raises one number instead of flaking.
- :func:`run_async` runs an ``async def`` test in a fresh event loop, bounded
  by :data:`TEST_TIMEOUT_S`; :func:`run_bounded` does the same for one
  coroutine and returns its value.
- :func:`wait_until` (threads, processes) and :func:`eventually` (inside an
  event loop) poll a condition until it is true and return its value, or fail
  the test saying what they waited for.
- :func:`free_port` names a loopback port nothing listens on; :class:`UdpPeer`
  and :func:`udp_pair` are loopback UDP endpoints that keep what they receive.

Fixtures and the markers by directory live in ``tests/conftest.py``; pure
helpers without sockets or clocks (handshake pairs, fake clocks) in
``tests/utils.py``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

TIMEOUT_SCALE_ENV = "PQCALL_TEST_TIMEOUT_SCALE"
TIMEOUT_SCALE = float(os.environ.get(TIMEOUT_SCALE_ENV, "1"))
"""What every wall-clock limit in the tests is multiplied by."""


def scaled(seconds: float) -> float:
    """``seconds`` times :data:`TIMEOUT_SCALE`: the form of every limit a test waits on."""
    return seconds * TIMEOUT_SCALE


EVENT_TIMEOUT_S = scaled(10.0)  # for something that must happen (an event, a state, a start)
TEST_TIMEOUT_S = scaled(60.0)  # a whole async test
POLL_INTERVAL_S = 0.01  # between two looks of wait_until and eventually

T = TypeVar("T")


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Decorate an ``async def`` test: run it in a fresh event loop, bounded by TEST_TIMEOUT_S."""

    async def bounded(*args: Any, **kwargs: Any) -> None:
        async with asyncio.timeout(TEST_TIMEOUT_S):  # in the test's own task: no extra task
            await test(*args, **kwargs)

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(bounded(*args, **kwargs))

    return wrapper


def run_bounded(main: Awaitable[T], timeout_s: float = TEST_TIMEOUT_S) -> T:
    """Run ``main`` in a fresh event loop and return its value; fail after ``timeout_s``."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await main

    return asyncio.run(bounded())


def _timed_out(what: str, report: Callable[[], str] | None) -> AssertionError:
    message = f"timed out waiting for {what}"
    return AssertionError(f"{message}\n{report()}" if report is not None else message)


def wait_until(
    condition: Callable[[], T],
    what: str = "a condition",
    *,
    timeout_s: float = EVENT_TIMEOUT_S,
    interval_s: float = POLL_INTERVAL_S,
    report: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` (blocking) until it returns something true; that value.

    Raises:
        AssertionError: ``timeout_s`` passed; the message says ``what``, then
            ``report()`` if given.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, report)
        time.sleep(interval_s)


async def eventually(
    condition: Callable[[], T],
    what: str = "a condition",
    *,
    timeout_s: float = EVENT_TIMEOUT_S,
    interval_s: float = POLL_INTERVAL_S,
    report: Callable[[], str] | None = None,
) -> T:
    """:func:`wait_until` inside an event loop: the loop runs while it waits."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, report)
        await asyncio.sleep(interval_s)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing is bound to (just now): TCP, or UDP with SOCK_DGRAM."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP endpoint on loopback that keeps what it receives, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None  # set once the endpoint is open
        self.received: list[bytes] = []  # every datagram's payload
        self.senders: list[tuple[str | int, ...]] = []  # and where each one came from

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received.append(data)
        self.senders.append(addr)

    @property
    def address(self) -> tuple[str, int]:
        """Where the endpoint is bound."""
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()


async def open_udp_peer() -> UdpPeer:
    """A :class:`UdpPeer` bound to a free port on 127.0.0.1 (call inside an event loop)."""
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=("127.0.0.1", 0))
    return peer


async def udp_pair() -> tuple[UdpPeer, UdpPeer]:
    """Two loopback :class:`UdpPeer` endpoints; each sends to the other's ``address``."""
    return await open_udp_peer(), await open_udp_peer()
