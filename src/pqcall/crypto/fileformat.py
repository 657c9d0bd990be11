"""The format of an encrypted file: header, metadata record, padding, per-chunk keys.

The design and its reasons are in :mod:`pqcall.crypto.filecrypt` and
docs/protocol.md#files; this module holds the byte-level pieces that the
encryptor and decryptor share.
"""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pqcall.crypto import encoding
from pqcall.crypto.encoding import Kind, Reader
from pqcall.crypto.identity import FINGERPRINT_LENGTH, SIGNATURE_ENCODED_LENGTH, IdentityPublicKey
from pqcall.exceptions import DecodeError, FileCryptoError, LocalProtocolError

# specification constants
FILE_FORMAT_VERSION = 1
FILE_KEY_LENGTH = 32
FILE_ID_LENGTH = 16
NONCE_PREFIX_LENGTH = 7
TAG_LENGTH = 16
HPKE_ENC_LENGTH = 1120  # MLKEM768_X25519 encapsulated key (RFC 9180 Nenc)
WRAPPED_KEY_LENGTH = HPKE_ENC_LENGTH + FILE_KEY_LENGTH + TAG_LENGTH  # enc | sealed file key
HEADER_PREFIX_LENGTH = encoding.HEADER_LENGTH + 4  # tag | u32 body length
MIN_PADDED_LENGTH = 64 * 1024  # every file below this looks the same size
MIN_CHUNK_LENGTH = 1024  # above the largest metadata record, so it fits in chunk 0
MAX_CHUNK_LENGTH = 1024 * 1024
MAX_CHUNKS = 2**32  # the chunk counter is a u32
MAX_HEADER_BODY_LENGTH = 16 * 1024
MAX_NAME_LENGTH = 255  # UTF-8 bytes
MAX_CONTENT_TYPE_LENGTH = 255  # UTF-8 bytes
MAX_CREATED = 2**64 - 1
HPKE_INFO_LABEL = b"pqcall v1 file"
PAYLOAD_KEY_LABEL = b"pqcall v1 file payload key"
NONCE_PREFIX_LABEL = b"pqcall v1 file nonce prefix"
SIGNATURE_CONTEXT = b"pqcall file"

HPKE_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def padded_length(length: int) -> int:
    """Round a plaintext stream length up with Padmé, at least :data:`MIN_PADDED_LENGTH`.

    Padmé keeps the top ``floor(log2(E)) + 1`` bits of the length, where
    ``E = floor(log2(length))``, and rounds the rest up.
    """
    if length <= MIN_PADDED_LENGTH:
        return MIN_PADDED_LENGTH
    exponent = length.bit_length() - 1
    low_bits = exponent - exponent.bit_length()
    mask = (1 << low_bits) - 1
    return (length + mask) & ~mask


@dataclasses.dataclass(frozen=True, slots=True)
class FileInfo:
    """What a verified encrypted file says about itself."""

    sender: IdentityPublicKey
    """The identity that signed the file; look it up among pinned contacts."""
    name: str
    """The sender's file name: untrusted text, sanitize before using it as a path."""
    size: int
    """Exact plaintext size in bytes."""
    content_type: str
    """The sender's media type (untrusted)."""
    created: int
    """The sender's timestamp, unix seconds (untrusted)."""
    file_id: bytes
    """16 random bytes naming this encrypted file."""
    verified: bool
    """True: only a fully verified file yields a FileInfo (kept for serializers)."""


