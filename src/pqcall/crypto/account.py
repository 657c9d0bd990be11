"""An account's device list, signed by its account key.

An account has one **account key** (the hybrid identity contacts pin, from
which safety numbers and SAS are computed) and one or more **devices**, each
with its own hybrid identity key (the **device key**) that signs logins and
handshakes. The account key signs the :class:`DeviceList`: which device keys
speak for the account, at which version, and the public half of the recovery
key. A contact accepts a handshake signed by a device key only when that key is
in a list verified under the *pinned* account key, so the server cannot add a
device unseen (it cannot forge the account key's signature) and cannot roll a
list back unnoticed (the version only grows; :mod:`pqcall.crypto.pinning`
remembers the highest seen).

Encodings (integers big-endian, see :mod:`pqcall.crypto.encoding`)::

    device list        = header(DEVICE_LIST) | text username | u32 version
                         | u8 device count | devices | u8 has recovery
                         | [vec16 recovery public key]
    device             = device id (16) | text name | vec16 device public key
    signed device list = header(SIGNED_DEVICE_LIST) | vec32 device list
                         | vec16 signature

The signature is the account key's over the encoded device list with context
:data:`DEVICE_LIST_CONTEXT`. Decoding checks shape only (ids match their keys,
no duplicates, bounds); only :meth:`SignedDeviceList.verify` says who signed.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from pqcall.crypto import encoding
from pqcall.crypto.encoding import Kind, Reader
from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey, sha256
from pqcall.exceptions import BadSignature, DecodeError, LocalProtocolError

DEVICE_LIST_CONTEXT = b"pqcall device list"
DEVICE_ID_LENGTH = 16
MAX_DEVICE_NAME_LENGTH = 64  # characters
MAX_DEVICES = 16
MAX_VERSION = 0xFFFFFFFF
MAX_USERNAME_BYTES = 255


def device_id(public: IdentityPublicKey) -> bytes:
    """A device's id: the first 16 bytes of SHA-256 of its encoded public key."""
    return sha256(public.encode())[:DEVICE_ID_LENGTH]


def check_device_name(name: object, error: type[Exception]) -> str:
    """``name`` if it can name a device, else raise ``error`` saying why."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_DEVICE_NAME_LENGTH:
        raise error(f"device name must be 1 to {MAX_DEVICE_NAME_LENGTH} characters")
    if any(unicodedata.category(char).startswith("C") for char in name):
        raise error("device name has a control or unassigned character")
    return name


def check_list_username(username: object, error: type[Exception]) -> None:
    """Raise ``error`` unless ``username`` is 1 to 255 bytes of UTF-8."""
    if not isinstance(username, str):
        raise error("device list username must be a string")
    try:
        length = len(username.encode("utf-8"))
    except UnicodeEncodeError:
        raise error("device list username is not valid Unicode") from None
    if not 0 < length <= MAX_USERNAME_BYTES:
        raise error("device list username must be 1 to 255 bytes")


@dataclass(frozen=True)
class Device:
    """One device of an account: its id, a name its owner chose, its public key."""

    device_id: bytes
    """:func:`device_id` of :attr:`public` (checked)."""
    name: str
    """Shown to the owner and contacts ("laptop"); 1 to 64 characters, no control characters."""
    public: IdentityPublicKey
    """The device key's public half: it signs this device's logins and handshakes."""

    def __post_init__(self) -> None:
        check_device_name(self.name, LocalProtocolError)
        if not isinstance(self.public, IdentityPublicKey):
            raise LocalProtocolError("device public key must be an IdentityPublicKey")
        if self.device_id != device_id(self.public):
            raise LocalProtocolError("device id does not match the device key")

    @classmethod
    def of(cls, public: IdentityPublicKey, name: str) -> Device:
        """The device for ``public``, its id computed."""
        return cls(device_id(public), name, public)

    @property
    def device_id_text(self) -> str:
        """The id in hex, as the CLI and the server's routes show it."""
        return self.device_id.hex()


