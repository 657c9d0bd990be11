"""EventStream: a scripted server for the protocol details, the real server for restarts and tokens.

The scripted server (websockets' own asyncio server) plays one script per
connection, so a test can say exactly what each connection sends and check
what the stream answers: resume, duplicates, pongs, acks, 4401.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve

from pqcall.client.api import ServerApi
from pqcall.client.event_stream import EventStream, events_url
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import ServerUnreachable
from pqcall.signaling.messages import EVENT_CALL_INCOMING, Event, InitiateCall
from tests.harness import EVENT_TIMEOUT_S, free_port, run_async

from ..server.certs import self_signed
from ..server.conftest import FakeClock, RunningServer
from .conftest import (
    QUIET_S,
    RestartableServer,
    new_account,
    new_call_id,
    next_event,
)

TOKEN_TTL_S = 3600.0
SECRET = "c2VjcmV0LXRva2Vu"  # a token that must not be logged
OFFER = b"offer " * 20

Script = Callable[[ServerConnection], Awaitable[None]]


def event(seq: int, kind: str = "test") -> str:
    return json.dumps({"seq": seq, "type": kind, "payload": {"n": seq}, "created": 1.0})


READY = json.dumps({"type": "ready", "heartbeat_s": 20.0})


class ScriptedServer:
    """Plays one script per connection and records what each connection asked for."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)  # the next connection plays the first
        self.paths: list[str] = []  # request path (with query) of each connection
        self.tokens: list[str | None] = []  # Authorization header of each connection
        self.times: list[float] = []  # when each connection came (monotonic)
        self.messages: list[dict[str, Any]] = []  # everything the stream sent
        self.url = ""  # http://127.0.0.1:port, set while serving

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        self.tokens.append(ws.request.headers.get("Authorization"))
        self.times.append(time.monotonic())
        script = self.scripts.pop(0)
        await script(ws)

    async def receive(self, ws: ServerConnection) -> dict[str, Any]:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            message: dict[str, Any] = json.loads(await ws.recv())
        self.messages.append(message)
        return message

    async def receive_until(self, ws: ServerConnection, wanted: dict[str, Any]) -> None:
        while await self.receive(ws) != wanted:
            pass

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedServer]:
        async with serve(self.handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            yield self


def token_source(*tokens: str) -> Callable[[], Awaitable[str]]:
    """Hands out ``tokens`` in turn (the last one for ever)."""
    remaining = list(tokens)

    async def token() -> str:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return token


def only_this_task() -> bool:
    """Whether the test's own task is all that runs."""
    return asyncio.all_tasks() == {asyncio.current_task()}


# ---------------------------------------------------------------- protocol (scripted server)


def test_events_url() -> None:
    assert events_url("http://10.0.0.5:5001") == "ws://10.0.0.5:5001/events"
    assert events_url("HTTPS://pqcall.example.org/pq/") == "wss://pqcall.example.org/pq/events"
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        events_url("ftp://x")


@run_async
async def test_resume_duplicates_pongs_and_acks() -> None:
    async def first(ws: ServerConnection) -> None:
        await ws.send(event(1))
        await ws.send(event(2))
        await ws.send(READY)
        await ws.send(json.dumps({"type": "ping"}))
        await scripted.receive_until(ws, {"type": "pong"})
        await ws.close(1012, "server is shutting down")

    async def second(ws: ServerConnection) -> None:
        await ws.send(event(2))  # a repeat: dropped
        await ws.send(event(3))
        await ws.send(READY)
        await scripted.receive_until(ws, {"ack": 3})
        await ws.wait_closed()

    scripted = ScriptedServer(first, second)
    changes: list[bool] = []
    async with scripted.running():
        async with EventStream(
            scripted.url, token_source("t"), on_connection=changes.append
        ) as stream:
            seen = [await next_event(stream) for _ in range(3)]
            assert [e.seq for e in seen] == [1, 2, 3]
            assert seen[0] == Event(seq=1, type="test", payload={"n": 1}, created=1.0)
            assert (stream.last_seq, stream.acked_seq) == (3, 2)  # 3 is still being processed
            stream.ack(3)
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                while {"ack": 3} not in scripted.messages:
                    await asyncio.sleep(0.01)
            assert stream.reconnects == 1
            assert stream.connected
    assert scripted.paths == ["/events", "/events?resume=2"]  # resume: the last seq received
    assert scripted.tokens == ["Bearer t", "Bearer t"]
    acks = [m["ack"] for m in scripted.messages if "ack" in m]
    assert acks == sorted(acks) and acks[-1] == 3
    assert changes == [True, False, True, False]  # the last: closed


def test_the_token_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send(READY)
        await ws.send(event(1))
        await ws.wait_closed()

    async def run() -> None:
        scripted = ScriptedServer(script)
        async with scripted.running(), EventStream(scripted.url, token_source(SECRET)) as stream:
            assert (await next_event(stream)).seq == 1

    with caplog.at_level(logging.DEBUG):
        asyncio.run(run())
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("pqcall")]
    assert "> Authorization: [redacted]" in ours  # (the scripted server logs it: not ours)
    assert not any(SECRET in message for message in ours)


