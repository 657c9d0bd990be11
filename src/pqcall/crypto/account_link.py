"""Linking a new device to an account: the request, the code, the sealed response.

The new device has no key the account knows; the person carries a short code
from the new device's screen to an existing device's. The server only relays
two opaque blobs, and the code is what stops it swapping them::

    new device                          server                 existing device
    device key, ephemeral KEM key
    LinkRequest (signed by device key) -> link_id
    shows  code = link_id - H(request)[:10]  ~~~~~ typed by the person ~~~~~>
                                       <- GET request by link_id
                                          check H(request) against the code,
                                          the request's self-signature, the name;
                                          sign device list v+1 with the account key
                                       <- LinkResponse sealed to the KEM key
    poll with the secret behind poll_hash ->
    open: account key, file keys, signed device list

The code carries 80 bits of SHA-256 of the encoded request
(:data:`CODE_HASH_LENGTH`), so a server that substitutes its own request (its
own device key and KEM key) must find a second preimage of those 80 bits
while the person reads the code. The response is sealed with cryptography's
HPKE (RFC 9180, ``MLKEM768_X25519`` + HKDF-SHA256 + AES-256-GCM, the suite the
file format uses) to the request's ephemeral X25519 + ML-KEM-768 key, with the
request's hash as HPKE ``info``: only the device that made that request can
open it, and a response made for another request does not open.

The response holds the account key itself (a linked device can sign device
lists and key bundles; see docs/threat-model.md for what that means after a
device is lost) and the file keys, so the new device reads the files sent to
the account.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from pqcall.crypto import encoding
from pqcall.crypto.account import (
    MAX_DEVICE_NAME_LENGTH,
    Device,
    SignedDeviceList,
    check_device_name,
    check_list_username,
)
from pqcall.crypto.encoding import Kind, Reader
from pqcall.crypto.fileformat import HPKE_SUITE
from pqcall.crypto.filekey import FilePrivateKey, FilePublicKey
from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey, sha256
from pqcall.exceptions import BadSignature, DecodeError, LocalProtocolError

LINK_REQUEST_CONTEXT = b"pqcall link request"
LINK_INFO_LABEL = b"pqcall link response v1"
CODE_HASH_LENGTH = 10  # 80 bits of SHA-256 of the request
MAX_LINK_ID_LENGTH = 64
MAX_PREVIOUS_FILE_KEYS = 64

__all__ = [
    "CODE_HASH_LENGTH",
    "MAX_DEVICE_NAME_LENGTH",
    "LinkCode",
    "LinkRequest",
    "LinkResponse",
    "NewDeviceLink",
    "open_response",
    "seal_response",
]


@dataclass(frozen=True)
class LinkRequest:
    """What the new device publishes: who it wants to be, and where to seal the answer."""

    username: str
    """The account the device asks to join."""
    device_name: str
    """The name the person gave the new device."""
    device_public: IdentityPublicKey
    """The new device's key."""
    kem_public: FilePublicKey
    """An ephemeral X25519 + ML-KEM-768 key for this link only."""
    signature: bytes = field(repr=False)
    """The device key's signature over the rest: proves it holds the device key."""

    def _signed_part(self) -> bytes:
        return encoding.encode(
            Kind.LINK_REQUEST,
            encoding.text(self.username)
            + encoding.text(self.device_name)
            + encoding.vec16(self.device_public.encode())
            + encoding.vec16(self.kem_public.encode()),
        )

    def encode(self) -> bytes:
        """The canonical encoding (what the server relays and the code hashes)."""
        return self._signed_part() + encoding.vec16(self.signature)

    @classmethod
    def decode(cls, data: bytes) -> LinkRequest:
        """Parse and self-verify a request.

        Raises:
            DecodeError: malformed, or its signature is not its device key's.
        """
        reader = Reader(encoding.decode(Kind.LINK_REQUEST, data), "link request")
        username = reader.text("username")
        check_list_username(username, DecodeError)
        name = check_device_name(reader.text("device name"), DecodeError)
        device_public = IdentityPublicKey.decode(reader.vec16("device key"))
        kem_public = FilePublicKey.decode(reader.vec16("KEM key"))
        signature = reader.vec16("signature")
        reader.end()
        request = cls(username, name, device_public, kem_public, signature)
        try:
            device_public.verify(signature, request._signed_part(), context=LINK_REQUEST_CONTEXT)
        except BadSignature:
            raise DecodeError("link request is not signed by its device key") from None
        return request

    def device(self) -> Device:
        """The device this request asks to add."""
        return Device.of(self.device_public, self.device_name)


@dataclass(frozen=True)
class LinkCode:
    """The code the person carries: the server's link id and a hash of the request."""

    link_id: str
    """Where the server keeps the request."""
    request_hash: bytes
    """The first :data:`CODE_HASH_LENGTH` bytes of SHA-256 of the encoded request."""

    def text(self) -> str:
        """``LINKID-XXXX-XXXX-XXXX-XXXX``: the hash in base32, in groups of four."""
        digits = base64.b32encode(self.request_hash).decode("ascii").rstrip("=")
        groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
        return "-".join([self.link_id, *groups])

    @classmethod
    def parse(cls, text: str) -> LinkCode:
        """Parse a typed code (case, spaces and dashes between groups do not matter).

        Raises:
            LocalProtocolError: not a link code.
        """
        parts = [part for part in text.strip().replace(" ", "-").split("-") if part]
        if len(parts) < 2:
            raise LocalProtocolError("a link code looks like LINKID-XXXX-XXXX-XXXX-XXXX")
        link_id = parts[0].lower()
        if not 0 < len(link_id) <= MAX_LINK_ID_LENGTH or not link_id.isalnum():
            raise LocalProtocolError("the link code's id is not valid")
        digits = "".join(parts[1:]).upper()
        try:
            raw = base64.b32decode(digits + "=" * (-len(digits) % 8))
        except ValueError:
            raise LocalProtocolError("the link code has a character that is not base32") from None
        if len(raw) != CODE_HASH_LENGTH:
            raise LocalProtocolError("the link code is too short or too long")
        return cls(link_id, raw)

    def matches(self, request_encoded: bytes) -> bool:
        """Whether ``request_encoded`` is the request this code was made for."""
        return hmac.compare_digest(request_hash(request_encoded), self.request_hash)


