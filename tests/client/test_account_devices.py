"""Device lists on a phone: its own (migration, signing), its contacts' (verified, no rollback)."""

import pytest

from pqcall.client.account_devices import (
    FIRST_DEVICE_NAME,
    PeerDevices,
    check_peer_devices,
    default_device_name,
    ensure_device_list,
    first_device_list,
)
from pqcall.client.home import Home, key_bundle
from pqcall.crypto.account import Device, SignedDeviceList, device_id
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.keystore import AccountSecrets
from pqcall.crypto.pinning import DevicesSeen, check_device_list
from pqcall.exceptions import CallError, KeystoreError, RemoteProtocolError
from pqcall.signaling.messages import UserView

BOB = AccountSecrets.generate()
SERVER = IdentityPrivateKey.generate()


def _user(signed: SignedDeviceList | None) -> UserView:
    return UserView(
        username="bob",
        identity=BOB.identity.public_key().encode(),
        key_bundle=key_bundle(BOB, "bob", 1_700_000_000),
        created=1_700_000_000,
        device_list=None if signed is None else signed.encode(),
    )


def test_default_device_name_is_a_valid_name():
    name = default_device_name()
    assert 0 < len(name) <= 64
    Device.of(BOB.identity.public_key(), name)  # does not raise


def test_home_keeps_its_list_and_an_old_home_gets_one(tmp_path):
    home = Home(tmp_path / "h")
    old = AccountSecrets(BOB.identity, BOB.file_key)  # made before linked devices
    signed = ensure_device_list(home, old, "bob")
    listed = signed.verify(BOB.identity.public_key(), "bob")
    assert listed.version == 1
    assert [d.public for d in listed.devices] == [BOB.identity.public_key()]
    assert listed.devices[0].name == FIRST_DEVICE_NAME
    # kept, and read back verified
    assert ensure_device_list(home, old, "bob") == signed
    assert home.load_device_list(BOB.identity.public_key(), "bob") == signed


def test_home_refuses_a_list_not_signed_by_its_account(tmp_path):
    home = Home(tmp_path / "h")
    home.save_device_list(
        SignedDeviceList.sign(first_device_list(BOB, "bob", "laptop").device_list, SERVER)
    )
    with pytest.raises(KeystoreError, match="not signed by the account key"):
        home.load_device_list(BOB.identity.public_key(), "bob")


def test_new_account_list_names_its_device_key_and_recovery():
    recovery = IdentityPrivateKey.generate().public_key()
    signed = first_device_list(BOB, "bob", "laptop", recovery)
    listed = signed.verify(BOB.identity.public_key(), "bob")
    assert BOB.device_key is not None
    assert listed.devices[0].device_id == device_id(BOB.device_key.public_key())
    assert listed.recovery == recovery


def test_peer_list_verified_under_the_pinned_key(tmp_path):
    store = PeerDevices(tmp_path / "peer_devices.json")
    signed = first_device_list(BOB, "bob", "laptop")
    check = check_peer_devices(store, _user(signed), "bob", BOB.identity.public_key())
    assert check.device_list == signed.device_list
    assert check.changed is None
    assert BOB.device_key is not None
    assert check.allows(BOB.device_key.public_key(), BOB.identity.public_key())
    assert check.allows(BOB.identity.public_key(), BOB.identity.public_key())
    assert not check.allows(SERVER.public_key(), BOB.identity.public_key())
    assert store.load("bob") == DevicesSeen(1, frozenset({signed.device_list.devices[0].device_id}))


def test_server_adding_a_device_to_bobs_list_is_refused(tmp_path):
    """The server keeps bob's signature and name but adds its own device: alice refuses it."""
    store = PeerDevices(tmp_path / "peer_devices.json")
    honest = first_device_list(BOB, "bob", "laptop")
    evil_list = honest.device_list.successor(
        (*honest.device_list.devices, Device.of(SERVER.public_key(), "bob's new phone"))
    )
    for forged in (
        SignedDeviceList(evil_list, honest.signature),  # bob's old signature
        SignedDeviceList.sign(evil_list, SERVER),  # the server's own signature
    ):
        with pytest.raises(CallError, match="refused"):
            check_peer_devices(store, _user(forged), "bob", BOB.identity.public_key())
    assert store.load("bob") is None  # nothing remembered from a refused list


def test_peer_without_list_must_sign_with_the_account_key(tmp_path):
    store = PeerDevices(tmp_path / "peer_devices.json")
    check = check_peer_devices(store, _user(None), "bob", BOB.identity.public_key())
    assert check.device_list is None
    assert check.allows(BOB.identity.public_key(), BOB.identity.public_key())
    assert BOB.device_key is not None
    assert not check.allows(BOB.device_key.public_key(), BOB.identity.public_key())


def test_rollback_is_refused_and_changes_are_reported(tmp_path):
    store = PeerDevices(tmp_path / "peer_devices.json")
    v1 = first_device_list(BOB, "bob", "laptop")
    phone = IdentityPrivateKey.generate().public_key()
    v2_list = v1.device_list.successor((*v1.device_list.devices, Device.of(phone, "phone")))
    v2 = SignedDeviceList.sign(v2_list, BOB.identity)
    check_peer_devices(store, _user(v1), "bob", BOB.identity.public_key())
    check = check_peer_devices(store, _user(v2), "bob", BOB.identity.public_key())
    assert check.changed is not None
    assert check.changed.added == ("phone",)
    assert check.changed.removed == ()
    with pytest.raises(CallError, match="went back from version 2 to 1"):
        check_peer_devices(store, _user(v1), "bob", BOB.identity.public_key())
    v3 = SignedDeviceList.sign(v2_list.successor((Device.of(phone, "phone"),)), BOB.identity)
    check = check_peer_devices(store, _user(v3), "bob", BOB.identity.public_key())
    assert check.changed is not None
    assert check.changed.removed == (v1.device_list.devices[0].device_id,)
    seen = store.load("bob")
    assert seen is not None and seen.version == 3


def test_same_version_different_devices_is_refused():
    v1 = first_device_list(BOB, "bob", "laptop").device_list
    seen, _ = check_device_list("bob", None, v1)
    other = v1.successor((Device.of(SERVER.public_key(), "x"),))
    forked = type(v1)(v1.username, 1, other.devices, v1.recovery)
    with pytest.raises(RemoteProtocolError, match="two different device lists"):
        check_device_list("bob", seen, forked)