@dataclass(frozen=True)
class DeviceList:
    """Which device keys speak for an account, at which version."""

    username: str
    """The account's (normalized) name: a list signed for one name is not valid for another."""
    version: int
    """1 for the first list; each new list must be strictly higher (u32)."""
    devices: tuple[Device, ...]
    """1 to 16 devices, distinct ids."""
    recovery: IdentityPublicKey | None = None
    """The recovery key's public half, if one was set."""

    def __post_init__(self) -> None:
        self._check(LocalProtocolError)

    def _check(self, error: type[Exception]) -> None:
        check_list_username(self.username, error)
        if (
            isinstance(self.version, bool)
            or not isinstance(self.version, int)
            or not 1 <= self.version <= MAX_VERSION
        ):
            raise error("device list version must be 1 to 2**32 - 1")
        if not isinstance(self.devices, tuple) or not 1 <= len(self.devices) <= MAX_DEVICES:
            raise error(f"device list must hold 1 to {MAX_DEVICES} devices")
        ids = {device.device_id for device in self.devices}
        if len(ids) != len(self.devices):
            raise error("device list holds the same device twice")
        if self.recovery is not None and not isinstance(self.recovery, IdentityPublicKey):
            raise error("recovery key must be an IdentityPublicKey")

    def encode(self) -> bytes:
        """The canonical encoding (what the account key signs)."""
        body = [encoding.text(self.username), encoding.u32(self.version)]
        body.append(encoding.u8(len(self.devices)))
        for device in self.devices:
            body.append(device.device_id)
            body.append(encoding.text(device.name))
            body.append(encoding.vec16(device.public.encode()))
        if self.recovery is None:
            body.append(encoding.u8(0))
        else:
            body.append(encoding.u8(1) + encoding.vec16(self.recovery.encode()))
        return encoding.encode(Kind.DEVICE_LIST, b"".join(body))

    @classmethod
    def decode(cls, data: bytes) -> DeviceList:
        """Parse an encoded device list (its shape only; see :meth:`SignedDeviceList.verify`).

        Raises:
            DecodeError: not a device list, or a malformed one (the message says why).
        """
        reader = Reader(encoding.decode(Kind.DEVICE_LIST, data), "device list")
        username = reader.text("username")
        check_list_username(username, DecodeError)
        version = reader.u32("version")
        count = reader.u8("device count")
        if not 1 <= count <= MAX_DEVICES:
            raise DecodeError(f"device list must hold 1 to {MAX_DEVICES} devices")
        devices = []
        for _ in range(count):
            raw_id = reader.fixed(DEVICE_ID_LENGTH, "device id")
            name = check_device_name(reader.text("device name"), DecodeError)
            public = IdentityPublicKey.decode(reader.vec16("device key"))
            if raw_id != device_id(public):
                raise DecodeError("device list has a device id that does not match its key")
            devices.append(Device(raw_id, name, public))
        flag = reader.u8("recovery flag")
        if flag not in (0, 1):
            raise DecodeError("device list has an invalid recovery flag")
        recovery = IdentityPublicKey.decode(reader.vec16("recovery key")) if flag else None
        reader.end()
        try:
            return cls(username, version, tuple(devices), recovery)
        except LocalProtocolError as exc:
            raise DecodeError(str(exc)) from None

    def find(self, public: IdentityPublicKey) -> Device | None:
        """The device whose key is ``public``, or None."""
        for device in self.devices:
            if device.public == public:
                return device
        return None

    def by_id(self, raw_id: bytes) -> Device | None:
        """The device of id ``raw_id``, or None."""
        for device in self.devices:
            if device.device_id == raw_id:
                return device
        return None

    def successor(self, devices: tuple[Device, ...]) -> DeviceList:
        """The next version of this list with ``devices`` (same name and recovery key)."""
        return DeviceList(self.username, self.version + 1, devices, self.recovery)


@dataclass(frozen=True)
class SignedDeviceList:
    """A :class:`DeviceList` with the account key's signature over its encoding."""

    device_list: DeviceList
    """The list as claimed; trust it only through :meth:`verify`."""
    signature: bytes
    """The account key's hybrid signature (context :data:`DEVICE_LIST_CONTEXT`)."""

    @classmethod
    def sign(cls, device_list: DeviceList, account_key: IdentityPrivateKey) -> SignedDeviceList:
        """Sign ``device_list`` with the account key."""
        signature = account_key.sign(device_list.encode(), context=DEVICE_LIST_CONTEXT)
        return cls(device_list, signature)

    def encode(self) -> bytes:
        """The canonical encoding (what the server stores and serves)."""
        return encoding.encode(
            Kind.SIGNED_DEVICE_LIST,
            encoding.vec32(self.device_list.encode()) + encoding.vec16(self.signature),
        )

    @classmethod
    def decode(cls, data: bytes) -> SignedDeviceList:
        """Parse an encoded signed device list without verifying it.

        Raises:
            DecodeError: not a signed device list, or a malformed one.
        """
        reader = Reader(encoding.decode(Kind.SIGNED_DEVICE_LIST, data), "signed device list")
        device_list = DeviceList.decode(reader.vec32("device list"))
        signature = reader.vec16("signature")
        reader.end()
        return cls(device_list, signature)

    def verify(self, account_public: IdentityPublicKey, username: str) -> DeviceList:
        """Check the list is ``username``'s, signed by ``account_public``, and return it.

        Args:
            account_public: the account key the caller pinned or stores, never
                one taken from the same untrusted source without a pin.
            username: the account name the caller expects.

        Raises:
            LocalProtocolError: the list is for another username.
            BadSignature: the signature is not ``account_public``'s over this list.
        """
        if self.device_list.username != username:
            raise LocalProtocolError(
                f"device list is for {self.device_list.username!r}, not {username!r}"
            )
        try:
            account_public.verify(
                self.signature, self.device_list.encode(), context=DEVICE_LIST_CONTEXT
            )
        except BadSignature:
            raise BadSignature("device list is not signed by the account key") from None
        return self.device_list
