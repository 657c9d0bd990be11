"""SFrame (RFC 9605): header, key derivation, cipher suites, frame encryption.

This module is the RFC and nothing more: pure functions and small value
types, checked against the RFC's test vectors (Appendix C). What a call adds
on top (counters, key ratcheting, the replay window, padding) lives in
:mod:`pqcall.crypto.sframe_context`.

An SFrame ciphertext is ``header || AEAD.Encrypt(sframe_key, nonce, header ||
metadata, plaintext)`` (RFC 9605 section 4.4.3), where the header carries the
key id (KID) and counter (CTR) in compact form (section 4.3)::

    config byte: |X| K (3) |Y| C (3) |   then KID bytes (if X), then CTR bytes (if Y)

and ``nonce = sframe_salt XOR CTR``. Every primitive comes from
``cryptography``; the AES-CTR + HMAC AEAD of section 4.5.1 is composed here
from AES-CTR and HMAC.

Errors: a malformed header raises :class:`~pqcall.exceptions.DecodeError`
naming the defect; a frame that does not authenticate raises
:class:`cryptography.exceptions.InvalidTag`, as ``cryptography``'s AEADs do.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from pqcall.exceptions import DecodeError, LocalProtocolError

MAX_KID: Final = 2**64 - 1  # KID is a 64-bit unsigned integer (section 4.3)
MAX_CTR: Final = 2**64 - 1  # so is CTR
MAX_HEADER_LENGTH: Final = 17  # config byte + 8 KID bytes + 8 CTR bytes
KID_DERIVATION_LENGTH: Final = 8  # KID as a big-endian integer in key labels (section 4.4.2)
SUITE_DERIVATION_LENGTH: Final = 2  # cipher suite id in key labels
CTR_BLOCK_SUFFIX: Final = bytes(4)  # AES-CTR initial counter = nonce || 0x00000000 (4.5.1)
LENGTH_FIELD_LENGTH: Final = 8  # lengths in the HMAC input of section 4.5.1

KEY_LABEL: Final = b"SFrame 1.0 Secret key "
SALT_LABEL: Final = b"SFrame 1.0 Secret salt "
RATCHET_LABEL: Final = b"SFrame 1.0 Ratchet"


class CipherSuite(enum.IntEnum):
    """SFrame cipher suites (RFC 9605 sections 4.5 and 8.1). Values are wire ids."""

    AES_128_CTR_HMAC_SHA256_80 = 0x0001
    AES_128_CTR_HMAC_SHA256_64 = 0x0002
    AES_128_CTR_HMAC_SHA256_32 = 0x0003
    AES_128_GCM_SHA256_128 = 0x0004
    AES_256_GCM_SHA512_128 = 0x0005

    @property
    def parameters(self) -> SuiteParameters:
        """This suite's row of RFC 9605 Table 1."""
        return SUITE_PARAMETERS[self]

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """A fresh instance of the suite's hash (for HKDF and HMAC)."""
        return self.parameters.hash_function()


@dataclass(frozen=True, slots=True)
class SuiteParameters:
    """The constants of one cipher suite, in bytes (RFC 9605 section 4.4, Table 1)."""

    nh: int
    """Output size of the hash."""
    nka: int | None
    """AES key size inside the AES-CTR + HMAC AEAD; None for AES-GCM."""
    nk: int
    """AEAD key size (Nka + Nh for AES-CTR + HMAC)."""
    nn: int
    """Nonce size."""
    nt: int
    """Authentication tag size."""
    hash_function: type[hashes.SHA256] | type[hashes.SHA512]
    """The hash of HKDF (and of HMAC in AES-CTR + HMAC)."""


SUITE_PARAMETERS: Final[Mapping[CipherSuite, SuiteParameters]] = MappingProxyType(
    {
        CipherSuite.AES_128_CTR_HMAC_SHA256_80: SuiteParameters(32, 16, 48, 12, 10, hashes.SHA256),
        CipherSuite.AES_128_CTR_HMAC_SHA256_64: SuiteParameters(32, 16, 48, 12, 8, hashes.SHA256),
        CipherSuite.AES_128_CTR_HMAC_SHA256_32: SuiteParameters(32, 16, 48, 12, 4, hashes.SHA256),
        CipherSuite.AES_128_GCM_SHA256_128: SuiteParameters(32, None, 16, 12, 16, hashes.SHA256),
        CipherSuite.AES_256_GCM_SHA512_128: SuiteParameters(64, None, 32, 12, 16, hashes.SHA512),
    }
)


