"""The signed device list: round trips, who may sign it, and what decoding refuses."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.crypto import encoding
from pqcall.crypto.account import (
    DEVICE_ID_LENGTH,
    MAX_DEVICES,
    Device,
    DeviceList,
    SignedDeviceList,
    device_id,
)
from pqcall.crypto.encoding import Kind
from pqcall.crypto.identity import IdentityPrivateKey, sha256
from pqcall.exceptions import BadSignature, DecodeError, LocalProtocolError, PqcallError

ACCOUNT = IdentityPrivateKey.generate()
MALLORY = IdentityPrivateKey.generate()
LAPTOP = IdentityPrivateKey.generate()
PHONE = IdentityPrivateKey.generate()
RECOVERY = IdentityPrivateKey.generate()


def _list(version: int = 1, *, recovery: bool = True) -> DeviceList:
    return DeviceList(
        "bob",
        version,
        (Device.of(LAPTOP.public_key(), "laptop"), Device.of(PHONE.public_key(), "phone")),
        RECOVERY.public_key() if recovery else None,
    )


def test_device_id_is_the_first_16_bytes_of_the_key_hash():
    public = LAPTOP.public_key()
    assert device_id(public) == sha256(public.encode())[:DEVICE_ID_LENGTH]
    assert len(device_id(public)) == 16
    assert device_id(public) != device_id(PHONE.public_key())


@pytest.mark.parametrize("recovery", [True, False])
def test_round_trip(recovery):
    signed = SignedDeviceList.sign(_list(7, recovery=recovery), ACCOUNT)
    decoded = SignedDeviceList.decode(signed.encode())
    assert decoded == signed
    assert decoded.encode() == signed.encode()
    verified = decoded.verify(ACCOUNT.public_key(), "bob")
    assert verified.version == 7
    assert [d.name for d in verified.devices] == ["laptop", "phone"]
    phone = verified.find(PHONE.public_key())
    assert phone is not None and phone.name == "phone"
    laptop = verified.by_id(device_id(LAPTOP.public_key()))
    assert laptop is not None and laptop.public == LAPTOP.public_key()
    assert verified.find(MALLORY.public_key()) is None
    assert (verified.recovery == RECOVERY.public_key()) is recovery
    assert DeviceList.decode(verified.encode()) == verified


def test_signed_by_another_key_is_refused():
    forged = SignedDeviceList.sign(_list(), MALLORY)
    with pytest.raises(BadSignature):
        forged.verify(ACCOUNT.public_key(), "bob")


def test_device_added_without_the_account_key_is_refused():
    """The server's attack: keep bob's signature, add its own device to the list."""
    signed = SignedDeviceList.sign(_list(), ACCOUNT)
    evil = dataclasses.replace(
        signed.device_list,
        devices=(*signed.device_list.devices, Device.of(MALLORY.public_key(), "laptop 2")),
    )
    tampered = SignedDeviceList.decode(SignedDeviceList(evil, signed.signature).encode())
    with pytest.raises(BadSignature):
        tampered.verify(ACCOUNT.public_key(), "bob")


def test_any_changed_byte_is_refused():
    data = bytearray(SignedDeviceList.sign(_list(), ACCOUNT).encode())
    # a byte inside the first device's name, the version, and the signature
    for index in (12, 30, len(data) - 5):
        changed = bytearray(data)
        changed[index] ^= 0x01
        with pytest.raises(PqcallError):
            SignedDeviceList.decode(bytes(changed)).verify(ACCOUNT.public_key(), "bob")


def test_wrong_username_is_refused_before_the_signature():
    signed = SignedDeviceList.sign(_list(), ACCOUNT)
    with pytest.raises(LocalProtocolError, match="not 'alice'"):
        signed.verify(ACCOUNT.public_key(), "alice")


def test_signature_for_a_list_of_another_name_does_not_move():
    alice_list = dataclasses.replace(_list(), username="alice")
    signed = SignedDeviceList.sign(alice_list, ACCOUNT)
    moved = SignedDeviceList(_list(), signed.signature)
    with pytest.raises(BadSignature):
        moved.verify(ACCOUNT.public_key(), "bob")


def test_signature_of_another_context_is_refused():
    device_list = _list()
    signature = ACCOUNT.sign(device_list.encode(), context=b"pqcall key bundle")
    with pytest.raises(BadSignature):
        SignedDeviceList(device_list, signature).verify(ACCOUNT.public_key(), "bob")


@pytest.mark.parametrize("version", [0, -1, 2**32, True])
def test_version_out_of_range(version):
    with pytest.raises(LocalProtocolError, match="version"):
        _list(version)


def test_version_bounds_accepted():
    assert _list(1).version == 1
    assert _list(2**32 - 1).version == 2**32 - 1
    assert _list(3).successor(_list(3).devices).version == 4


def test_device_limits():
    with pytest.raises(LocalProtocolError, match="1 to 16"):
        DeviceList("bob", 1, ())
    keys = [IdentityPrivateKey.generate().public_key() for _ in range(MAX_DEVICES + 1)]
    devices = tuple(Device.of(key, f"d{i}") for i, key in enumerate(keys))
    assert len(DeviceList("bob", 1, devices[:MAX_DEVICES]).devices) == MAX_DEVICES
    with pytest.raises(LocalProtocolError, match="1 to 16"):
        DeviceList("bob", 1, devices)
    laptop = Device.of(LAPTOP.public_key(), "laptop")
    with pytest.raises(LocalProtocolError, match="twice"):
        DeviceList("bob", 1, (laptop, dataclasses.replace(laptop, name="again")))


@pytest.mark.parametrize("name", ["", "x" * 65, "tab\there", "new\nline"])
def test_bad_device_names(name):
    with pytest.raises(LocalProtocolError, match="device name"):
        Device.of(LAPTOP.public_key(), name)


def test_device_id_must_match_its_key():
    with pytest.raises(LocalProtocolError, match="does not match"):
        Device(device_id(PHONE.public_key()), "laptop", LAPTOP.public_key())


def test_decode_refuses_an_id_that_does_not_match_its_key():
    data = bytearray(_list().encode())
    # the first device id follows: header, text("bob"), u32 version, u8 count
    start = encoding.HEADER_LENGTH + 2 + 3 + 4 + 1
    assert bytes(data[start : start + 16]) == device_id(LAPTOP.public_key())
    data[start] ^= 0xFF
    with pytest.raises(DecodeError, match="does not match"):
        DeviceList.decode(bytes(data))


def test_decode_refuses_zero_devices_and_a_bad_recovery_flag():
    empty = encoding.encode(
        Kind.DEVICE_LIST, encoding.text("bob") + encoding.u32(1) + encoding.u8(0) + encoding.u8(0)
    )
    with pytest.raises(DecodeError, match="1 to 16"):
        DeviceList.decode(empty)
    data = bytearray(_list(recovery=False).encode())
    data[-1] = 2
    with pytest.raises(DecodeError, match="recovery flag"):
        DeviceList.decode(bytes(data))
    zero_version = bytearray(_list().encode())
    zero_version[encoding.HEADER_LENGTH + 5 : encoding.HEADER_LENGTH + 9] = bytes(4)
    with pytest.raises(DecodeError, match="version"):
        DeviceList.decode(bytes(zero_version))


def test_decode_refuses_other_kinds_and_trailing_bytes():
    signed = SignedDeviceList.sign(_list(), ACCOUNT).encode()
    with pytest.raises(DecodeError, match="expected device list"):
        DeviceList.decode(signed)
    with pytest.raises(DecodeError, match="expected signed device list"):
        SignedDeviceList.decode(_list().encode())
    with pytest.raises(DecodeError, match="trailing"):
        SignedDeviceList.decode(signed + b"\x00")
    with pytest.raises(DecodeError, match="truncated"):
        SignedDeviceList.decode(signed[:-1])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_only_decode_error(data):
    with pytest.raises(DecodeError):
        DeviceList.decode(encoding.encode(Kind.DEVICE_LIST, data))
    with pytest.raises(DecodeError):
        SignedDeviceList.decode(encoding.encode(Kind.SIGNED_DEVICE_LIST, data))
    with pytest.raises(DecodeError):
        SignedDeviceList.decode(data)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_truncations_raise_decode_error(data):
    encoded = SignedDeviceList.sign(_list(), ACCOUNT).encode()
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(DecodeError):
        SignedDeviceList.decode(encoded[:cut])


def test_account_secrets_keep_the_device_key():
    from pqcall.crypto.keystore import AccountSecrets

    secrets = AccountSecrets.generate()
    assert secrets.device_key is not None
    assert secrets.device_identity is secrets.device_key
    assert secrets.device_key.public_key() != secrets.identity.public_key()
    restored = AccountSecrets.decode(secrets.encode())
    assert restored.device_key is not None
    assert restored.device_key.public_key() == secrets.device_key.public_key()
    # a home made before linked devices: the account key is the device key
    old = AccountSecrets(secrets.identity, secrets.file_key)
    restored_old = AccountSecrets.decode(old.encode())
    assert restored_old.device_key is None
    assert restored_old.device_identity.public_key() == secrets.identity.public_key()
