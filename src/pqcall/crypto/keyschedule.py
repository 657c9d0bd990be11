"""The call key schedule: labeled HKDF-SHA-512 helpers and the hybrid combiner.

Modelled on HPKE's LabeledExtract/LabeledExpand (RFC 9180 section 4): every
derivation names its purpose with a versioned byte label, so no two uses of a
secret can ever produce the same key. The hybrid combiner follows X-Wing's
idea (draft-connolly-cfrg-xwing-kem): the ML-KEM and X25519 shared secrets are
hashed together *with* the ciphertext and both X25519 public keys, so the call
secret stays secret as long as either ML-KEM-768 or X25519 holds.

See docs/protocol.md#key-schedule for the full list of labels.
"""

from __future__ import annotations

import hmac as _hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from pqcall.crypto import encoding

HASH = hashes.SHA512()
HASH_LENGTH = 64
SECRET_LENGTH = 32
MAC_LENGTH = 32
LABEL_PREFIX = b"pqcall v1 "

# labels: one per derived value, never reused
LABEL_COMBINER = b"hybrid combiner"
LABEL_CALL_SECRET = b"call secret"
LABEL_MEDIA_CALLER = b"media caller to callee"
LABEL_MEDIA_CALLEE = b"media callee to caller"
LABEL_CONFIRM_CALLER = b"confirm caller"
LABEL_CONFIRM_CALLEE = b"confirm callee"
LABEL_SAS = b"short authentication string"
LABEL_SAS_COMMIT = b"sas commitment"
LABEL_EXPORTER = b"exporter"


def transcript_hash(*parts: bytes) -> bytes:
    """SHA-512 over length-prefixed parts, so part boundaries cannot shift."""
    digest = hashes.Hash(HASH)
    for part in parts:
        digest.update(encoding.u32(len(part)) + part)
    return digest.finalize()


def labeled_extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract(salt, "pqcall v1 " || label || ikm) with SHA-512."""
    return HKDF.extract(HASH, salt, LABEL_PREFIX + label + ikm)


def labeled_expand(prk: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand(prk, length || len(label) || "pqcall v1 " || label || context)."""
    full_label = LABEL_PREFIX + label
    info = encoding.u16(length) + encoding.u8(len(full_label)) + full_label + context
    return HKDFExpand(HASH, length, info).derive(prk)


def combine(
    *,
    mlkem_secret: bytes,
    x25519_secret: bytes,
    mlkem_ciphertext: bytes,
    caller_x25519: bytes,
    callee_x25519: bytes,
    transcript: bytes,
) -> bytes:
    """Derive the call secret from both shared secrets, bound to the transcript hash.

    Args:
        mlkem_secret: ML-KEM-768 shared secret.
        x25519_secret: X25519 shared secret.
        mlkem_ciphertext: the ML-KEM ciphertext it came from.
        caller_x25519: the caller's ephemeral X25519 public key.
        callee_x25519: the callee's ephemeral X25519 public key.
        transcript: hash of the offer and the signed part of the answer.
    """
    ikm = mlkem_secret + x25519_secret + mlkem_ciphertext + caller_x25519 + callee_x25519
    prk = labeled_extract(b"", LABEL_COMBINER, ikm)
    return labeled_expand(prk, LABEL_CALL_SECRET, transcript, SECRET_LENGTH)


def mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA-256 of ``data``."""
    h = crypto_hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def mac_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two MACs or secrets."""
    return _hmac.compare_digest(a, b)