# header (RFC 9605 section 4.3)


def _encode_field(value: int) -> tuple[bool, int, bytes]:
    """(extended flag, 3-bit field, trailing bytes) of a compact KID or CTR."""
    if value < 8:
        return False, value, b""
    length = (value.bit_length() + 7) // 8
    return True, length - 1, value.to_bytes(length, "big")


def _decode_field(data: bytes, pos: int, extended: bool, bits: int, field: str) -> tuple[int, int]:
    """(value, next position) of a compact KID or CTR starting at ``pos``."""
    if not extended:
        return bits, pos
    end = pos + bits + 1
    if end > len(data):
        raise DecodeError(f"SFrame header has truncated {field}")
    raw = data[pos:end]
    value = int.from_bytes(raw, "big")
    # the RFC requires the minimum number of bytes, and values 0-7 in the config byte
    if value < 8 or raw[0] == 0:
        raise DecodeError(f"SFrame header has non-minimal {field}")
    return value, end


def parse_header(data: bytes) -> tuple[int, int, int]:
    """The KID, CTR and length of the SFrame header at the start of ``data``.

    :meth:`Header.parse` as plain integers, for the receive path, which needs
    no header object per packet.

    Raises:
        DecodeError: the header is empty, truncated, or not minimally encoded.
    """
    if not data:
        raise DecodeError("SFrame header is empty")
    config = data[0]
    kid, pos = _decode_field(data, 1, bool(config & 0x80), (config >> 4) & 0x07, "KID")
    ctr, pos = _decode_field(data, pos, bool(config & 0x08), config & 0x07, "CTR")
    return kid, ctr, pos


@dataclass(frozen=True, slots=True)
class Header:
    """The SFrame header: key id and counter (RFC 9605 section 4.3).

    Raises:
        LocalProtocolError: ``kid`` or ``ctr`` is not a 64-bit unsigned integer.
    """

    kid: int
    """Key id: selects the base key the frame was encrypted with."""
    ctr: int
    """Counter: makes the nonce unique under that key."""

    def __post_init__(self) -> None:
        if not 0 <= self.kid <= MAX_KID:
            raise LocalProtocolError("SFrame KID must be a 64-bit unsigned integer")
        if not 0 <= self.ctr <= MAX_CTR:
            raise LocalProtocolError("SFrame CTR must be a 64-bit unsigned integer")

    @classmethod
    def parse(cls, data: bytes) -> tuple[Header, int]:
        """Parse the header at the start of ``data``.

        Returns:
            The header and the number of bytes it takes.

        Raises:
            DecodeError: the header is empty, truncated, or not minimally encoded.
        """
        kid, ctr, length = parse_header(data)
        return cls(kid, ctr), length

    def serialize(self) -> bytes:
        """The minimal encoding (RFC 9605 section 4.3), 1 to 17 bytes."""
        x, k, kid_bytes = _encode_field(self.kid)
        y, c, ctr_bytes = _encode_field(self.ctr)
        config = (x << 7) | (k << 4) | (y << 3) | c
        return bytes((config,)) + kid_bytes + ctr_bytes


# AEADs (RFC 9605 section 4.5)


