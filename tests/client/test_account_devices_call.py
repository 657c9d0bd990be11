"""Calls between devices: a linked device answers with its own key; the account keys are named.

A real server with its relay (in-process), real phones, real calls over loopback UDP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pqcall.client.account_devices import approve_link
from pqcall.client.account_setup import link_home
from pqcall.client.api import ServerApi
from pqcall.client.home import Home
from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone, register
from pqcall.client.phone_callstate import CallState
from pqcall.crypto.account import Device, SignedDeviceList
from pqcall.crypto.handshake import CallerHandshake
from pqcall.crypto.handshake_messages import Answer, Offer
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.exceptions import CallError
from pqcall.server.components import RelayComponent
from pqcall.signaling.messages import InitiateCall, UserView
from tests.harness import run_async, scaled
from tests.server.conftest import RunningServer, make_settings, run_server

PASSPHRASE = "correct horse battery staple"
STATE_TIMEOUT_S = scaled(10.0)
KDF = INSECURE_TEST_KDF_PARAMS
CALL_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def server_with_relay(tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'server.db'}", tmp_path / "data")
    with run_server(replace(settings, relay_port=0), components=(RelayComponent(),)) as running:
        yield running


def _phone(home: Home, tmp_path: Path, name: str) -> Phone:
    media = MediaOptions(audio_in="tone:440", audio_out=str(tmp_path / f"{name}-received.wav"))
    return Phone(home, passphrase=PASSPHRASE, media=media)


@run_async
async def test_a_call_answered_on_a_linked_device(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    server = server_with_relay
    bob_laptop = Home(tmp_path / "bob-laptop")
    bob = (
        await register(
            bob_laptop, "bob", server.base_url, PASSPHRASE, kdf_params=KDF, device_name="laptop"
        )
    ).account
    alice_home = Home(tmp_path / "alice")
    await register(alice_home, "alice", server.base_url, PASSPHRASE, kdf_params=KDF)
    bob_phone_home = Home(tmp_path / "bob-phone")
    codes: asyncio.Queue[str] = asyncio.Queue()
    linking = asyncio.create_task(
        link_home(
            bob_phone_home,
            "bob",
            server.base_url,
            PASSPHRASE,
            codes.put_nowait,
            device_name="phone",
            kdf_params=KDF,
            timeout_s=30,
        )
    )
    code = await asyncio.wait_for(codes.get(), 30)
    async with ServerApi(server.base_url, "bob", bob.identity, device_key=bob.device_key) as api:
        await approve_link(api, bob_laptop, bob, "bob", code)
    await asyncio.wait_for(linking, 30)
    alice = _phone(alice_home, tmp_path, "alice")
    phone = _phone(bob_phone_home, tmp_path, "bob-phone")
    await alice.start()
    await phone.start()
    try:
        await phone.wait_connected(STATE_TIMEOUT_S)
        call = await alice.call("bob")
        incoming = await asyncio.wait_for(phone.next_incoming(), STATE_TIMEOUT_S)
        await incoming.accept()
        assert (
            await asyncio.wait_for(call.wait_for(CallState.ACTIVE), STATE_TIMEOUT_S)
            is CallState.ACTIVE
        )
        await asyncio.wait_for(incoming.wait_for(CallState.ACTIVE), STATE_TIMEOUT_S)
        # the SAS match; each side names the other's account key (what contacts pin)
        assert call.sas is not None and call.sas == incoming.sas
        assert call.peer_identity == bob.identity.public_key()
        assert incoming.peer_identity == alice.identity
        contact = alice.contacts.get("bob")
        assert contact is not None and contact.identity == bob.identity.public_key()
        # ...while each handshake message was signed by the sending device's own key
        detail = await alice._require_api().status(call.call_id)
        assert detail.offer is not None and detail.answer is not None
        alice_device = alice_home.unlock(PASSPHRASE).device_key
        phone_device = bob_phone_home.unlock(PASSPHRASE).device_key
        assert alice_device is not None and phone_device is not None
        assert Offer.parse(detail.offer).caller_identity == alice_device.public_key()
        assert Answer.parse(detail.answer).callee_identity == phone_device.public_key()
        await call.hangup()
        await asyncio.wait_for(incoming.wait_for(CallState.ENDED), STATE_TIMEOUT_S)
    finally:
        await alice.close()
        await phone.close()


@run_async
async def test_a_device_the_server_adds_to_bobs_list_is_refused_by_alices_phone(
    server_with_relay: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server serves bob's list with its own device added (bob's signature kept) and
    rings alice with an offer that device signed as bob: alice's phone refuses both."""
    server = server_with_relay
    bob_home = Home(tmp_path / "bob")
    bob = (await register(bob_home, "bob", server.base_url, PASSPHRASE, kdf_params=KDF)).account
    alice_home = Home(tmp_path / "alice")
    await register(alice_home, "alice", server.base_url, PASSPHRASE, kdf_params=KDF)
    honest = bob_home.load_device_list(bob.identity.public_key(), "bob")
    assert honest is not None
    evil_device = IdentityPrivateKey.generate()
    forged_list = honest.device_list.successor(
        (*honest.device_list.devices, Device.of(evil_device.public_key(), "bob's new phone"))
    )
    forged = SignedDeviceList(forged_list, honest.signature).encode()
    real_user = ServerApi.user

    async def served(self: ServerApi, name: str) -> UserView:
        view = await real_user(self, name)
        return view.model_copy(update={"device_list": forged}) if name == "bob" else view

    monkeypatch.setattr(ServerApi, "user", served)
    alice = _phone(alice_home, tmp_path, "alice")
    await alice.start()
    try:
        await alice.wait_connected(STATE_TIMEOUT_S)
        # "bob" (the server's device) calling alice, who never saw bob before (without the
        # device list check, trust on first use would pin the server's key): refused loudly
        caller = CallerHandshake(
            call_id=bytes.fromhex(CALL_ID),
            our_name="bob",
            our_identity=evil_device,
            their_name="alice",
            their_identity=alice.identity,
        )
        async with ServerApi(
            server.base_url, "bob", bob.identity, device_key=bob.device_key
        ) as bob_api:
            await bob_api.initiate(
                InitiateCall(call_id=CALL_ID, callee="alice", offer=caller.offer(now=time.time()))
            )
            warning = await asyncio.wait_for(alice.warnings.get(), STATE_TIMEOUT_S)
            assert warning.peer == "bob" and "not the one you saved" in warning.message
            for _ in range(50):
                view = await bob_api.status(CALL_ID)
                if str(view.state) != "ringing":
                    break
                await asyncio.sleep(0.1)
            assert str(view.state) == "rejected" and view.reason == "key_mismatch"
        assert alice.ringing_calls == []
        # alice calling bob: the forged list is refused, no call is placed
        with pytest.raises(CallError, match="device list from the server is refused"):
            await alice.call("bob")
    finally:
        await alice.close()
