"""Type-tagged, versioned binary encodings shared by every crypto object.

Every encoded object starts with a four-byte header::

    b"PQ" | version (1 byte) | kind (1 byte) | body

so a key of one kind can never be parsed as another (the lesson of the PQXDH
analysis: untagged keys invite type confusion). The body layout belongs to the
module that owns the kind; this module gives it a small reader and writer whose
errors name the exact defect.
"""

from __future__ import annotations

import enum
import struct

from pqcall.exceptions import DecodeError

MAGIC = b"PQ"
FORMAT_VERSION = 1
HEADER_LENGTH = 4


class Kind(enum.IntEnum):
    """What an encoded object is. Values are stable wire constants."""

    IDENTITY_PUBLIC = 0x01
    IDENTITY_PRIVATE = 0x02
    SIGNATURE = 0x03
    FILE_PUBLIC_KEY = 0x04
    FILE_PRIVATE_KEY = 0x05
    KEY_BUNDLE = 0x06
    DEVICE_LIST = 0x07
    SIGNED_DEVICE_LIST = 0x08
    LINK_REQUEST = 0x09
    LINK_RESPONSE = 0x0A
    HANDSHAKE_OFFER = 0x10
    HANDSHAKE_ANSWER = 0x11
    HANDSHAKE_CONFIRM = 0x12
    KEYSTORE = 0x20
    ACCOUNT_SECRETS = 0x21
    FILE_HEADER = 0x30
    GROUP_SENDER_KEY = 0x40
    GROUP_SEALED_MESSAGE = 0x41

    @property
    def label(self) -> str:
        """Human-readable name used in error messages."""
        return self.name.lower().replace("_", " ")


def encode(kind: Kind, body: bytes) -> bytes:
    """Prefix ``body`` with the header for ``kind``."""
    return MAGIC + bytes((FORMAT_VERSION, kind)) + body


def decode(kind: Kind, data: bytes) -> bytes:
    """Check the header of ``data`` is for ``kind`` and return the body.

    Raises:
        DecodeError: the header is missing, of another version, or of another kind.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{kind.label} must be bytes")
    data = bytes(data)
    if len(data) < HEADER_LENGTH or data[:2] != MAGIC:
        raise DecodeError(f"not a pqcall {kind.label}")
    if data[2] != FORMAT_VERSION:
        raise DecodeError(f"unsupported {kind.label} version {data[2]}")
    if data[3] != kind:
        try:
            found = Kind(data[3]).label
        except ValueError:
            found = f"unknown kind {data[3]:#04x}"
        raise DecodeError(f"expected {kind.label}, got {found}")
    return data[HEADER_LENGTH:]


class Reader:
    """Reads fields from a body; every shortfall raises :class:`DecodeError`.

    Args:
        data: the bytes to read.
        what: names the object in error messages ("handshake offer").
    """

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data  # the whole body
        self._pos = 0  # offset of the next unread byte
        self._what = what  # object name for error messages

    def fixed(self, length: int, field: str) -> bytes:
        """Read exactly ``length`` bytes."""
        end = self._pos + length
        if end > len(self._data):
            raise DecodeError(f"{self._what} has truncated {field}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self, field: str) -> int:
        """Read an unsigned byte."""
        return self.fixed(1, field)[0]

    def u16(self, field: str) -> int:
        """Read a big-endian unsigned 16-bit integer."""
        value: int = struct.unpack(">H", self.fixed(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        """Read a big-endian unsigned 32-bit integer."""
        value: int = struct.unpack(">I", self.fixed(4, field))[0]
        return value

    def u64(self, field: str) -> int:
        """Read a big-endian unsigned 64-bit integer."""
        value: int = struct.unpack(">Q", self.fixed(8, field))[0]
        return value

    def vec16(self, field: str) -> bytes:
        """Read bytes prefixed by a 16-bit length."""
        return self.fixed(self.u16(field), field)

    def vec32(self, field: str) -> bytes:
        """Read bytes prefixed by a 32-bit length."""
        return self.fixed(self.u32(field), field)

    def text(self, field: str) -> str:
        """Read a UTF-8 string prefixed by a 16-bit length."""
        raw = self.vec16(field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"{self._what} has invalid UTF-8 in {field}") from None

    def rest(self) -> bytes:
        """Read everything left."""
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def end(self) -> None:
        """Check that nothing is left over."""
        if self._pos != len(self._data):
            raise DecodeError(f"{self._what} has {len(self._data) - self._pos} trailing bytes")


def u8(value: int) -> bytes:
    """Encode an unsigned byte."""
    return struct.pack(">B", value)


def u16(value: int) -> bytes:
    """Encode a big-endian unsigned 16-bit integer."""
    return struct.pack(">H", value)


def u32(value: int) -> bytes:
    """Encode a big-endian unsigned 32-bit integer."""
    return struct.pack(">I", value)


def u64(value: int) -> bytes:
    """Encode a big-endian unsigned 64-bit integer."""
    return struct.pack(">Q", value)


def vec16(data: bytes) -> bytes:
    """Encode bytes with a 16-bit length prefix."""
    if len(data) > 0xFFFF:
        raise ValueError("field longer than 65535 bytes")
    return u16(len(data)) + data


def vec32(data: bytes) -> bytes:
    """Encode bytes with a 32-bit length prefix."""
    return u32(len(data)) + data


def text(value: str) -> bytes:
    """Encode a string as UTF-8 with a 16-bit length prefix."""
    return vec16(value.encode("utf-8"))