class Aead(Protocol):
    """An AEAD with the calling convention of ``cryptography``'s (tag appended)."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """Encrypt and authenticate ``data``; the tag is appended."""
        ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """Check the tag and decrypt; raises :class:`InvalidTag` on failure."""
        ...


class AesCtrHmac:
    """AES-CTR + HMAC with a truncated tag, encrypt-then-MAC (RFC 9605 section 4.5.1).

    Args:
        key: ``enc_key || auth_key``, ``enc_key_length`` + hash output bytes.
        enc_key_length: Nka, the AES key size.
        tag_length: Nt, the tag kept from the HMAC output.
        hash_algorithm: the HMAC hash (its output size is Nh).

    Raises:
        LocalProtocolError: the key has the wrong length.
    """

    def __init__(
        self,
        key: bytes,
        *,
        enc_key_length: int,
        tag_length: int,
        hash_algorithm: hashes.HashAlgorithm,
    ) -> None:
        if len(key) != enc_key_length + hash_algorithm.digest_size:
            raise LocalProtocolError("AES-CTR-HMAC key has the wrong length")
        self._aes = algorithms.AES(key[:enc_key_length])  # enc_key = sframe_key[..Nka]
        self._auth_key = key[enc_key_length:]  # auth_key = sframe_key[Nka..]
        self._hash = hash_algorithm  # HMAC hash
        self._tag_length = tag_length  # Nt

    @classmethod
    def for_suite(cls, suite: CipherSuite, key: bytes) -> AesCtrHmac:
        """The AEAD of an AES-CTR suite (1 to 3) keyed with ``key`` (Nk bytes)."""
        nka = suite.parameters.nka
        if nka is None:
            raise LocalProtocolError(f"{suite.name} is not an AES-CTR-HMAC suite")
        return cls(
            key,
            enc_key_length=nka,
            tag_length=suite.parameters.nt,
            hash_algorithm=suite.hash_algorithm(),
        )

    def _tag(self, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
        mac = HMAC(self._auth_key, self._hash)
        for length in (len(aad), len(ct), self._tag_length):
            mac.update(length.to_bytes(LENGTH_FIELD_LENGTH, "big"))
        mac.update(nonce)
        mac.update(aad)
        mac.update(ct)
        return mac.finalize()[: self._tag_length]

    def _ctr(self, nonce: bytes, data: bytes) -> bytes:
        cipher = Cipher(self._aes, modes.CTR(nonce + CTR_BLOCK_SUFFIX)).encryptor()
        return cipher.update(data) + cipher.finalize()

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """``ct || tag`` of ``data`` under a 12-byte ``nonce``."""
        ct = self._ctr(nonce, data)
        return ct + self._tag(nonce, associated_data or b"", ct)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """Check the tag of ``ct || tag`` then decrypt.

        Raises:
            InvalidTag: the tag does not match, or ``data`` is shorter than a tag.
        """
        if len(data) < self._tag_length:
            raise InvalidTag
        ct, tag = data[: -self._tag_length], data[-self._tag_length :]
        if not hmac.compare_digest(tag, self._tag(nonce, associated_data or b"", ct)):
            raise InvalidTag
        return self._ctr(nonce, ct)


def new_aead(suite: CipherSuite, key: bytes) -> Aead:
    """The AEAD of ``suite`` keyed with ``key`` (Nk bytes).

    Raises:
        LocalProtocolError: the key is not Nk bytes long.
    """
    if len(key) != suite.parameters.nk:
        raise LocalProtocolError(f"{suite.name} key must be {suite.parameters.nk} bytes")
    if suite.parameters.nka is None:
        return AESGCM(key)
    return AesCtrHmac.for_suite(suite, key)


# key derivation (RFC 9605 sections 4.4.2 and 5.1)


def extract_secret(suite: CipherSuite, base_key: bytes) -> bytes:
    """``sframe_secret = HKDF-Extract("", base_key)`` with the suite's hash."""
    return HKDF.extract(suite.hash_algorithm(), b"", base_key)


def key_salt_labels(suite: CipherSuite, kid: int) -> tuple[bytes, bytes]:
    """The HKDF-Expand labels of ``sframe_key`` and ``sframe_salt`` for ``kid``."""
    context = kid.to_bytes(KID_DERIVATION_LENGTH, "big") + suite.to_bytes(
        SUITE_DERIVATION_LENGTH, "big"
    )
    return KEY_LABEL + context, SALT_LABEL + context


def derive_key_salt(suite: CipherSuite, kid: int, base_key: bytes) -> tuple[bytes, bytes]:
    """``(sframe_key, sframe_salt)`` of ``kid`` (RFC 9605 section 4.4.2)."""
    secret = extract_secret(suite, base_key)
    key_label, salt_label = key_salt_labels(suite, kid)
    params = suite.parameters
    key = HKDFExpand(suite.hash_algorithm(), params.nk, key_label).derive(secret)
    salt = HKDFExpand(suite.hash_algorithm(), params.nn, salt_label).derive(secret)
    return key, salt


def ratchet_base_key(suite: CipherSuite, base_key: bytes) -> bytes:
    """The next base key of a sender-key ratchet (RFC 9605 section 5.1).

    ``base_key[i+1] = HKDF-Expand(HKDF-Extract("", base_key[i]), "SFrame 1.0 Ratchet", Nh)``.
    The old key cannot be computed from the new one.
    """
    secret = extract_secret(suite, base_key)
    return HKDFExpand(suite.hash_algorithm(), suite.parameters.nh, RATCHET_LABEL).derive(secret)


def frame_nonce(salt: bytes, ctr: int) -> bytes:
    """``sframe_salt XOR CTR``, CTR as a big-endian integer of the salt's length (4.4.3)."""
    return (int.from_bytes(salt, "big") ^ ctr).to_bytes(len(salt), "big")