@run_async
async def test_resume_is_acknowledged_and_acks_never_pass_what_was_delivered() -> None:
    async def script(ws: ServerConnection) -> None:
        await scripted.receive_until(ws, {"ack": 7})  # what the phone had processed before
        await ws.send(event(8))
        await ws.send(event(9))
        await ws.send(READY)
        await ws.wait_closed()

    scripted = ScriptedServer(script)
    async with scripted.running():
        async with EventStream(scripted.url, token_source("t"), resume=7) as stream:
            assert (stream.last_seq, stream.acked_seq) == (7, 7)
            assert (await next_event(stream)).seq == 8
            stream.ack(100)  # 9 was received but not handed out: not acknowledged
            assert stream.acked_seq == 8
            assert (await next_event(stream)).seq == 9
    assert scripted.paths == ["/events?resume=7"]


@run_async
async def test_a_refused_token_is_replaced_at_once() -> None:
    async def refuse(ws: ServerConnection) -> None:
        await ws.close(4401, "bearer token has expired; log in again")

    async def serve_events(ws: ServerConnection) -> None:
        await ws.send(READY)
        await ws.send(event(1))
        await ws.wait_closed()

    scripted = ScriptedServer(refuse, serve_events)
    refused: list[str] = []
    async with scripted.running():
        stream = EventStream(scripted.url, token_source("old", "new"), token_refused=refused.append)
        async with stream:
            assert (await next_event(stream)).seq == 1
            assert stream.reconnects == 0  # the first connection never got ready
    assert refused == ["old"]
    assert scripted.tokens == ["Bearer old", "Bearer new"]
    assert scripted.times[1] - scripted.times[0] < 0.15  # no backoff for a fresh token


@run_async
async def test_silence_means_a_dead_connection() -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "ready", "heartbeat_s": 0.1}))
        await ws.wait_closed()  # no ping, nothing: the stream gives up and closes

    async def alive(ws: ServerConnection) -> None:
        await ws.send(READY)
        await ws.send(event(1))
        await ws.wait_closed()

    scripted = ScriptedServer(silent, alive)
    async with scripted.running(), EventStream(scripted.url, token_source("t")) as stream:
        assert (await next_event(stream)).seq == 1
        assert stream.reconnects == 1


@run_async
async def test_close_leaves_no_tasks() -> None:
    # connecting to nothing: the stream waits in its backoff
    stream = EventStream(f"http://127.0.0.1:{free_port()}", token_source("t"))
    with pytest.raises(TimeoutError):
        await stream.wait_connected(0.3)
    assert not stream.connected
    consumer = asyncio.create_task(anext(stream))
    await asyncio.sleep(0)
    await stream.close()
    with pytest.raises(StopAsyncIteration):
        await consumer
    assert only_this_task()

    # connected, with an event buffered
    async def script(ws: ServerConnection) -> None:
        await ws.send(READY)
        await ws.send(event(1))
        await ws.wait_closed()

    scripted = ScriptedServer(script)
    async with scripted.running():
        stream = EventStream(scripted.url, token_source("t"))
        await stream.wait_connected(EVENT_TIMEOUT_S)
        await stream.close()
        await stream.close()  # idempotent
        assert not stream.connected
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        ours = {t for t in asyncio.all_tasks() if t.get_name().startswith("pqcall-")}
        assert ours == set()
    assert only_this_task()  # the scripted server's tasks too, now that it stopped


@run_async
async def test_a_broken_token_source_is_raised_to_the_consumer() -> None:
    async def broken() -> str:
        raise RuntimeError("bug in the token source")

    async with EventStream("http://127.0.0.1:9", broken) as stream:
        with pytest.raises(RuntimeError, match="bug in the token source"):
            await next_event(stream)


# ---------------------------------------------------------------- the real server