def request_hash(request_encoded: bytes) -> bytes:
    """The part of SHA-256 of an encoded request that the code carries."""
    return sha256(request_encoded)[:CODE_HASH_LENGTH]


class NewDeviceLink:
    """The new device's side: its keys, its request, and opening the response.

    Args:
        username: the account to join.
        device_name: the name for this device in the account's list.
    """

    def __init__(self, username: str, device_name: str) -> None:
        check_list_username(username, LocalProtocolError)
        check_device_name(device_name, LocalProtocolError)
        self.device_key = IdentityPrivateKey.generate()  # kept if the link succeeds
        self._kem_key = FilePrivateKey.generate()  # ephemeral; opens the response
        unsigned = LinkRequest(
            username, device_name, self.device_key.public_key(), self._kem_key.public_key(), b""
        )
        signature = self.device_key.sign(unsigned._signed_part(), context=LINK_REQUEST_CONTEXT)
        self.request = LinkRequest(
            username, device_name, unsigned.device_public, unsigned.kem_public, signature
        )
        self.request_encoded = self.request.encode()  # what the server relays

    def code(self, link_id: str) -> LinkCode:
        """The code to show once the server assigned ``link_id``."""
        return LinkCode(link_id, request_hash(self.request_encoded))

    def open(self, sealed: bytes) -> LinkResponse:
        """Open the existing device's response and check it adds this device.

        Raises:
            DecodeError: it does not open (not for this request, or tampered),
                or it is malformed.
            BadSignature: its device list is not signed by the account key in it.
            LocalProtocolError: the list is for another name, or lacks this device.
        """
        response = open_response(sealed, self.request_encoded, self._kem_key)
        device_list = response.device_list.verify(
            response.account_key.public_key(), self.request.username
        )
        if device_list.find(self.device_key.public_key()) is None:
            raise LocalProtocolError("the new device list does not include this device")
        return response


@dataclass(frozen=True)
class LinkResponse:
    """What the existing device hands the new one: the account's secrets and its new list."""

    account_key: IdentityPrivateKey = field(repr=False)
    """The account key (contacts pin its public half)."""
    file_key: FilePrivateKey = field(repr=False)
    """The current file key."""
    previous_file_keys: tuple[FilePrivateKey, ...] = field(repr=False)
    """File keys replaced by rotation, to read older files."""
    device_list: SignedDeviceList
    """The account's new device list, with the new device in it."""

    def encode(self) -> bytes:
        """The plaintext before sealing (secret)."""
        if len(self.previous_file_keys) > MAX_PREVIOUS_FILE_KEYS:
            raise LocalProtocolError("too many previous file keys to link")
        body = (
            encoding.vec16(self.account_key.encode())
            + encoding.vec16(self.file_key.encode())
            + encoding.u8(len(self.previous_file_keys))
            + b"".join(encoding.vec16(key.encode()) for key in self.previous_file_keys)
            + encoding.vec32(self.device_list.encode())
        )
        return encoding.encode(Kind.LINK_RESPONSE, body)

    @classmethod
    def decode(cls, data: bytes) -> LinkResponse:
        """Parse an opened response.

        Raises:
            DecodeError: malformed.
        """
        reader = Reader(encoding.decode(Kind.LINK_RESPONSE, data), "link response")
        account_key = IdentityPrivateKey.decode(reader.vec16("account key"))
        file_key = FilePrivateKey.decode(reader.vec16("file key"))
        count = reader.u8("previous file key count")
        if count > MAX_PREVIOUS_FILE_KEYS:
            raise DecodeError("link response has too many previous file keys")
        previous = tuple(FilePrivateKey.decode(reader.vec16("file key")) for _ in range(count))
        device_list = SignedDeviceList.decode(reader.vec32("device list"))
        reader.end()
        return cls(account_key, file_key, previous, device_list)


def _info(request_encoded: bytes) -> bytes:
    return LINK_INFO_LABEL + sha256(request_encoded)


def seal_response(response: LinkResponse, request_encoded: bytes) -> bytes:
    """Seal ``response`` to the KEM key of the request (decoded and checked by the caller)."""
    request = LinkRequest.decode(request_encoded)
    return HPKE_SUITE.encrypt(
        response.encode(), request.kem_public.hpke_key(), info=_info(request_encoded)
    )


def open_response(sealed: bytes, request_encoded: bytes, kem_key: FilePrivateKey) -> LinkResponse:
    """Open a sealed response with the request's ephemeral key.

    Raises:
        DecodeError: it does not open, or the plaintext is malformed.
    """
    try:
        plain = HPKE_SUITE.decrypt(sealed, kem_key.hpke_key(), info=_info(request_encoded))
    except (InvalidTag, ValueError):
        raise DecodeError("link response does not open (not for this request)") from None
    return LinkResponse.decode(plain)
