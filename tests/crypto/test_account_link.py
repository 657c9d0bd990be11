"""Linking a device: the code binds the request, only the requesting device opens the response."""

import dataclasses

import pytest

from pqcall.crypto.account import Device, DeviceList, SignedDeviceList
from pqcall.crypto.account_link import (
    CODE_HASH_LENGTH,
    LinkCode,
    LinkRequest,
    LinkResponse,
    NewDeviceLink,
    seal_response,
)
from pqcall.crypto.filekey import FilePrivateKey
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.keystore import AccountSecrets
from pqcall.exceptions import BadSignature, DecodeError, LocalProtocolError

ACCOUNT = AccountSecrets.generate()
assert ACCOUNT.device_key is not None
LAPTOP = Device.of(ACCOUNT.device_key.public_key(), "laptop")
CURRENT = DeviceList("bob", 3, (LAPTOP,))


def _approve(new: NewDeviceLink, code_text: str, *, account=ACCOUNT) -> bytes:
    """The existing device's side, as account_devices runs it."""
    code = LinkCode.parse(code_text)
    assert code.matches(new.request_encoded)
    request = LinkRequest.decode(new.request_encoded)
    new_list = CURRENT.successor((*CURRENT.devices, request.device()))
    response = LinkResponse(
        account.identity,
        account.file_key,
        account.previous_file_keys,
        SignedDeviceList.sign(new_list, account.identity),
    )
    return seal_response(response, new.request_encoded)


def test_link_round_trip():
    new = NewDeviceLink("bob", "phone")
    code = new.code("ABCDEFGHJKMNPQRS")
    text = code.text()
    assert text.startswith("ABCDEFGHJKMNPQRS-")
    assert len(code.request_hash) * 8 >= 80
    response = new.open(_approve(new, text.lower().replace("-", " ")))
    assert response.account_key.public_key() == ACCOUNT.identity.public_key()
    assert response.file_key.public_key() == ACCOUNT.file_key.public_key()
    verified = response.device_list.verify(ACCOUNT.identity.public_key(), "bob")
    assert verified.version == 4
    assert verified.find(new.device_key.public_key()) is not None
    assert verified.find(LAPTOP.public) is not None


def test_server_swapping_the_request_is_caught_by_the_code():
    """The server hands the existing device its own request instead of the new device's."""
    honest = NewDeviceLink("bob", "phone")
    evil = NewDeviceLink("bob", "phone")
    code = LinkCode.parse(honest.code("LINKID").text())
    assert not code.matches(evil.request_encoded)
    assert code.matches(honest.request_encoded)


def test_response_for_another_request_does_not_open():
    honest = NewDeviceLink("bob", "phone")
    evil = NewDeviceLink("bob", "phone")
    sealed_for_evil = _approve(evil, evil.code("X1").text())
    with pytest.raises(DecodeError, match="does not open"):
        honest.open(sealed_for_evil)


def test_tampered_response_does_not_open():
    new = NewDeviceLink("bob", "phone")
    sealed = bytearray(_approve(new, new.code("X1").text()))
    sealed[-3] ^= 1
    with pytest.raises(DecodeError):
        new.open(bytes(sealed))


def test_response_whose_list_lacks_the_device_is_refused():
    new = NewDeviceLink("bob", "phone")
    response = LinkResponse(
        ACCOUNT.identity, ACCOUNT.file_key, (), SignedDeviceList.sign(CURRENT, ACCOUNT.identity)
    )
    with pytest.raises(LocalProtocolError, match="does not include"):
        new.open(seal_response(response, new.request_encoded))


def test_response_with_a_list_signed_by_another_key_is_refused():
    new = NewDeviceLink("bob", "phone")
    listed = CURRENT.successor((*CURRENT.devices, new.request.device()))
    response = LinkResponse(
        ACCOUNT.identity,
        ACCOUNT.file_key,
        (),
        SignedDeviceList.sign(listed, IdentityPrivateKey.generate()),
    )
    with pytest.raises(BadSignature):
        new.open(seal_response(response, new.request_encoded))


def test_request_must_be_signed_by_its_device_key():
    new = NewDeviceLink("bob", "phone")
    forged = dataclasses.replace(
        new.request, device_public=IdentityPrivateKey.generate().public_key()
    )
    with pytest.raises(DecodeError, match="not signed by its device key"):
        LinkRequest.decode(forged.encode())
    assert LinkRequest.decode(new.request_encoded) == new.request


def test_previous_file_keys_travel():
    rotated = ACCOUNT.rotate_file_key(FilePrivateKey.generate())
    new = NewDeviceLink("bob", "phone")
    response = new.open(_approve(new, new.code("X1").text(), account=rotated))
    assert [k.public_key() for k in response.previous_file_keys] == [ACCOUNT.file_key.public_key()]


@pytest.mark.parametrize(
    "text", ["", "ABC", "ABC-0000-0000-0000-0000", "AB!C-AAAA-AAAA-AAAA-AAAA", "ABC-AAAA-AAAA"]
)
def test_bad_codes(text):
    with pytest.raises(LocalProtocolError):
        LinkCode.parse(text)


def test_code_round_trip():
    code = LinkCode("abcdefghijklmnop", bytes(range(CODE_HASH_LENGTH)))
    assert LinkCode.parse(code.text().upper()) == code  # typed in capitals
    assert LinkCode.parse(code.text()) == code
