"""Operations wired into the running server: rate limits, /metrics, the relay, mDNS, logs, TLS.

Real HTTP against the ``start_server`` fixture (SQLite) and, for the
command-line flags and TLS, a ``pqcall server`` subprocess.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pqcall.client.discovery import DiscoveryUnavailable, find_servers
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import ServerError
from pqcall.server import discovery
from pqcall.server.components import (
    AnnouncerComponent,
    RelayComponent,
    instance_name,
    relay_endpoint,
)
from pqcall.server.context import AppContext
from pqcall.server.middleware import RateLimitMiddleware, RequestLimits
from pqcall.server.ratelimit import RateLimit
from pqcall.server.relay import MediaRelay
from pqcall.server.settings import ServerSettings
from pqcall.signaling.messages import b64encode
from pqcall.transport.relay_wire import ACK_MAGIC, ACK_PEER_BOUND, ACK_PEER_WAITING, RelayTarget
from tests.harness import TIMEOUT_SCALE, free_port
from tests.server.certs import self_signed

from .conftest import login, registration

START_TIMEOUT_S = 10.0 * TIMEOUT_SCALE
UDP_TIMEOUT_S = 2.0 * TIMEOUT_SCALE
FIND_S = 3.0 * TIMEOUT_SCALE


# ---------------------------------------------------------------- helpers


class LoopGrabber:
    """A component that remembers the server's event loop (to run relay calls on it)."""

    loop: asyncio.AbstractEventLoop | None = None

    async def start(self, context: AppContext) -> None:
        self.loop = asyncio.get_running_loop()
        self.context = context

    async def stop(self) -> None:
        pass

    def call(self, function, *args):
        """Run ``function(*args)`` on the server's loop and return its result."""

        async def run():
            return function(*args)

        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(START_TIMEOUT_S)


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``GET /metrics``, keyed by (name, sorted labels)."""
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def new_account(client: httpx.Client, username: str) -> tuple[IdentityPrivateKey, str]:
    """Register ``username`` and log in; the identity and the bearer token."""
    identity = IdentityPrivateKey.generate()
    assert client.post("/register", json=registration(identity, username)).status_code == 201
    answer = login(client, identity, username)
    assert answer.status_code == 200, answer.text
    return identity, answer.json()["token"]


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(UDP_TIMEOUT_S)
    return sock


# ---------------------------------------------------------------- rate limits


def test_per_ip_limit_answers_429_with_retry_after(start_server):
    # scale 0.1: 2 requests a second per address, bursts of 4 (on the server's fake clock)
    with start_server(rate_limit_scale=0.1) as server, server.client() as client:
        answers = [client.get("/health") for _ in range(5)]
        assert [a.status_code for a in answers] == [200, 200, 200, 200, 429]
        refused = answers[-1]
        assert refused.headers["retry-after"] == "1"
        assert refused.json() == {"error": "too many requests, retry in 1 s"}
        assert client.get("/health").status_code == 429
        server.clock.advance(0.49)
        assert client.get("/health").status_code == 429
        server.clock.advance(int(refused.headers["retry-after"]) - 0.49)
        assert client.get("/health").status_code == 200
        metrics = scrape(client)
        assert metrics[("pqcall_http_rate_limited_total", (("limit", "ip"),))] == 3


def test_per_account_limit_counts_requests_with_the_account_token(start_server):
    # defaults: 20 a second per address (burst 40), 10 a second per account (burst 20)
    with start_server(rate_limit_scale=1.0) as server, server.client() as client:
        _, token = new_account(client, "alice")
        headers = {"Authorization": f"Bearer {token}"}
        statuses = [client.get("/users/alice", headers=headers).status_code for _ in range(21)]
        assert statuses == [200] * 20 + [429]
        refused = client.get("/users/alice", headers=headers)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        # other requests from the same address are not the account's
        assert client.get("/health").status_code == 200
        metrics = scrape(client)
        assert metrics[("pqcall_http_rate_limited_total", (("limit", "account"),))] == 2
        assert ("pqcall_http_rate_limited_total", (("limit", "ip"),)) not in metrics or (
            metrics[("pqcall_http_rate_limited_total", (("limit", "ip"),))] == 0
        )


def test_failed_logins_are_limited_per_address_and_good_logins_are_free(start_server):
    # 5 failures a minute per client address; nothing per username (tests/security has the attack)
    bogus = {"username": "alice", "challenge": b64encode(bytes(32)), "signature": "AAAA"}
    with start_server(rate_limit_scale=1.0) as server, server.client() as client:
        identity, _ = new_account(client, "alice")
        for _ in range(6):
            assert login(client, identity, "ALICE").status_code == 200  # costs nothing
        for _ in range(5):
            assert client.post("/auth/login", json=bogus).status_code == 401
        refused = client.post("/auth/login", json=bogus)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "12"
        assert refused.json() == {"error": "too many requests, retry in 12 s"}
        # the address is limited, whatever name it tries
        other = bogus | {"username": "bob"}
        assert client.post("/auth/login", json=other).status_code == 429
        server.clock.advance(12)
        assert client.post("/auth/login", json=other).status_code == 401
        metrics = scrape(client)
        assert metrics[("pqcall_http_rate_limited_total", (("limit", "login"),))] == 2


def test_an_oversized_login_body_is_413_with_limits_on(start_server):
    with start_server(rate_limit_scale=1.0) as server, server.client() as client:

        def chunks():
            for _ in range(17):
                yield b"x" * 4096

        chunked = client.post(
            "/auth/login", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413
        assert chunked.json() == {"error": "request body is larger than 65536 bytes"}
        declared = client.post("/auth/login", content=b"x" * 65537)
        assert declared.status_code == 413


def test_a_websocket_handshake_over_the_address_limit_is_refused():
    sent: list[dict[str, Any]] = []
    messages = [{"type": "websocket.connect"}]

    async def app(scope, receive, send):
        raise AssertionError("the app must not run")

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    async def main() -> None:
        limits = RequestLimits(RateLimit(1.0, 1.0), None, None)
        context = AppContext(settings=ServerSettings(data_dir=Path("unused")))
        middleware = RateLimitMiddleware(app, context=context, limits=limits, clock=lambda: 0.0)
        scope = {
            "type": "websocket",
            "path": "/events",
            "headers": [],
            "client": ("192.0.2.1", 5000),
            "extensions": {"websocket.http.response": {}},
        }
        assert middleware.per_ip is not None
        middleware.per_ip.check("192.0.2.1", 0.0)  # the address has used its burst
        await middleware(scope, receive, send)
        assert sent[0]["type"] == "websocket.http.response.start"
        assert sent[0]["status"] == 429
        assert (b"retry-after", b"1") in sent[0]["headers"]
        assert sent[1]["body"] == b'{"error":"too many requests, retry in 1 s"}'
        # without the denial-response extension: close with 1013 (try again later)
        sent.clear()
        messages.append({"type": "websocket.connect"})
        await middleware(scope | {"extensions": {}}, receive, send)
        assert sent == [{"type": "websocket.close", "code": 1013}]

    asyncio.run(main())


def test_scaled_limits():
    assert RequestLimits.scaled(0).is_off
    scaled = RequestLimits.scaled(0.1)
    assert scaled.per_ip == RateLimit(2.0, 4.0)
    assert scaled.login is not None and scaled.login.burst == 1.0  # never below one request


# ---------------------------------------------------------------- metrics


def test_metrics_expose_latency_by_route_template_relay_phones_and_calls(start_server):
    with start_server() as server, server.client() as client:
        _, token = new_account(client, "alice")
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/users/alice", headers=headers).status_code == 200
        assert client.get("/users/nobody", headers=headers).status_code == 404
        assert client.get("/no/such/page").status_code == 404
        metrics = scrape(client)
    latency = "pqcall_http_request_duration_seconds_count"
    route = (("method", "GET"), ("route", "/users/{name}"))
    assert metrics[(latency, (*route, ("status", "200")))] == 1
    assert metrics[(latency, (*route, ("status", "404")))] == 1
    assert metrics[(latency, (("method", "GET"), ("route", "<unmatched>"), ("status", "404")))]
    assert not any("/users/alice" in str(labels) for _, labels in metrics)
    assert metrics[("pqcall_connected_phones", ())] == 0
    assert metrics[("pqcall_relay_allocations_active", ())] == 0
    assert metrics[("pqcall_relay_forwarded_packets_total", ())] == 0
    for state in ("ringing", "active", "rejected", "ended", "missed", "failed"):
        assert metrics[("pqcall_calls", (("state", state),))] == 0


def test_metrics_can_be_openmetrics(server):
    with server.client() as client:
        answer = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n")


# ---------------------------------------------------------------- media relay


def test_relay_runs_on_the_configured_udp_port_and_forwards(start_server):
    grabber = LoopGrabber()
    port = free_port(socket.SOCK_DGRAM)
    with start_server(components=(grabber,), relay_port=port) as server:
        context = grabber.context
        relay = context.extras["relay"]
        assert isinstance(relay, MediaRelay)
        assert relay.address == ("127.0.0.1", port)
        allocation = grabber.call(relay.allocate, "0" * 32)
        caller, callee = udp_socket(), udp_socket()
        try:
            grants = ((caller, allocation.caller_token), (callee, allocation.callee_token))
            for sock, token in grants:
                target = RelayTarget(("127.0.0.1", port), token)
                sock.sendto(target.bind, target.address)  # answered by a challenge
                sock.sendto(target.answer(sock.recv(64), target.address) or b"", target.address)
                state = ACK_PEER_WAITING if sock is caller else ACK_PEER_BOUND
                assert sock.recv(64) == ACK_MAGIC + bytes([state])
            caller.sendto(b"opaque media" * 10, ("127.0.0.1", port))
            assert callee.recv(2048) == b"opaque media" * 10
        finally:
            caller.close()
            callee.close()
        with server.client() as client:
            metrics = scrape(client)
        assert metrics[("pqcall_relay_allocations_active", ())] == 1
        assert metrics[("pqcall_relay_binds_total", ())] == 2
        assert metrics[("pqcall_relay_forwarded_packets_total", ())] == 1
        assert metrics[("pqcall_relay_forwarded_bytes_total", ())] == 120
    assert "relay" not in context.extras  # withdrawn at shutdown


def test_relay_endpoint_is_the_public_host_or_the_one_the_phone_used(start_server):
    grabber = LoopGrabber()
    with start_server(components=(grabber,)):
        port = grabber.context.extras["relay"].address[1]
        assert port != 0
        assert relay_endpoint(grabber.context, "pqcall.lan") == ("pqcall.lan", port)
        assert relay_endpoint(grabber.context, None) == ("127.0.0.1", port)
    with start_server(components=(grabber,), relay_host="203.0.113.5"):
        port = grabber.context.extras["relay"].address[1]
        assert relay_endpoint(grabber.context, "pqcall.lan") == ("203.0.113.5", port)
    assert relay_endpoint(grabber.context, "pqcall.lan") is None  # stopped: no relay


def test_relay_port_in_use_stops_the_start_with_one_line(tmp_path):
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            settings = ServerSettings(host="127.0.0.1", port=port, data_dir=tmp_path)
            with pytest.raises(ServerError, match=f"media relay on UDP 127.0.0.1:{port}: "):
                await RelayComponent().start(AppContext(settings=settings))

    asyncio.run(main())


# ---------------------------------------------------------------- mDNS


def test_mdns_is_off_in_tests_and_not_started_on_loopback(server):
    components = server.app.state.context.components
    assert not any(isinstance(c, AnnouncerComponent) for c in components)


def test_the_server_runs_on_when_mdns_fails(start_server, monkeypatch, caplog):
    async def unavailable(self, *, wait=True):
        raise DiscoveryUnavailable("mDNS is not available here: no multicast")

    monkeypatch.setattr(discovery.ServerAnnouncer, "start", unavailable)
    caplog.set_level(logging.WARNING, logger="pqcall.server.components")
    # host and port are what would be announced (the test server listens on its own socket)
    with (
        start_server(announce_mdns=True, host="0.0.0.0", port=free_port()) as server,
        server.client() as client,
    ):
        assert client.get("/health").json()["status"] == "ok"
    warnings = [r for r in caplog.records if r.name == "pqcall.server.components"]
    assert [r.getMessage() for r in warnings] == [
        "not announcing the server on the LAN (mDNS): mDNS is not available here: no multicast"
    ]


def test_instance_names_are_one_dns_label():
    assert instance_name("kitchen-pc") == "pqcall on kitchen-pc"
    assert instance_name("pqcall.example.org") == "pqcall on pqcall-example-org"
    assert len(instance_name("é" * 64).encode()) <= 63


def test_the_announcer_component_is_found_on_the_lan(tmp_path):
    name = f"ops-{secrets.token_hex(4)}"
    settings = ServerSettings(host="0.0.0.0", port=free_port(), data_dir=tmp_path, server_name=name)

    async def main() -> None:
        context = AppContext(settings=settings)
        announcer = AnnouncerComponent()
        await announcer.start(context)
        try:
            if announcer._announcer is None:
                pytest.skip("mDNS is not available here")
            try:
                found = await find_servers(FIND_S)
            except DiscoveryUnavailable as exc:
                pytest.skip(str(exc))
        finally:
            await announcer.stop()
        ours = [server for server in found if server.name == instance_name(name)]
        assert len(ours) == 1
        assert ours[0].port == settings.port
        assert ours[0].relay_port is None
        assert ours[0].url.startswith("http://")

    asyncio.run(asyncio.wait_for(main(), 30 * TIMEOUT_SCALE))


# ---------------------------------------------------------------- logs


def test_one_access_line_per_request_and_no_secrets_in_any_log(start_server, caplog):
    caplog.set_level(logging.DEBUG, logger="pqcall")
    with start_server() as server, server.client() as client:
        _, token = new_account(client, "alice")
        answer = client.get(
            "/users/alice",
            params={"q": "query-secret"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200
    access = [r.getMessage() for r in caplog.records if r.name == "pqcall.server.access"]
    assert len(access) == 4  # register, challenge, login, lookup
    assert access[-1].startswith("method=GET route=/users/{name} status=200 duration_ms=")
    assert access[-1].endswith(" client=127.0.0.1")
    assert access[0].startswith("method=POST route=/register status=201 ")
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert token not in everything
    assert "query-secret" not in everything


# ---------------------------------------------------------------- the command line, with TLS


def test_command_line_relay_flags_over_tls_with_a_pinned_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    port, relay_port = free_port(), free_port(socket.SOCK_DGRAM)
    command = [
        *(sys.executable, "-m", "pqcall", "server", "--host", "127.0.0.1", "--port", str(port)),
        *("--relay-port", str(relay_port), "--public-host", "pqcall.lan", "--no-mdns"),
        *("--tls-cert", str(cert), "--tls-key", str(key), "--name", "ops.test"),
        "--access-log",  # quiet by default since the README walkthrough (issue 21)
    ]
    env = dict(os.environ, PQCALL_HOME=str(tmp_path))
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pinned = ssl.create_default_context(cafile=str(cert))  # trust this certificate only
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                metrics = httpx.get(f"https://127.0.0.1:{port}/metrics", verify=pinned, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not answer"
                time.sleep(0.05)
        assert metrics.status_code == 200
        assert "pqcall_relay_allocations_active 0.0" in metrics.text
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=1)  # system CAs only
        # the relay holds its UDP port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", relay_port))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=START_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = err.decode()
    assert f"media relay on UDP port {relay_port}" in log
    assert f"media relay listening on UDP 127.0.0.1:{relay_port}" in log
    assert "method=GET route=/metrics status=200" in log
    assert "Traceback" not in log


def test_tokens_in_uvicorn_websocket_lines_are_redacted():
    import logging

    from pqcall.server.logs import RedactSecretsFilter, install_log_redaction

    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        (("127.0.0.1", 5555), "/events?resume=3&token=c2VjcmV0LXRva2Vu"),
        None,
    )
    assert RedactSecretsFilter().filter(record) is True
    line = record.getMessage()
    assert "c2VjcmV0LXRva2Vu" not in line
    assert line.endswith('"WebSocket /events?resume=3&token=[redacted]" [accepted]')
    install_log_redaction()
    install_log_redaction()
    filters = logging.getLogger("uvicorn.error").filters
    assert sum(isinstance(f, RedactSecretsFilter) for f in filters) == 1
