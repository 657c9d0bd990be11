"""Group calls with the library: a real server (forwarder included), phones in one process.

Each phone sends a different tone through its own SFrame sender key; the
forwarder fans the packets out; every phone's recording must hold every other
phone's tone and not its own (the server never sends a member its own packets).
"""

from __future__ import annotations

import asyncio
import contextlib
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pqcall.client.group_call import GroupCall
from pqcall.client.group_summary import group_summary
from pqcall.client.home import Home
from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone, register
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.exceptions import ApiError
from pqcall.server import group_service
from pqcall.server.group_service import GROUPS_EXTRA, GroupComponent
from tests.harness import eventually, run_async, scaled

from ..server.conftest import RunningServer, make_settings, run_server

PASSPHRASE = "correct horse battery staple"
KEYS_TIMEOUT_S = scaled(20.0)
TONES = {"alice": 440, "bob": 620, "carol": 860, "dave": 1100, "mallory": 1300}
MORE_TONES = {"erin": 1500, "frank": 1700, "grace": 1900}  # for the eight-phone call


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'server.db'}", tmp_path / "data")
    with run_server(replace(settings, relay_port=0)) as running:
        yield running


async def new_phone(
    server: RunningServer, tmp_path: Path, name: str, *, auto_answer: bool = True
) -> Phone:
    home = Home(tmp_path / name)
    await register(home, name, server.base_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    options = MediaOptions(
        audio_in=f"tone:{(TONES | MORE_TONES)[name]}",
        audio_out=str(tmp_path / f"{name}-received.wav"),
    )
    phone = Phone(home, passphrase=PASSPHRASE, media=options, auto_answer=auto_answer)
    await phone.start()
    await phone.wait_connected(scaled(10.0))
    return phone


@contextlib.asynccontextmanager
async def phones(server: RunningServer, tmp_path: Path, *names: str) -> AsyncIterator[list[Phone]]:
    started: list[Phone] = []
    try:
        for name in names:
            started.append(await new_phone(server, tmp_path, name))
        yield started
    finally:
        for phone in started:
            await phone.close()


def everyone_has_keys(calls: list[GroupCall]) -> bool:
    names = {call.context.username for call in calls}
    return all(set(call.joined_names()) == names - {call.context.username} for call in calls)


def tone_levels(path: Path) -> dict[int, float]:
    """Energy near each test tone in the recording, relative to the strongest."""
    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    levels = {f: float(spectrum[(freqs > f - 15) & (freqs < f + 15)].max()) for f in TONES.values()}
    top = max(levels.values()) or 1.0
    return {f: level / top for f, level in levels.items()}


async def invited_call(phone: Phone) -> GroupCall:
    return await asyncio.wait_for(phone.next_group_invite(), scaled(10.0))


@run_async
async def test_three_phones_hear_each_other(server: RunningServer, tmp_path: Path) -> None:
    async with phones(server, tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
        call = await alice.group_call(["bob", "carol"])
        calls = [call, await invited_call(bob), await invited_call(carol)]
        await eventually(lambda: everyone_has_keys(calls), timeout_s=KEYS_TIMEOUT_S, what="keys")
        await asyncio.sleep(scaled(2.5))
        codes = {c.group_code for c in calls}
        assert len(codes) == 1 and None not in codes, codes
        summaries = [group_summary(c) for c in calls]
        for summary in summaries:
            assert summary["group"] is True
            assert len(summary["participants"]) == 2
            assert all(p["packets_received"] > 20 for p in summary["participants"]), summary
            assert all(p["trust"] == "new" for p in summary["participants"]), summary
        for c in calls:
            await c.leave()
    for name in ("alice", "bob", "carol"):
        levels = tone_levels(tmp_path / f"{name}-received.wav")
        others = [TONES[n] for n in ("alice", "bob", "carol") if n != name]
        assert all(levels[f] > 0.2 for f in others), (name, levels)
        assert levels[TONES[name]] < 0.05, (name, levels)


@run_async
async def test_uninvited_account_cannot_join(server: RunningServer, tmp_path: Path) -> None:
    async with phones(server, tmp_path, "alice", "bob", "dave") as (alice, _bob, dave):
        call = await alice.group_call(["bob"])
        from pqcall.client.group_api import GroupApi

        api = GroupApi(dave._require_api())
        with pytest.raises(ApiError) as refused:
            await api.accept(call.call_id)
        assert refused.value.status == 403
        with pytest.raises(ApiError) as refused:
            await api.message(call.call_id, "alice", b"\x01" * 20)
        assert refused.value.status == 403
        await call.leave()


@run_async
async def test_server_injected_member_is_warned_about(
    server: RunningServer, tmp_path: Path
) -> None:
    async with phones(server, tmp_path, "alice", "bob", "mallory") as (alice, bob, mallory):
        call = await alice.group_call(["bob"])
        bobs = await invited_call(bob)
        await eventually(lambda: everyone_has_keys([call, bobs]), timeout_s=KEYS_TIMEOUT_S)
        # the server adds mallory on its own: an invitation no member signed
        context = server.app.state.context
        component = context.extras[GROUPS_EXTRA]
        assert isinstance(component, GroupComponent) and component.relay is not None

        async def inject() -> None:
            account = await context.storage.accounts.get_account_by_name("mallory")
            group = component.table.get(call.call_id)
            assert group is not None and account is not None
            by = group.joined()[0].account_id
            component.table.invite(call.call_id, by, ("mallory", account.id, b"\x00" * 64), 0.0)
            component.table.accept(call.call_id, account.id, 0.0)
            await group_service._push(context, group)

        server_loop = component.relay._loop
        assert server_loop is not None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(inject(), server_loop))
        for phone in (alice, bob):
            warning = await asyncio.wait_for(phone.warnings.get(), scaled(10.0))
            assert warning.peer == "mallory" and "server added" in warning.message
        await call.leave()
        await bobs.leave()
        del mallory


def frames_now(calls: list[GroupCall]) -> dict[str, bytes]:
    """One real frame from each call's sender, under the key it sends with right now."""
    now = asyncio.get_running_loop().time()
    found = {}
    for call in calls:
        assert call.keyring is not None
        found[call.context.username] = call.keyring.protect(b"frame", now=now)
    return found


def opens(call: GroupCall, packet: bytes) -> bool:
    assert call.keyring is not None
    return call.keyring.unprotect(packet, asyncio.get_running_loop().time()) is not None


def switched(call: GroupCall, generation: int) -> bool:
    ring = call.keyring
    return ring is not None and ring.pending_key is None and ring.own_key.generation > generation


@run_async
async def test_join_and_leave_rekey(server: RunningServer, tmp_path: Path) -> None:
    names = ("alice", "bob", "carol", "dave")
    async with phones(server, tmp_path, *names) as (alice, bob, carol, dave):
        first = [await alice.group_call(["bob", "carol"])]
        first += [await invited_call(bob), await invited_call(carol)]
        await eventually(lambda: everyone_has_keys(first), timeout_s=KEYS_TIMEOUT_S)
        before_join = frames_now(first)
        generations = {c.context.username: c.keyring.own_key.generation for c in first}  # type: ignore[union-attr]
        await first[0].invite("dave")
        daves = await invited_call(dave)
        everyone = [*first, daves]
        await eventually(lambda: everyone_has_keys(everyone), timeout_s=KEYS_TIMEOUT_S)
        await eventually(
            lambda: all(switched(c, generations[c.context.username]) for c in first),
            timeout_s=KEYS_TIMEOUT_S,
            what="everyone sends under a key drawn at the join",
        )
        after_join = frames_now(everyone)
        for name, packet in before_join.items():
            assert not opens(daves, packet), f"the newcomer opened {name}'s frame from before"
            assert opens(daves, after_join[name]), f"the newcomer cannot open {name}'s new frame"
        # carol leaves: alice, bob and dave draw new keys; carol keeps what she held
        carols = everyone[2]
        generations = {c.context.username: c.keyring.own_key.generation for c in everyone}  # type: ignore[union-attr]
        await carols.leave()
        remaining = [everyone[0], everyone[1], daves]
        await eventually(
            lambda: all(switched(c, generations[c.context.username]) for c in remaining),
            timeout_s=KEYS_TIMEOUT_S,
            what="the others send under keys drawn after the leave",
        )
        after_leave = frames_now(remaining)
        for name, packet in after_leave.items():
            assert not opens(carols, packet), f"the leaver opened {name}'s frame from after"
            listener = everyone[1] if name != "bob" else everyone[0]
            assert opens(listener, packet), f"{listener.context.username} cannot open {name}'s"
        for call in remaining:
            await call.leave()


def pairwise(calls: list[GroupCall]) -> tuple[int, int]:
    """Requests made and messages carried for pairwise messages, over all ``calls``."""
    return sum(c._outbox.requests for c in calls), sum(c._outbox.messages for c in calls)


@pytest.mark.slow
@run_async
async def test_join_of_the_eighth_member_needs_few_requests(
    server: RunningServer, tmp_path: Path
) -> None:
    names = ["alice", "bob", "carol", "dave", "mallory", "erin", "frank", "grace"]
    async with phones(server, tmp_path, *names) as started:
        call = await started[0].group_call(names[1:7])
        calls = [call] + [await invited_call(phone) for phone in started[1:7]]
        await eventually(lambda: everyone_has_keys(calls), timeout_s=KEYS_TIMEOUT_S, what="7 keys")
        await asyncio.sleep(scaled(1.0))  # the last roster signatures and acks
        requests_before, messages_before = pairwise(calls)
        await call.invite("grace")
        calls.append(await invited_call(started[7]))
        await eventually(
            lambda: everyone_has_keys(calls), timeout_s=KEYS_TIMEOUT_S * 2, what="8 keys"
        )
        await asyncio.sleep(scaled(1.0))
        requests, messages = pairwise(calls)
        requests -= requests_before
        messages -= messages_before
        # one request per message before batching: each of the 7 sends grace its offer or
        # answer, its key and a roster signature, and its new key to the 6 others (and acks)
        assert messages >= 7 * 6, (requests, messages)
        assert requests * 3 <= messages, (requests, messages)
        for c in calls:
            await c.leave()
