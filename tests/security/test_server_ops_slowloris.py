"""Issue 20, finding 5: connections that never finish their headers are closed.

The attack: open many TCP connections, send part of a request line, never
finish. Before the fix uvicorn held every one forever (300 of 300 open after
40 s) and the per-address request limiter never saw them. Each test runs the
app under :func:`pqcall.server.runner.uvicorn_config`, the configuration
``pqcall server`` uses, with a short header timeout.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from pqcall.server.app import create_app
from pqcall.server.runner import uvicorn_config
from tests.harness import EVENT_TIMEOUT_S, scaled, wait_until
from tests.server.conftest import make_settings

HEADER_TIMEOUT_S = scaled(3.0)  # long enough for a first request on a busy machine
PARTIAL_REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
ATTACK_CONNECTIONS = 50


@contextlib.contextmanager
def serve(tmp_path: Path, **overrides: Any) -> Iterator[str]:
    """The app under ``pqcall server``'s uvicorn configuration on a free port; its URL."""
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'server.db'}",
        tmp_path / "data",
        header_timeout_s=HEADER_TIMEOUT_S,
        **overrides,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(settings, create_app(settings), log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "the server to start")
        assert server.started, "server failed to start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(EVENT_TIMEOUT_S)
        sock.close()


def open_partial(url: str, count: int) -> list[socket.socket]:
    """``count`` connections that each sent part of a request line and headers."""
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        conn = socket.create_connection((host, int(port)), timeout=EVENT_TIMEOUT_S)
        conn.sendall(PARTIAL_REQUEST)
        sockets.append(conn)
    return sockets


def is_closed_by_server(conn: socket.socket) -> bool:
    """Whether the server closed ``conn`` (end of stream or reset), waiting at most a moment."""
    conn.settimeout(0.05)
    try:
        return conn.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_incomplete_headers_are_closed_and_others_still_served(tmp_path):
    with serve(tmp_path) as url:
        attackers = open_partial(url, ATTACK_CONNECTIONS)
        try:
            started = time.monotonic()
            # a normal request is answered while they are open
            assert httpx.get(f"{url}/health", timeout=EVENT_TIMEOUT_S).status_code == 200
            assert not any(is_closed_by_server(conn) for conn in attackers[:5])
            wait_until(
                lambda: all(is_closed_by_server(conn) for conn in attackers),
                "the server to close every connection without complete headers",
                timeout_s=HEADER_TIMEOUT_S + scaled(5),
            )
            assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.8
            assert httpx.get(f"{url}/health", timeout=EVENT_TIMEOUT_S).status_code == 200
        finally:
            for conn in attackers:
                conn.close()


def test_a_slow_second_request_on_a_kept_alive_connection_is_closed(tmp_path):
    with serve(tmp_path) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=EVENT_TIMEOUT_S) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
            conn.sendall(PARTIAL_REQUEST)  # keeps uvicorn's keep-alive timer off
            wait_until(
                lambda: is_closed_by_server(conn),
                "the server to close the connection",
                timeout_s=HEADER_TIMEOUT_S + scaled(5),
            )


def test_one_address_cannot_hold_more_than_its_share(tmp_path):
    with serve(tmp_path, max_pending_per_address=5) as url:
        attackers = open_partial(url, 5)
        try:
            extra = open_partial(url, 1)[0]
            attackers.append(extra)
            wait_until(lambda: is_closed_by_server(extra), "the sixth connection to be closed")
            assert not any(is_closed_by_server(conn) for conn in attackers[:5])
        finally:
            for conn in attackers:
                conn.close()
        # once they are gone, the address is served again
        wait_until(lambda: _health(url) == 200, "a request from that address to be served again")


def test_total_connections_are_capped(tmp_path):
    with serve(tmp_path, max_connections=8) as url:
        held = open_partial(url, 8)
        try:
            extra = open_partial(url, 1)[0]
            held.append(extra)
            wait_until(lambda: is_closed_by_server(extra), "the ninth connection to be closed")
        finally:
            for conn in held:
                conn.close()


def _health(url: str) -> int:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code
    except httpx.TransportError:
        return 0
