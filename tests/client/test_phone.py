"""The softphone library end to end: a real server, two phones, real calls over loopback UDP."""

from __future__ import annotations

import asyncio
import contextlib
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pqcall.client.call import Call
from pqcall.client.home import Home
from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone, register
from pqcall.client.phone_callstate import CallState
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.exceptions import (
    CallError,
    DeviceError,
    KeyChangedError,
    UnknownUser,
    WrongPassphrase,
)
from pqcall.server.components import RelayComponent
from pqcall.signaling.messages import Presence
from tests.harness import run_async, scaled

from ..server.conftest import RunningServer, make_settings, run_server

PASSPHRASE = "correct horse battery staple"
STATE_TIMEOUT_S = scaled(10.0)  # for a call to reach a state


@pytest.fixture
def server_with_relay(tmp_path: Path) -> Iterator[RunningServer]:
    """A server with its media relay, on SQLite (the storage is tested on both databases
    in tests/server; here it only carries calls)."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'server.db'}", tmp_path / "data")
    with run_server(replace(settings, relay_port=0), components=(RelayComponent(),)) as running:
        yield running


async def new_phone(server: RunningServer, tmp_path: Path, name: str, **media: Any) -> Phone:
    home = Home(tmp_path / name)
    await register(home, name, server.base_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    options = MediaOptions(
        audio_in=media.pop("audio_in", "tone:440"),
        audio_out=media.pop("audio_out", str(tmp_path / f"{name}-received.wav")),
        **media,
    )
    phone = Phone(home, passphrase=PASSPHRASE, media=options)
    await phone.start()
    return phone


@contextlib.asynccontextmanager
async def phones(
    server: RunningServer, tmp_path: Path, *names: str, **media: Any
) -> AsyncIterator[list[Phone]]:
    started: list[Phone] = []
    try:
        for name in names:
            started.append(await new_phone(server, tmp_path, name, **media))
        for phone in started:
            await phone.wait_connected(STATE_TIMEOUT_S)
        yield started
    finally:
        for phone in started:
            await phone.close()


async def wait_state(call: Call, *states: CallState) -> CallState:
    return await asyncio.wait_for(call.wait_for(*states), STATE_TIMEOUT_S)


def wav_rms(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


@run_async
async def test_call_answer_talk_hang_up(server_with_relay: RunningServer, tmp_path: Path) -> None:
    async with phones(server_with_relay, tmp_path, "alice", "bob") as (alice, bob):
        call = await alice.call("bob")
        assert call.state is CallState.OUTGOING
        incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
        assert incoming.peer == "alice" and incoming.state is CallState.INCOMING
        await incoming.accept()
        assert await wait_state(call, CallState.ACTIVE) is CallState.ACTIVE
        assert await wait_state(incoming, CallState.ACTIVE) is CallState.ACTIVE
        assert call.sas is not None and call.sas == incoming.sas
        assert call.path is not None and call.path.kind == "direct"
        await asyncio.sleep(1.5)
        stats = incoming.stats()
        assert stats is not None and stats.packets_received > 40
        await call.hangup()
        assert call.summary()["result"] == "ended"
        assert await wait_state(incoming, CallState.ENDED) is CallState.ENDED
        assert incoming.reason == "peer hung up"
        # the server records who hung up, although both phones tell it
        server_view = await alice._require_api().status(call.call_id)
        assert server_view.state == "ended" and server_view.ended_by == "caller"
        summary = call.summary()
        assert summary["result"] == "ended" and summary["path"] == "direct"
        assert summary["packets_received"] > 40 and summary["first_playout_unix"] is not None
        assert alice.history.list()[0]["call_id"] == call.call_id
        assert bob.history.list()[0]["call_id"] == call.call_id
    assert wav_rms(tmp_path / "bob-received.wav") > 500  # alice's tone arrived
    assert wav_rms(tmp_path / "alice-received.wav") > 500


def wav_dominant_hz(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    spectrum = np.abs(np.fft.rfft(samples[4_800:].astype(np.float64)))  # past the start
    return float(np.argmax(spectrum)) * 48_000 / len(samples[4_800:])


@run_async
async def test_devices_chosen_while_ringing_are_the_calls_devices(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    async with phones(server_with_relay, tmp_path, "alice", "bob") as (alice, bob):
        call = await alice.call("bob")  # alice's audio is open while it rings
        incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
        await call.set_audio("tone:880", str(tmp_path / "alice-headset.wav"))
        with pytest.raises(DeviceError):
            await incoming.set_audio(str(tmp_path / "missing.wav"))
        await incoming.set_audio("tone:660")  # bob's audio opens when he answers
        await incoming.accept()
        await wait_state(incoming, CallState.ACTIVE)
        await asyncio.sleep(1.0)
        await call.hangup()
        await wait_state(incoming, CallState.ENDED)
    assert wav_dominant_hz(tmp_path / "bob-received.wav") == pytest.approx(880, abs=5)
    assert wav_dominant_hz(tmp_path / "alice-headset.wav") == pytest.approx(660, abs=5)
    assert wav_rms(tmp_path / "alice-received.wav") == 0.0  # replaced before any audio


@run_async
async def test_callee_hangs_up(server_with_relay: RunningServer, tmp_path: Path) -> None:
    async with phones(server_with_relay, tmp_path, "alice", "bob") as (alice, bob):
        call = await alice.call("bob")
        incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
        await incoming.accept()
        await wait_state(call, CallState.ACTIVE)
        await incoming.hangup()
        assert await wait_state(call, CallState.ENDED) is CallState.ENDED
        assert call.reason == "peer hung up"
        server_view = await alice._require_api().status(call.call_id)
        assert server_view.ended_by == "callee"


@run_async
async def test_reject(server_with_relay: RunningServer, tmp_path: Path) -> None:
    async with phones(server_with_relay, tmp_path, "alice", "bob") as (alice, bob):
        call = await alice.call("bob")
        incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
        await incoming.reject()
        assert incoming.state is CallState.REJECTED
        assert await wait_state(call, CallState.REJECTED) is CallState.REJECTED
        assert call.reason == "declined"


@run_async
async def test_presence_is_asked_and_call_partners_are_pushed(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    async with phones(server_with_relay, tmp_path, "alice", "bob") as (alice, bob):
        # only who called alice (or answered her) shows her presence; unknown names are left out
        assert await alice.presence(["bob", "nobody"]) == []
        # bob calls (even a call alice declines): the server shows bob to her and pushes changes
        call = await bob.call("alice")
        await (await asyncio.wait_for(alice.next_incoming(), STATE_TIMEOUT_S)).reject()
        await wait_state(call, CallState.REJECTED)
        (entry,) = await alice.presence(["bob", "nobody"])
        assert entry.username == "bob" and entry.online
        pushed: asyncio.Queue[Presence] = asyncio.Queue()
        alice.on_presence(pushed.put_nowait)
        await bob.close()
        gone = await asyncio.wait_for(pushed.get(), STATE_TIMEOUT_S)
        assert gone.username == "bob" and not gone.online and gone.last_seen is not None


@run_async
async def test_caller_cancels_while_ringing(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    async with phones(server_with_relay, tmp_path, "alice", "bob") as (alice, bob):
        call = await alice.call("bob")
        incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
        await call.hangup()
        assert call.summary()["result"] == "ended" and call.reason == "cancelled"
        assert await wait_state(incoming, CallState.MISSED) is CallState.MISSED


@run_async
async def test_second_call_gets_busy(server_with_relay: RunningServer, tmp_path: Path) -> None:
    async with phones(server_with_relay, tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        call = await alice.call("bob")
        incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
        await incoming.accept()
        await wait_state(call, CallState.ACTIVE)
        second = await carol.call("bob")
        assert await wait_state(second, CallState.BUSY) is CallState.BUSY
        assert call.state is CallState.ACTIVE  # the first call goes on
        with pytest.raises(CallError, match="already in a call"):
            await alice.call("carol")
        await call.hangup()


@run_async
async def test_offline_and_unknown_callee(server_with_relay: RunningServer, tmp_path: Path) -> None:
    await register(
        Home(tmp_path / "dave"),
        "dave",
        server_with_relay.base_url,
        PASSPHRASE,
        kdf_params=INSECURE_TEST_KDF_PARAMS,
    )
    async with phones(server_with_relay, tmp_path, "alice") as (alice,):
        # an offline callee is still called (issue 21): the server rings dave if he comes back
        offline = await alice.call("dave")
        assert offline.state is CallState.OUTGOING
        await offline.hangup()
        assert (offline.state, offline.reason) == (CallState.ENDED, "cancelled")
        with pytest.raises(UnknownUser):
            await alice.call("nobody")
        with pytest.raises(CallError, match="yourself"):
            await alice.call("Alice")
        assert alice.current_call is None


@run_async
async def test_changed_key_is_refused_loudly(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    async with phones(server_with_relay, tmp_path, "alice", "bob") as (alice, _bob):
        # alice pinned another key for bob earlier: what the server presents now differs
        alice.contacts.check("bob", IdentityPrivateKey.generate().public_key())
        with pytest.raises(KeyChangedError, match="not the one you saved"):
            await alice.call("bob")
        warning = alice.warnings.get_nowait()
        assert warning.peer == "bob"
        assert alice.current_call is None


@run_async
async def test_wrong_passphrase(server_with_relay: RunningServer, tmp_path: Path) -> None:
    home = Home(tmp_path / "erin")
    await register(
        home, "erin", server_with_relay.base_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS
    )
    with pytest.raises(WrongPassphrase):
        await Phone(home, passphrase="not it").start()


@run_async
async def test_relay_when_direct_path_fails(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    # both phones advertise an address nobody listens on: only the relay works
    async with phones(
        server_with_relay,
        tmp_path,
        "alice",
        "bob",
        advertise=("127.0.0.1", 9),
        direct_timeout_s=0.5,
    ) as (alice, bob):
        call = await alice.call("bob")
        incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
        await incoming.accept()
        await wait_state(call, CallState.ACTIVE)
        await wait_state(incoming, CallState.ACTIVE)
        assert call.path is not None and call.path.kind == "relay"
        assert incoming.path is not None and incoming.path.kind == "relay"
        await asyncio.sleep(1.0)
        stats = call.stats()
        assert stats is not None and stats.packets_received > 20
        await call.hangup()
        assert await wait_state(incoming, CallState.ENDED) is CallState.ENDED
