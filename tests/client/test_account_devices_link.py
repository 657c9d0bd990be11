"""Linking, unlinking and recovering against a real server (in-process, SQLite), real crypto."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pqcall.client.account_devices import (
    PeerDevices,
    approve_link,
    check_peer_devices,
    unlink_device,
)
from pqcall.client.account_setup import link_home, recover_home
from pqcall.client.api import ServerApi
from pqcall.client.home import Home
from pqcall.client.peers import check_peer
from pqcall.client.phone import register
from pqcall.crypto.account_link import LinkCode
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS, AccountSecrets
from pqcall.crypto.recovery import new_recovery_words
from pqcall.exceptions import ApiError, CallError, KeyChangedError
from pqcall.signaling.account_messages import DevicesView
from tests.harness import run_async
from tests.server.conftest import RunningServer

PASSPHRASE = "correct horse battery staple"
KDF = INSECURE_TEST_KDF_PARAMS


def _api(server: RunningServer, name: str, secrets: AccountSecrets) -> ServerApi:
    return ServerApi(server.base_url, name, secrets.identity, device_key=secrets.device_key)


async def _server_version(server: RunningServer, name: str, secrets: AccountSecrets) -> int:
    async with _api(server, name, secrets) as api:
        response = await api.authed_request("GET", "/account/devices")
        return DevicesView.model_validate(response.json()).version


async def _link(
    server: RunningServer, tmp_path: Path, bob: AccountSecrets, home: Home, *, code_edit=None
) -> AccountSecrets:
    """Link a second home for bob; ``code_edit`` changes the code the person types."""
    codes: asyncio.Queue[str] = asyncio.Queue()
    new_home = Home(tmp_path / "bob-phone")
    linking = asyncio.create_task(
        link_home(
            new_home,
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
    typed = code if code_edit is None else code_edit(code)
    try:
        async with _api(server, "bob", bob) as api:
            await approve_link(api, home, bob, "bob", typed)
    except BaseException:
        linking.cancel()
        raise
    return await asyncio.wait_for(linking, 30)


@run_async
async def test_link_then_unlink(server: RunningServer, tmp_path: Path) -> None:
    home = Home(tmp_path / "bob-laptop")
    bob = (
        await register(
            home, "bob", server.base_url, PASSPHRASE, kdf_params=KDF, device_name="laptop"
        )
    ).account
    linked = await _link(server, tmp_path, bob, home)
    # the new device holds the account key and file key, and its own device key
    assert linked.identity.public_key() == bob.identity.public_key()
    assert linked.file_key.public_key() == bob.file_key.public_key()
    assert linked.device_key is not None and bob.device_key is not None
    assert linked.device_key.public_key() != bob.device_key.public_key()
    new_home = Home(tmp_path / "bob-phone")
    reopened = new_home.unlock(PASSPHRASE)
    assert reopened.device_key is not None
    assert reopened.device_key.public_key() == linked.device_key.public_key()
    config = new_home.load_config()
    assert config is not None and config.username == "bob"
    # both homes and the server hold list v2 with both devices; the phone logs in
    assert await _server_version(server, "bob", linked) == 2
    for h in (home, new_home):
        signed = h.load_device_list(bob.identity.public_key(), "bob")
        assert signed is not None
        assert sorted(d.name for d in signed.device_list.devices) == ["laptop", "phone"]
    # alice sees the new device quietly: same pinned key, a DevicesChanged notice
    alice_store = PeerDevices(tmp_path / "alice.json")
    async with _api(server, "bob", bob) as api:
        user = await api.user("bob")
    check = check_peer_devices(alice_store, user, "bob", bob.identity.public_key())
    assert check.allows(linked.device_key.public_key(), bob.identity.public_key())
    # unlink the phone: its logins are refused, the list is v3
    async with _api(server, "bob", bob) as api:
        await unlink_device(api, home, bob, "bob", "phone")
    with pytest.raises(ApiError, match="does not verify"):
        async with _api(server, "bob", linked) as api:
            await api.login()
    assert await _server_version(server, "bob", bob) == 3


@run_async
async def test_a_mistyped_or_swapped_code_links_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    home = Home(tmp_path / "bob-laptop")
    bob = (await register(home, "bob", server.base_url, PASSPHRASE, kdf_params=KDF)).account

    def swap_hash(code: str) -> str:
        parsed = LinkCode.parse(code)
        return LinkCode(parsed.link_id, bytes(len(parsed.request_hash))).text()

    with pytest.raises(CallError, match="not the one that showed it"):
        await _link(server, tmp_path, bob, home, code_edit=swap_hash)
    assert await _server_version(server, "bob", bob) == 1
    signed = home.load_device_list(bob.identity.public_key(), "bob")
    assert signed is not None and signed.device_list.version == 1


@run_async
async def test_recover_after_losing_every_home(server: RunningServer, tmp_path: Path) -> None:
    home = Home(tmp_path / "bob")
    registration = await register(home, "bob", server.base_url, PASSPHRASE, kdf_params=KDF)
    words = registration.recovery_words
    assert words is not None
    old = registration.account
    # alice pins bob's key
    alice_home = Home(tmp_path / "alice")
    alice = (
        await register(alice_home, "alice", server.base_url, PASSPHRASE, kdf_params=KDF)
    ).account
    async with _api(server, "alice", alice) as api:
        await check_peer(api, alice_home.contacts(), "bob")
    # every home of bob is lost; wrong words are refused by the server with 403
    with pytest.raises(ApiError) as refused:
        await recover_home(
            Home(tmp_path / "mallory"),
            "bob",
            server.base_url,
            new_recovery_words(),
            PASSPHRASE,
            kdf_params=KDF,
        )
    assert refused.value.status == 403
    new_home = Home(tmp_path / "bob-again")
    recovered = await recover_home(
        new_home, "bob", server.base_url, words, PASSPHRASE, kdf_params=KDF
    )
    assert recovered.identity.public_key() != old.identity.public_key()
    # the new device logs in; the old device key does not
    async with _api(server, "bob", recovered) as api:
        await api.login()
    with pytest.raises(ApiError):
        async with _api(server, "bob", old) as api:
            await api.login()
    # alice gets the loud key-change warning
    async with _api(server, "alice", alice) as api:
        with pytest.raises(KeyChangedError, match="not the one you saved"):
            await check_peer(api, alice_home.contacts(), "bob")
    # the same words recover again (the recovery key stays in the new list)
    again = await recover_home(
        Home(tmp_path / "bob-third"), "bob", server.base_url, words, PASSPHRASE, kdf_params=KDF
    )
    assert again.identity.public_key() != recovered.identity.public_key()
