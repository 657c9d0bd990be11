"""Device lists against a real server: registration publishes one, old homes migrate, rotation.

A real in-process server (uvicorn, SQLite) and real crypto; the phones log in
with their device keys.
"""

from __future__ import annotations

from pathlib import Path

from pqcall.client.account_devices import (
    PeerDevices,
    check_peer_devices,
    rotate_device_key,
)
from pqcall.client.api import ServerApi
from pqcall.client.home import AccountConfig, Home, key_bundle
from pqcall.client.phone import Phone, register
from pqcall.crypto.account import SignedDeviceList, device_id
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS, AccountSecrets
from pqcall.crypto.recovery import recovery_key
from pqcall.signaling.account_messages import DevicesView
from tests.harness import run_async
from tests.server.conftest import RunningServer

PASSPHRASE = "correct horse battery staple"


def _api(server: RunningServer, name: str, secrets: AccountSecrets) -> ServerApi:
    return ServerApi(server.base_url, name, secrets.identity, device_key=secrets.device_key)


@run_async
async def test_registration_publishes_a_list_with_device_and_recovery_keys(
    server: RunningServer, tmp_path: Path
) -> None:
    home = Home(tmp_path / "bob")
    registration = await register(
        home,
        "bob",
        server.base_url,
        PASSPHRASE,
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        device_name="laptop",
    )
    words = registration.recovery_words
    assert words is not None and len(words.split()) == 24
    secrets = registration.account
    assert secrets.device_key is not None
    signed = home.load_device_list(secrets.identity.public_key(), "bob")
    assert signed is not None
    listed = signed.device_list
    assert listed.version == 1
    assert [d.name for d in listed.devices] == ["laptop"]
    assert listed.devices[0].public == secrets.device_key.public_key()
    assert listed.recovery == recovery_key(words).public_key()
    # the words are nowhere in the home
    for path in home.path.rglob("*"):
        if path.is_file():
            assert words.split()[0].encode() + b" " + words.split()[1].encode() not in (
                path.read_bytes()
            )
    # the server serves the same list to contacts, and the device key logs in
    async with _api(server, "bob", secrets) as api:
        await api.login()
        user = await api.user("bob")
        assert user.device_list == signed.encode()
    # registering again keeps the account and shows no new words
    again = await register(
        home, "bob", server.base_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS
    )
    assert again.recovery_words is None


@run_async
async def test_old_home_publishes_its_first_list_at_start(
    server: RunningServer, tmp_path: Path
) -> None:
    """A home from before linked devices: no device key, no list; the phone migrates it."""
    home = Home(tmp_path / "carol")
    old = AccountSecrets(AccountSecrets.generate().identity, AccountSecrets.generate().file_key)
    home.create_account(PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    home.save_secrets(old, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    async with ServerApi(server.base_url, "carol", old.identity) as api:
        await api.register(key_bundle(old, "carol", 1_700_000_000))
        server_name = api.server_name
        assert (await api.user("carol")).device_list is None
    assert server_name is not None
    home.save_config(AccountConfig("carol", server.base_url, server_name, 1_700_000_000))
    phone = Phone(home, passphrase=PASSPHRASE)
    await phone.start()
    try:
        api = phone._require_api()
        view = DevicesView.model_validate(
            (await api.authed_request("GET", "/account/devices")).json()
        )
        assert view.version == 1 and view.device_list is not None
        listed = SignedDeviceList.decode(view.device_list).verify(
            old.identity.public_key(), "carol"
        )
        assert [d.device_id for d in listed.devices] == [device_id(old.identity.public_key())]
    finally:
        await phone.close()


@run_async
async def test_rotation_is_followed_quietly_by_a_contact(
    server: RunningServer, tmp_path: Path
) -> None:
    home = Home(tmp_path / "bob")
    registration = await register(
        home, "bob", server.base_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS
    )
    bob = registration.account
    alice_store = PeerDevices(tmp_path / "alice-peer-devices.json")
    async with _api(server, "bob", bob) as api:
        first = check_peer_devices(
            alice_store, await api.user("bob"), "bob", bob.identity.public_key()
        )
        assert first.device_list is not None and first.device_list.version == 1
        rotated = await rotate_device_key(
            api, home, bob, "bob", PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS
        )
    assert rotated.device_key is not None and bob.device_key is not None
    assert rotated.device_key.public_key() != bob.device_key.public_key()
    assert rotated.identity.public_key() == bob.identity.public_key()  # the pin holds
    # the keystore holds the new device key
    reopened = home.unlock(PASSPHRASE)
    assert reopened.device_key is not None
    assert reopened.device_key.public_key() == rotated.device_key.public_key()
    async with _api(server, "bob", rotated) as api:
        await api.login()  # the new key logs in
        user = await api.user("bob")
    check = check_peer_devices(alice_store, user, "bob", bob.identity.public_key())
    assert check.device_list is not None and check.device_list.version == 2
    assert check.changed is not None and check.changed.added == (first.device_list.devices[0].name,)
    assert check.allows(rotated.device_key.public_key(), bob.identity.public_key())
    assert not check.allows(bob.device_key.public_key(), bob.identity.public_key())