# encryption (RFC 9605 sections 4.4.3 and 4.4.4)


class FrameKey:
    """The key and salt of one KID, ready to encrypt or decrypt frames.

    Args:
        suite: the cipher suite.
        kid: the key id the key and salt were derived for.
        key: ``sframe_key``, Nk bytes.
        salt: ``sframe_salt``, Nn bytes.

    Raises:
        LocalProtocolError: a length or the KID is out of range.
    """

    __slots__ = ("_aead", "_kid_bits", "_kid_bytes", "_salt", "_salt_int", "kid", "suite")

    def __init__(self, suite: CipherSuite, kid: int, key: bytes, salt: bytes) -> None:
        if not 0 <= kid <= MAX_KID:
            raise LocalProtocolError("SFrame KID must be a 64-bit unsigned integer")
        if len(salt) != suite.parameters.nn:
            raise LocalProtocolError(f"{suite.name} salt must be {suite.parameters.nn} bytes")
        self.suite = suite  # cipher suite
        self.kid = kid  # key id written into every header
        self._aead = new_aead(suite, key)  # keyed AEAD; the key bytes are not kept here
        self._salt = salt  # sframe_salt
        self._salt_int = int.from_bytes(salt, "big")  # the same, as the nonce's XOR operand
        # the KID half of every header this key writes (section 4.3): config bits, KID bytes
        extended, bits, self._kid_bytes = _encode_field(kid)
        self._kid_bits = (extended << 7) | (bits << 4)

    @classmethod
    def derive(cls, suite: CipherSuite, kid: int, base_key: bytes) -> FrameKey:
        """Derive the key and salt of ``kid`` from ``base_key`` (RFC 9605 section 4.4.2)."""
        key, salt = derive_key_salt(suite, kid, base_key)
        return cls(suite, kid, key, salt)

    def __repr__(self) -> str:
        return f"FrameKey({self.suite.name}, kid={self.kid})"


def encrypt(key: FrameKey, ctr: int, metadata: bytes, plaintext: bytes) -> bytes:
    """Encrypt one frame (RFC 9605 section 4.4.3).

    The caller must never use the same ``ctr`` twice with the same key.

    Returns:
        ``header || ciphertext``, the header authenticated together with ``metadata``.

    Raises:
        LocalProtocolError: ``ctr`` is not a 64-bit unsigned integer.
    """
    if not 0 <= ctr <= MAX_CTR:
        raise LocalProtocolError("SFrame CTR must be a 64-bit unsigned integer")
    # Header(key.kid, ctr).serialize(), with the KID half precomputed
    if ctr < 8:
        header = bytes((key._kid_bits | ctr,)) + key._kid_bytes
    else:
        length = (ctr.bit_length() + 7) // 8
        header = bytes((key._kid_bits | 0x08 | (length - 1),)) + key._kid_bytes
        header += ctr.to_bytes(length, "big")
    nonce = (key._salt_int ^ ctr).to_bytes(len(key._salt), "big")  # frame_nonce
    return header + key._aead.encrypt(nonce, plaintext, header + metadata)


def decrypt(key: FrameKey, metadata: bytes, sframe_ciphertext: bytes) -> bytes:
    """Decrypt one frame (RFC 9605 section 4.4.4).

    Returns:
        The plaintext. The caller checks the counter for replay afterwards.

    Raises:
        DecodeError: the header is malformed.
        InvalidTag: the frame is for another KID, or does not authenticate
            (tampered, truncated, wrong key or wrong metadata).
    """
    kid, ctr, length = parse_header(sframe_ciphertext)
    return decrypt_parsed(key, metadata, sframe_ciphertext, kid, ctr, length)


def decrypt_parsed(
    key: FrameKey, metadata: bytes, sframe_ciphertext: bytes, kid: int, ctr: int, header_length: int
) -> bytes:
    """:func:`decrypt`, for a caller that already parsed the header (to choose the key).

    Args:
        kid: the header's KID, ``parse_header(sframe_ciphertext)[0]``.
        ctr: its CTR, ``parse_header(sframe_ciphertext)[1]``.
        header_length: its length, ``parse_header(sframe_ciphertext)[2]``.

    Raises:
        InvalidTag: as :func:`decrypt`.
    """
    if kid != key.kid:
        raise InvalidTag
    nonce = (key._salt_int ^ ctr).to_bytes(len(key._salt), "big")  # frame_nonce
    aad = sframe_ciphertext[:header_length] + metadata
    return key._aead.decrypt(nonce, sframe_ciphertext[header_length:], aad)
