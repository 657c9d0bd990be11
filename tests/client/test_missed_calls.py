"""Calls that are never lost (issue 21): real phones on an in-process server.

A call to a phone that is offline or reconnecting rings it when it comes back within
the ring timeout; one that rings out is a missed call the callee sees when it comes
back (client API and ``pqcall listen``), and the caller's history keeps the attempt
with its reason. A failure's reason reaches both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pqcall.client.api import ServerApi
from pqcall.client.home import Home
from pqcall.client.missed_calls import MissedCall
from pqcall.client.phone import Phone, register
from pqcall.client.phone_callstate import CallState
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.exceptions import CallError, ServerError, UnknownUser
from tests.cli.helpers import child_env, pqcall_command
from tests.harness import eventually, run_async, scaled

from ..server.conftest import FakeClock, RunningServer, make_settings, run_server
from .test_phone import PASSPHRASE, STATE_TIMEOUT_S, new_phone, phones, wait_state

RING_TIMEOUT_S = 30.0  # the server's, on its fake clock
QUIET = ("--audio-in", "silence", "--audio-out", "null")  # no sound card needed


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A server whose sweeper runs often (its ring timeout is on the fake clock)."""
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'server.db'}",
        tmp_path / "data",
        ring_timeout_s=RING_TIMEOUT_S,
        sweep_interval_s=0.05,
    )
    # the server's clock runs behind, as a call's events look when they are replayed to a
    # phone that comes back after the ring timeout (a phone checks such an old ring first)
    clock = FakeClock(time.time() - 2 * RING_TIMEOUT_S)
    with run_server(settings, clock) as running:
        yield running


class CuttableProxy:
    """A TCP proxy to the server whose connections a test cuts (a phone's network blip)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port  # the server's port
        self.port = 0  # ours, once started
        self.is_cut = False  # refuse and drop everything while set
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self.is_cut = True
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


def server_port(server: RunningServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


async def registered(server_url: str, tmp_path: Path, name: str) -> Home:
    home = Home(tmp_path / name)
    await register(home, name, server_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    return home


@contextlib.asynccontextmanager
async def started(home: Home, tmp_path: Path) -> AsyncIterator[Phone]:
    from pqcall.client.media_options import MediaOptions

    media = MediaOptions(audio_in="tone:440", audio_out=str(tmp_path / f"{home.path.name}.wav"))
    phone = Phone(home, passphrase=PASSPHRASE, media=media)
    try:
        yield phone
    finally:
        await phone.close()


@run_async
async def test_call_to_offline_callee_rings_when_he_connects(
    server: RunningServer, tmp_path: Path
) -> None:
    bob_home = await registered(server.base_url, tmp_path, "bob")
    async with phones(server, tmp_path, "alice") as (alice,):
        call = await alice.call("bob")
        assert call.state is CallState.OUTGOING
        await asyncio.sleep(scaled(0.3))  # bob is still away
        async with started(bob_home, tmp_path) as bob:
            await bob.start()
            incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
            assert incoming.peer == "alice"
            await incoming.accept()
            await wait_state(call, CallState.ACTIVE)
            await call.hangup()
            assert await wait_state(incoming, CallState.ENDED) is CallState.ENDED


@run_async
async def test_call_during_a_brief_disconnect_rings(server: RunningServer, tmp_path: Path) -> None:
    proxy = CuttableProxy(server_port(server))
    await proxy.start()
    try:
        bob_home = await registered(f"http://127.0.0.1:{proxy.port}", tmp_path, "bob")
        async with phones(server, tmp_path, "alice") as (alice,):
            async with started(bob_home, tmp_path) as bob:
                await bob.start()
                await bob.wait_connected(STATE_TIMEOUT_S)
                proxy.cut()
                await eventually(lambda: not bob.connected, "bob's push socket is cut")
                call = await alice.call("bob")  # placed while bob is reconnecting
                assert call.state is CallState.OUTGOING
                proxy.is_cut = False
                incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
                assert incoming.call_id == call.call_id
                await incoming.accept()
                await wait_state(call, CallState.ACTIVE)
                await call.hangup()
    finally:
        await proxy.close()


async def rings_on_server(phone: Phone, call_id: str) -> None:
    """Wait until the server has the call (``Phone.call`` returns before it is placed)."""
    secrets = await asyncio.to_thread(phone.home.unlock, PASSPHRASE)
    api = ServerApi(
        phone.server_url, phone.username, secrets.identity, device_key=secrets.device_key
    )
    try:
        await api.login()
        while True:
            with contextlib.suppress(ServerError):
                await api.status(call_id)
                return
            await asyncio.sleep(0.02)
    finally:
        await api.close()


async def miss_a_call_from_alice(server: RunningServer, tmp_path: Path) -> Home:
    """Bob, offline, is called by alice until the ring timeout; returns bob's home."""
    async with phones(server, tmp_path, "alice", "bob") as (alice, bob):
        # bob called alice once, so she sees his presence (docs/server.md#presence)
        await (await bob.call("alice")).hangup()
        bob_home = bob.home
        await bob.close()
        while [entry.online for entry in await alice.presence(["bob"])] != [False]:
            await asyncio.sleep(0.02)
        call = await alice.call("bob")
        assert call.peer_offline
        await rings_on_server(alice, call.call_id)
        server.clock.advance(RING_TIMEOUT_S + 1)
        assert await wait_state(call, CallState.MISSED) is CallState.MISSED
        assert call.reason == "no answer: bob was offline"
        # the caller's history keeps the attempt, with its reason
        (attempt, *_) = alice.history.list()
        assert attempt["call_id"] == call.call_id
        assert (attempt["direction"], attempt["result"], attempt["reason"]) == (
            "outgoing",
            "missed",
            "no answer: bob was offline",
        )
    return bob_home