@run_async
async def test_a_server_restart_loses_and_repeats_nothing(db_url: str, tmp_path: Path) -> None:
    server = RestartableServer(db_url, tmp_path / "data")
    await server.start()
    alice_identity = IdentityPrivateKey.generate()
    try:
        async with (
            await new_account(server.base_url, "alice", alice_identity) as alice,
            await new_account(server.base_url, "bob") as bob,
        ):
            changes: list[bool] = []
            async with bob.events(on_connection=changes.append) as stream:
                await stream.wait_connected(EVENT_TIMEOUT_S)
                before = await _call(alice, "bob")
                assert _incoming(await next_event(stream)) == before

                # the server stops; while the phone cannot reach it, two calls are placed
                # (through the same database, on another port the phone does not know)
                await server.stop()
                elsewhere = await server.start(port=free_port())
                async with ServerApi(
                    elsewhere.base_url, "alice", alice_identity, server_name=alice.server_name
                ) as alice_elsewhere:
                    missed = [await _call(alice_elsewhere, "bob") for _ in range(2)]
                await server.stop()
                assert not stream.connected

                # back on its address: the phone resumes and gets exactly those two
                await server.start()
                got = [_incoming(await next_event(stream)) for _ in range(2)]
                assert got == missed
                with pytest.raises(TimeoutError):
                    await next_event(stream, QUIET_S)
                assert stream.reconnects == 1
                assert changes == [True, False, True]

                # and it still gets live events
                after = await _call(alice, "bob")
                assert _incoming(await next_event(stream)) == after
            assert only_this_task()
    finally:
        await server.stop()


@run_async
async def test_acknowledged_events_are_gone_and_the_rest_come_again(server: RunningServer) -> None:
    async with (
        await new_account(server.base_url, "alice") as alice,
        await new_account(server.base_url, "bob") as bob,
    ):
        calls = [await _call(alice, "bob") for _ in range(2)]
        async with bob.events() as stream:
            first = await next_event(stream)
            second = await next_event(stream)  # acknowledges the first
            assert [_incoming(first), _incoming(second)] == calls
        assert stream.acked_seq == first.seq  # the second was not processed to the end

        # the phone starts again from what it saved: the second comes again
        async with bob.events(resume=stream.acked_seq) as stream:
            again = await next_event(stream)
            assert again == second
            stream.ack(again.seq)
        assert stream.acked_seq == second.seq

        # everything is acknowledged: a stream from the start finds nothing stored
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            async with bob.events() as stream:
                await stream.wait_connected(EVENT_TIMEOUT_S)
                try:
                    leftover = await next_event(stream, QUIET_S)
                except TimeoutError:
                    break
            # an ack's delete still on its way (the server batches them, up to 0.2 s)
            assert leftover in (first, second) and time.monotonic() < deadline


@run_async
async def test_a_token_that_expires_while_connected_is_replaced(start_server: Any) -> None:
    clock = FakeClock()
    with start_server(clock=clock, heartbeat_interval_s=0.2) as running:
        async with (
            await new_account(running.base_url, "alice") as alice,
            await new_account(running.base_url, "bob") as bob,
            bob.events() as stream,
        ):
            await stream.wait_connected(EVENT_TIMEOUT_S)
            assert bob.logins == 1
            clock.advance(TOKEN_TTL_S + 1)  # the server closes with 4401 at its next heartbeat
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                while not (stream.reconnects == 1 and stream.connected):
                    await asyncio.sleep(0.02)
            assert bob.logins == 2  # the refused token was discarded, a new login made
            call_id = await _call(alice, "bob")
            assert _incoming(await next_event(stream)) == call_id


@run_async
async def test_a_revoked_token_is_replaced_on_connect(server: RunningServer) -> None:
    async with await new_account(server.base_url, "bob") as bob:
        token = await bob.token()
        async with httpx.AsyncClient(base_url=server.base_url) as other:
            revoked = await other.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
            assert revoked.status_code == 204
        async with bob.events() as stream:
            await stream.wait_connected(EVENT_TIMEOUT_S)
            assert bob.logins == 2
            assert stream.reconnects == 0


@run_async
async def test_a_pinned_certificate_carries_both_https_and_wss(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = RestartableServer(
        f"sqlite+aiosqlite:///{tmp_path / 'pqcall.db'}", tmp_path, tls=(cert, key)
    )
    await server.start()
    try:
        identity = IdentityPrivateKey.generate()
        async with ServerApi(server.base_url, "alice", identity) as untrusting:
            with pytest.raises(ServerUnreachable) as caught:
                await untrusting.health()
            assert str(caught.value) == (
                f"cannot reach the server at {server.base_url}:"
                " TLS certificate not trusted (self-signed certificate)"
            )
        async with (
            await new_account(server.base_url, "alice", identity, verify=str(cert)) as alice,
            await new_account(server.base_url, "bob", verify=str(cert)) as bob,
            bob.events() as stream,
        ):
            assert stream.url.startswith("wss://")
            await stream.wait_connected(EVENT_TIMEOUT_S)
            call_id = await _call(alice, "bob")
            assert _incoming(await next_event(stream)) == call_id
    finally:
        await server.stop()


async def _call(caller: ServerApi, callee: str) -> str:
    call_id = new_call_id()
    await caller.initiate(InitiateCall(call_id=call_id, callee=callee, offer=OFFER))
    return call_id


def _incoming(received: Event) -> str:
    assert received.type == EVENT_CALL_INCOMING, received
    call_id = received.payload["call_id"]
    assert isinstance(call_id, str)
    return call_id
