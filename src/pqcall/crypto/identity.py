"""Hybrid signing identities: Ed25519 + ML-DSA-65.

An account's identity is a pair of signing keys. A signature is the pair of
both signatures over the same message, and verifies only if *both* halves
verify, so forging one needs breaking Ed25519 *and* ML-DSA-65 (FIPS 204).

Both halves sign ``DOMAIN || len(context) || context || data``: the context
names what is being signed (a handshake offer, a file, a login challenge), so a
signature made for one purpose is never valid for another. ML-DSA also gets the
context through its own context parameter.

Encodings (see :mod:`pqcall.crypto.encoding` for the 4-byte header)::

    identity public  = header | ed25519 public (32) | ML-DSA-65 public (1952)
    identity private = header | ed25519 seed (32)   | ML-DSA-65 seed (32)
    signature        = header | ed25519 sig (64)    | ML-DSA-65 sig (3309)
"""

from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from pqcall.crypto import encoding
from pqcall.crypto.encoding import Kind, Reader
from pqcall.exceptions import BadSignature, DecodeError, LocalProtocolError

ED25519_PUBLIC_LENGTH = 32
ED25519_SEED_LENGTH = 32
ED25519_SIGNATURE_LENGTH = 64
MLDSA65_PUBLIC_LENGTH = 1952
MLDSA65_SEED_LENGTH = 32
MLDSA65_SIGNATURE_LENGTH = 3309
FINGERPRINT_LENGTH = 32
MAX_CONTEXT_LENGTH = 255

SIGNATURE_DOMAIN = b"pqcall v1 hybrid signature"

PUBLIC_ENCODED_LENGTH = encoding.HEADER_LENGTH + ED25519_PUBLIC_LENGTH + MLDSA65_PUBLIC_LENGTH
SIGNATURE_ENCODED_LENGTH = (
    encoding.HEADER_LENGTH + ED25519_SIGNATURE_LENGTH + MLDSA65_SIGNATURE_LENGTH
)


def _signed_message(context: bytes, data: bytes) -> bytes:
    if not 0 < len(context) <= MAX_CONTEXT_LENGTH:
        raise LocalProtocolError("signature context must be 1 to 255 bytes")
    return SIGNATURE_DOMAIN + encoding.u8(len(context)) + context + data


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data`` through ``cryptography``."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


class IdentityPublicKey:
    """The public half of a hybrid identity: what the server stores and contacts pin."""

    def __init__(self, ed25519_key: ed25519.Ed25519PublicKey, mldsa_key: mldsa.MLDSA65PublicKey):
        self._ed25519 = ed25519_key  # classical half
        self._mldsa = mldsa_key  # post-quantum half
        self._encoded = encoding.encode(
            Kind.IDENTITY_PUBLIC,
            ed25519_key.public_bytes_raw() + mldsa_key.public_bytes_raw(),
        )  # canonical encoding, also the basis of equality and fingerprints

    @classmethod
    def decode(cls, data: bytes) -> IdentityPublicKey:
        """Parse an encoded identity public key.

        Raises:
            DecodeError: not an identity public key, or a malformed one.
        """
        reader = Reader(encoding.decode(Kind.IDENTITY_PUBLIC, data), "identity public key")
        ed_raw = reader.fixed(ED25519_PUBLIC_LENGTH, "ed25519 key")
        mldsa_raw = reader.fixed(MLDSA65_PUBLIC_LENGTH, "ML-DSA-65 key")
        reader.end()
        try:
            return cls(
                ed25519.Ed25519PublicKey.from_public_bytes(ed_raw),
                mldsa.MLDSA65PublicKey.from_public_bytes(mldsa_raw),
            )
        except ValueError:
            raise DecodeError("identity public key has an invalid key") from None

    def encode(self) -> bytes:
        """The canonical, type-tagged encoding."""
        return self._encoded

    def verify(self, signature: bytes, data: bytes, *, context: bytes) -> None:
        """Check a hybrid signature made by :meth:`IdentityPrivateKey.sign`.

        Raises:
            BadSignature: either half does not verify, or the signature is malformed.
        """
        try:
            reader = Reader(encoding.decode(Kind.SIGNATURE, signature), "signature")
            ed_sig = reader.fixed(ED25519_SIGNATURE_LENGTH, "ed25519 signature")
            mldsa_sig = reader.fixed(MLDSA65_SIGNATURE_LENGTH, "ML-DSA-65 signature")
            reader.end()
        except DecodeError:
            raise BadSignature("signature is malformed") from None
        message = _signed_message(context, data)
        # both halves must verify; check both so timing does not say which failed
        ok = True
        try:
            self._ed25519.verify(ed_sig, message)
        except InvalidSignature:
            ok = False
        try:
            self._mldsa.verify(mldsa_sig, message, context)
        except InvalidSignature:
            ok = False
        if not ok:
            raise BadSignature("signature does not verify")

    def fingerprint(self) -> bytes:
        """SHA-256 of the encoding: a short, stable name for this identity."""
        return sha256(self._encoded)

    def fingerprint_text(self) -> str:
        """The fingerprint's first 16 bytes as eight groups of four hex digits."""
        raw = self.fingerprint()[:16].hex()
        return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdentityPublicKey):
            return NotImplemented
        return hmac.compare_digest(self._encoded, other._encoded)

    def __hash__(self) -> int:
        return hash(self._encoded)

    def __repr__(self) -> str:
        return f"IdentityPublicKey({self.fingerprint_text()!r})"