@run_async
async def test_missed_while_offline_appears_after_reconnect(
    server: RunningServer, tmp_path: Path
) -> None:
    bob_home = await miss_a_call_from_alice(server, tmp_path)
    async with started(bob_home, tmp_path) as bob:
        seen: asyncio.Queue[MissedCall] = asyncio.Queue()
        bob.on_missed(seen.put_nowait)
        await bob.start()
        missed = await asyncio.wait_for(seen.get(), STATE_TIMEOUT_S)
        assert (missed.caller, missed.reason) == ("alice", "missed while offline")
        (record, *_) = bob.history.list()
        assert (record["peer"], record["direction"], record["result"]) == (
            "alice",
            "incoming",
            "missed",
        )
        assert record["call_id"] == missed.call_id
        assert bob.ringing_calls == []  # it does not ring: it rang out
    # a second start does not tell (or record) it again
    async with started(bob_home, tmp_path) as bob:
        again: asyncio.Queue[MissedCall] = asyncio.Queue()
        bob.on_missed(again.put_nowait)
        await bob.start()
        await bob.wait_connected(STATE_TIMEOUT_S)
        await asyncio.sleep(scaled(0.3))
        assert again.empty()
        assert [r["call_id"] for r in bob.history.list()].count(missed.call_id) == 1


def test_listen_prints_the_missed_call_on_connect(server: RunningServer, tmp_path: Path) -> None:
    bob_home = asyncio.run(miss_a_call_from_alice(server, tmp_path))
    out_path = tmp_path / "listen.out"
    with open(out_path, "w") as out:
        process = subprocess.Popen(
            pqcall_command(bob_home.path, "listen", "--audio-in", "silence", "--audio-out", "null"),
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        asyncio.run(
            eventually(
                lambda: "missed call from alice at " in out_path.read_text(),
                "listen prints the missed call",
                timeout_s=scaled(30.0),
                report=out_path.read_text,
            )
        )
    finally:
        process.kill()
        process.wait()
    history = subprocess.run(
        pqcall_command(bob_home.path, "history"),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60.0),
    )
    assert "alice" in history.stdout and "missed" in history.stdout, history.stdout


# ---------------------------------------------------------------- reasons


@run_async
async def test_a_failure_carries_its_reason_to_both_sides(
    server: RunningServer, tmp_path: Path
) -> None:
    alice = await new_phone(server, tmp_path, "alice")
    bob = await new_phone(server, tmp_path, "bob", audio_in=str(tmp_path / "gone.wav"))
    try:
        await bob.wait_connected(STATE_TIMEOUT_S)
        call = await alice.call("bob")
        incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
        await incoming.accept()
        assert await wait_state(incoming, CallState.FAILED) is CallState.FAILED
        assert await wait_state(call, CallState.FAILED) is CallState.FAILED
        assert incoming.reason is not None and "could not open the microphone" in incoming.reason
        assert call.reason is not None
        assert call.reason.startswith("bob's phone could not open its microphone: ")
        assert "gone.wav" in call.reason
        assert alice.history.list()[0]["reason"] == call.reason
    finally:
        await alice.close()
        await bob.close()


@run_async
async def test_yourself_and_unknown_fail_before_any_device_opens(
    server: RunningServer, tmp_path: Path
) -> None:
    # a source that cannot open: were it opened first, the error would be a DeviceError
    alice = await new_phone(server, tmp_path, "alice", audio_in=str(tmp_path / "none.wav"))
    try:
        with pytest.raises(CallError, match="yourself"):
            await alice.call("alice")
        with pytest.raises(UnknownUser):
            await alice.call("nobody")
        assert alice.current_call is None and alice.history.list() == []
    finally:
        await alice.close()


def test_cli_shows_a_failure_reason_on_both_sides(server: RunningServer, tmp_path: Path) -> None:
    homes = {
        name: asyncio.run(registered(server.base_url, tmp_path, name)) for name in ("alice", "bob")
    }
    microphone = tmp_path / "mic.wav"
    with wave.open(str(microphone), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(48000)
        file.writeframes(b"\0\0" * 4800)
    out_path = tmp_path / "bob.out"
    err_path = tmp_path / "bob.err"
    listen = pqcall_command(
        homes["bob"].path, "listen", "--auto-answer", "--once", "--json", "--audio-out", "null"
    )
    with open(out_path, "w") as out, open(err_path, "w") as err:
        bob = subprocess.Popen(
            [*listen, "--audio-in", str(microphone)],
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
        )
    try:
        asyncio.run(
            eventually(
                lambda: "listening as bob" in err_path.read_text(),
                "bob listens",
                report=err_path.read_text,
            )
        )
        microphone.unlink()  # bob's microphone is gone when the call comes
        alice = subprocess.run(
            pqcall_command(homes["alice"].path, "call", "bob", "--json", *QUIET),
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=scaled(60.0),
        )
        bob.wait(timeout=scaled(30.0))
    finally:
        if bob.poll() is None:
            bob.kill()
            bob.wait()
    report = f"{alice.stdout}{alice.stderr}\nbob:\n{out_path.read_text()}{err_path.read_text()}"
    why = "bob's phone could not open its microphone: "
    assert f"call failed: {why}" in alice.stderr, report
    assert json.loads(alice.stdout)["reason"].startswith(why), report
    assert "call failed: could not open the microphone: " in err_path.read_text(), report
    bob_json = json.loads(out_path.read_text().splitlines()[-1])
    assert bob_json["reason"].startswith("could not open the microphone: "), report
