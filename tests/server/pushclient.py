"""Test helpers for calls and push events: a WebSocket phone, call requests, restarts."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from typing import Any

import httpx
import websockets.exceptions
from websockets.sync.client import ClientConnection, connect

from pqcall.crypto.filekey import FilePrivateKey, KeyBundle
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.signaling.messages import b64encode
from tests.harness import TIMEOUT_SCALE

from .conftest import BUNDLE_CREATED, RunningServer, login, registration

EVENT_TIMEOUT_S = 5.0 * TIMEOUT_SCALE  # how long a test waits for an event that must come
QUIET_S = 0.3 * TIMEOUT_SCALE  # how long a test listens to show that nothing comes

OFFER = b"offer " * 20  # opaque to the server; any bytes do
ANSWER = b"answer " * 20
CONFIRM = b"confirm " * 4


def new_call_id() -> str:
    return secrets.token_hex(16)


class EventSocket:
    """A phone's push WebSocket (websockets' sync client); pings are answered while reading.

    Args:
        server: where to connect.
        token: bearer token, sent as a header (``via="header"``) or a query parameter.
        resume: the last seq the phone saw.
        wait_ready: read through the backlog to the ``ready`` message, keeping the events.
    """

    def __init__(
        self,
        server: RunningServer,
        token: str | None,
        *,
        resume: int | str | None = None,
        via: str = "header",
        wait_ready: bool = True,
    ) -> None:
        params: dict[str, str] = {}
        headers: dict[str, str] = {}
        if resume is not None:
            params["resume"] = str(resume)
        if token is not None and via == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif token is not None:
            params["token"] = token
        url = httpx.URL(server.base_url.replace("http", "ws", 1) + "/events", params=params)
        self._stack = contextlib.ExitStack()  # closes the connection
        self.ws: ClientConnection = self._stack.enter_context(
            connect(str(url), additional_headers=headers, open_timeout=EVENT_TIMEOUT_S, proxy=None)
        )
        self.backlog: list[dict[str, Any]] = []  # events read while waiting for ready
        self.heartbeat_s: float | None = None  # from the ready message
        if wait_ready:
            self.backlog = self.read_until_ready()

    def receive(self, timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        """The next message of any kind (pings included, not answered)."""
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout))
        return message

    def read_until_ready(self) -> list[dict[str, Any]]:
        """The backlog events, up to the ``ready`` message."""
        events: list[dict[str, Any]] = []
        while True:
            message = self.receive()
            if message.get("type") == "ready":
                self.heartbeat_s = message["heartbeat_s"]
                return events
            if message.get("type") != "ping":
                events.append(message)

    def next_event(self, timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        """The next event (a message with a seq), answering pings on the way."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.0, deadline - time.monotonic()))
            if message.get("type") == "ping":
                self.send({"type": "pong"})
                continue
            assert "seq" in message, message
            return message

    def expect(
        self, event_type: str, timeout: float = EVENT_TIMEOUT_S, *, ignore: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The next event not of a type in ``ignore``, which must be of ``event_type``."""
        event = self.next_event(timeout)
        while event["type"] in ignore:
            event = self.next_event(timeout)
        assert event["type"] == event_type, event
        return event

    def assert_quiet(self, within: float = QUIET_S) -> None:
        """No event arrives within ``within`` seconds."""
        try:
            event = self.next_event(within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {event}")

    def send(self, message: Any) -> None:
        self.ws.send(json.dumps(message))

    def ack(self, seq: int) -> None:
        self.send({"ack": seq})

    def wait_closed(self, timeout: float = EVENT_TIMEOUT_S) -> tuple[int, str]:
        """Read (without answering pings) until the server closes; its code and reason."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.ws.recv(timeout=max(0.0, deadline - time.monotonic()))
        except websockets.exceptions.ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason

    def close(self) -> None:
        self._stack.close()


def initiate(
    client: httpx.Client,
    callee: str,
    call_id: str | None = None,
    candidates: list[dict[str, Any]] | None = None,
) -> tuple[str, httpx.Response]:
    """``POST /call/initiate``; the call id and the answer."""
    call_id = call_id or new_call_id()
    body: dict[str, Any] = {"call_id": call_id, "callee": callee, "offer": b64encode(OFFER)}
    if candidates is not None:
        body["candidates"] = candidates
    return call_id, client.post("/call/initiate", json=body)


def accept(
    client: httpx.Client, call_id: str, candidates: list[dict[str, Any]] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"call_id": call_id, "answer": b64encode(ANSWER)}
    if candidates is not None:
        body["candidates"] = candidates
    return client.post("/call/accept", json=body)


def confirm(client: httpx.Client, call_id: str) -> httpx.Response:
    return client.post("/call/confirm", json={"call_id": call_id, "confirm": b64encode(CONFIRM)})


def reject(client: httpx.Client, call_id: str, reason: str = "declined") -> httpx.Response:
    return client.post("/call/reject", json={"call_id": call_id, "reason": reason})


def hangup(client: httpx.Client, call_id: str, reason: str = "hangup") -> httpx.Response:
    return client.post("/call/hangup", json={"call_id": call_id, "reason": reason})


def register_and_login(server: RunningServer, username: str) -> tuple[IdentityPrivateKey, str]:
    """Register ``username`` on ``server`` and log in; the identity and a bearer token."""
    identity = IdentityPrivateKey.generate()
    bundle = KeyBundle.create(
        identity, username, FilePrivateKey.generate().public_key(), BUNDLE_CREATED
    )
    with server.client() as client:
        answer = client.post(
            "/register", json=registration(identity, username, bundle=bundle.encode())
        )
        assert answer.status_code == 201, answer.text
        return identity, log_in(server, identity, username)


def log_in(server: RunningServer, identity: IdentityPrivateKey, username: str) -> str:
    """A fresh bearer token for ``username``."""
    with server.client() as client:
        answer = login(client, identity, username)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])