class IdentityPrivateKey:
    """A hybrid signing identity. Never leaves the keystore unencrypted."""

    def __init__(self, ed25519_seed: bytes, mldsa_seed: bytes) -> None:
        if len(ed25519_seed) != ED25519_SEED_LENGTH or len(mldsa_seed) != MLDSA65_SEED_LENGTH:
            raise LocalProtocolError("identity seeds must be 32 bytes each")
        self._ed25519 = ed25519.Ed25519PrivateKey.from_private_bytes(ed25519_seed)
        self._mldsa = mldsa.MLDSA65PrivateKey.from_seed_bytes(mldsa_seed)
        self._public = IdentityPublicKey(self._ed25519.public_key(), self._mldsa.public_key())

    @classmethod
    def generate(cls) -> IdentityPrivateKey:
        """A new random identity."""
        ed_key = ed25519.Ed25519PrivateKey.generate()
        mldsa_key = mldsa.MLDSA65PrivateKey.generate()
        return cls(ed_key.private_bytes_raw(), mldsa_key.private_bytes_raw())

    @classmethod
    def decode(cls, data: bytes) -> IdentityPrivateKey:
        """Parse an encoded private identity (as kept inside the keystore).

        Raises:
            DecodeError: not a private identity, or a malformed one.
        """
        reader = Reader(encoding.decode(Kind.IDENTITY_PRIVATE, data), "identity private key")
        ed_seed = reader.fixed(ED25519_SEED_LENGTH, "ed25519 seed")
        mldsa_seed = reader.fixed(MLDSA65_SEED_LENGTH, "ML-DSA-65 seed")
        reader.end()
        return cls(ed_seed, mldsa_seed)

    def encode(self) -> bytes:
        """The secret seeds, type-tagged. Only the keystore should call this."""
        return encoding.encode(
            Kind.IDENTITY_PRIVATE,
            self._ed25519.private_bytes_raw() + self._mldsa.private_bytes_raw(),
        )

    def public_key(self) -> IdentityPublicKey:
        """The public identity."""
        return self._public

    def sign(self, data: bytes, *, context: bytes) -> bytes:
        """Sign ``data`` for the purpose named by ``context`` with both halves."""
        message = _signed_message(context, data)
        return encoding.encode(
            Kind.SIGNATURE,
            self._ed25519.sign(message) + self._mldsa.sign(message, context),
        )

    def __repr__(self) -> str:
        return f"IdentityPrivateKey(public={self._public.fingerprint_text()!r})"