@dataclasses.dataclass(frozen=True, slots=True)
class FileHeader:
    """The clear header of an encrypted file (see the module docstring)."""

    chunk_length: int
    """Plaintext bytes per chunk."""
    padded_length: int
    """Length of the padded plaintext stream."""
    file_id: bytes
    """16 random bytes: HKDF salt and the file's name."""
    recipient_fingerprint: bytes
    """Fingerprint of the recipient's identity."""
    recipient_file_key_fingerprint: bytes
    """Fingerprint of the file public key the file key is wrapped to."""
    sender: IdentityPublicKey
    """The sender's identity."""
    wrapped_key: bytes
    """The file key, HPKE-sealed to the recipient's file key."""

    @classmethod
    def parse(cls, data: bytes) -> FileHeader:
        """Parse a whole serialized header.

        Raises:
            FileCryptoError: the header is malformed or of an unknown version.
        """
        try:
            encoding.decode(Kind.FILE_HEADER, data[: encoding.HEADER_LENGTH])
        except DecodeError as exc:
            raise FileCryptoError(not_a_file_message(str(exc))) from None
        try:
            reader = Reader(data[encoding.HEADER_LENGTH :], "file header")
            body = reader.vec32("body")
            reader.end()
            reader = Reader(body, "file header")
            version = reader.u8("version")
            if version != FILE_FORMAT_VERSION:
                raise FileCryptoError(f"encrypted file version {version} is not supported")
            chunk_length = reader.u32("chunk length")
            padded = reader.u64("padded length")
            file_id = reader.fixed(FILE_ID_LENGTH, "file id")
            recipient = reader.fixed(FINGERPRINT_LENGTH, "recipient fingerprint")
            recipient_key = reader.fixed(FINGERPRINT_LENGTH, "recipient key fingerprint")
            sender = IdentityPublicKey.decode(reader.vec16("sender identity"))
            wrapped_key = reader.vec16("wrapped key")
            reader.end()
        except DecodeError as exc:
            raise FileCryptoError(f"file header is malformed ({exc})") from None
        if not MIN_CHUNK_LENGTH <= chunk_length <= MAX_CHUNK_LENGTH:
            raise FileCryptoError("file header has an invalid chunk length")
        if padded_length(padded) != padded or -(-padded // chunk_length) > MAX_CHUNKS:
            raise FileCryptoError("file header has an invalid length")
        if len(wrapped_key) != WRAPPED_KEY_LENGTH:
            raise FileCryptoError("file header has an invalid wrapped key")
        return cls(chunk_length, padded, file_id, recipient, recipient_key, sender, wrapped_key)

    def serialize(self) -> bytes:
        """The header as written at the start of the file."""
        body = (
            encoding.u8(FILE_FORMAT_VERSION)
            + encoding.u32(self.chunk_length)
            + encoding.u64(self.padded_length)
            + self.file_id
            + self.recipient_fingerprint
            + self.recipient_file_key_fingerprint
            + encoding.vec16(self.sender.encode())
            + encoding.vec16(self.wrapped_key)
        )
        return encoding.encode(Kind.FILE_HEADER, encoding.vec32(body))

    @property
    def chunk_count(self) -> int:
        """Number of chunks in the stream."""
        return -(-self.padded_length // self.chunk_length)

    def chunk_ciphertext_length(self, index: int) -> int:
        """Length of chunk ``index`` on the wire."""
        start = index * self.chunk_length
        return min(self.chunk_length, self.padded_length - start) + TAG_LENGTH

    def ciphertext_length(self) -> int:
        """Length of the whole encrypted file, header and signature included."""
        return (
            len(self.serialize())
            + self.padded_length
            + self.chunk_count * TAG_LENGTH
            + SIGNATURE_ENCODED_LENGTH
        )


def encode_metadata(
    sender_fingerprint: bytes, name: str, size: int, content_type: str, created: int
) -> bytes:
    for value, limit, what in (
        (name, MAX_NAME_LENGTH, "file name"),
        (content_type, MAX_CONTENT_TYPE_LENGTH, "content type"),
    ):
        try:
            length = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise LocalProtocolError(f"{what} is not valid Unicode") from None
        if length > limit:
            raise LocalProtocolError(f"{what} is longer than {limit} bytes")
    record = (
        sender_fingerprint
        + encoding.text(name)
        + encoding.u64(size)
        + encoding.text(content_type)
        + encoding.u64(created)
    )
    return encoding.vec16(record)


def hpke_info(sender_fingerprint: bytes, recipient_fingerprint: bytes) -> bytes:
    return HPKE_INFO_LABEL + sender_fingerprint + recipient_fingerprint


def payload_keys(file_key: bytes, file_id: bytes) -> tuple[AESGCM, bytes]:
    key = HKDF(hashes.SHA256(), 32, salt=file_id, info=PAYLOAD_KEY_LABEL).derive(file_key)
    prefix = HKDF(
        hashes.SHA256(), NONCE_PREFIX_LENGTH, salt=file_id, info=NONCE_PREFIX_LABEL
    ).derive(file_key)
    return AESGCM(key), prefix


def nonce(prefix: bytes, index: int, is_last: bool) -> bytes:
    return prefix + encoding.u32(index) + encoding.u8(1 if is_last else 0)


def not_a_file_message(decode_message: str) -> str:
    if decode_message.startswith("unsupported"):
        version = decode_message.rsplit(" ", 1)[-1]
        return f"encrypted file version {version} is not supported"
    return "not a pqcall encrypted file"
