"""The static file-encryption key pair of an account, and its signed key bundle.

Files are encrypted to a recipient who may be offline, so they cannot use the
forward-secret call handshake; they use a long-lived hybrid KEM key instead:
HPKE's ``MLKEM768_X25519`` (ML-KEM-768 + X25519, the X-Wing combiner), see
:mod:`pqcall.crypto.filecrypt`.

The server stores each user's file public key in a :class:`KeyBundle`, signed
by the account's hybrid identity. A sender accepts the file key only through
:meth:`KeyBundle.verify` against the recipient's *pinned* identity, so a server
that substitutes a file key of its own is caught like one that substitutes an
identity.

Encodings (see :mod:`pqcall.crypto.encoding` for the 4-byte header)::

    file public key  = header | ML-KEM-768 public (1184) | X25519 public (32)
    file private key = header | ML-KEM-768 seed (64)     | X25519 private (32)
    key bundle       = header | username (text16) | identity public (vec16)
                       | file public key (vec16) | created (u64, unix seconds)
                       | signature (vec16)

The bundle signature is the hybrid identity signature, context
``b"pqcall key bundle"``, over the whole bundle encoding up to (not including)
the signature field, header included.

Future direction: a bundle may carry an expiry so clients rotate file keys on
a schedule; :class:`~pqcall.crypto.keystore.AccountSecrets` already keeps the
previous private keys needed to read files sent before a rotation.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from pqcall.crypto import encoding
from pqcall.crypto.encoding import Kind, Reader
from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey, sha256
from pqcall.exceptions import BadSignature, DecodeError, LocalProtocolError

MLKEM768_PUBLIC_LENGTH = 1184
MLKEM768_SEED_LENGTH = 64
X25519_KEY_LENGTH = 32
MAX_USERNAME_LENGTH = 255  # UTF-8 bytes
MAX_CREATED = 2**64 - 1

BUNDLE_SIGNATURE_CONTEXT = b"pqcall key bundle"

PUBLIC_ENCODED_LENGTH = encoding.HEADER_LENGTH + MLKEM768_PUBLIC_LENGTH + X25519_KEY_LENGTH
PRIVATE_ENCODED_LENGTH = encoding.HEADER_LENGTH + MLKEM768_SEED_LENGTH + X25519_KEY_LENGTH


class FilePublicKey:
    """The public half of an account's file-encryption key: what senders encrypt to."""

    def __init__(self, mlkem_key: mlkem.MLKEM768PublicKey, x25519_key: x25519.X25519PublicKey):
        self._mlkem = mlkem_key  # post-quantum half
        self._x25519 = x25519_key  # classical half
        self._encoded = encoding.encode(
            Kind.FILE_PUBLIC_KEY,
            mlkem_key.public_bytes_raw() + x25519_key.public_bytes_raw(),
        )  # canonical encoding, also the basis of equality and fingerprints

    @classmethod
    def decode(cls, data: bytes) -> FilePublicKey:
        """Parse an encoded file public key.

        Raises:
            DecodeError: not a file public key, or a malformed one.
        """
        reader = Reader(encoding.decode(Kind.FILE_PUBLIC_KEY, data), "file public key")
        mlkem_raw = reader.fixed(MLKEM768_PUBLIC_LENGTH, "ML-KEM-768 key")
        x25519_raw = reader.fixed(X25519_KEY_LENGTH, "X25519 key")
        reader.end()
        try:
            return cls(
                mlkem.MLKEM768PublicKey.from_public_bytes(mlkem_raw),
                x25519.X25519PublicKey.from_public_bytes(x25519_raw),
            )
        except ValueError:
            raise DecodeError("file public key has an invalid key") from None

    def encode(self) -> bytes:
        """The canonical, type-tagged encoding."""
        return self._encoded

    def fingerprint(self) -> bytes:
        """SHA-256 of the encoding: names this key in an encrypted file's header."""
        return sha256(self._encoded)

    def hpke_key(self) -> hpke.MLKEM768X25519PublicKey:
        """The key as HPKE's ``MLKEM768_X25519`` recipient key."""
        return hpke.MLKEM768X25519PublicKey(self._mlkem, self._x25519)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FilePublicKey):
            return NotImplemented
        return hmac.compare_digest(self._encoded, other._encoded)

    def __hash__(self) -> int:
        return hash(self._encoded)

    def __repr__(self) -> str:
        return f"FilePublicKey({self.fingerprint()[:8].hex()})"


class FilePrivateKey:
    """An account's file-decryption key. Never leaves the keystore unencrypted."""

    def __init__(self, mlkem_seed: bytes, x25519_private: bytes) -> None:
        if len(mlkem_seed) != MLKEM768_SEED_LENGTH or len(x25519_private) != X25519_KEY_LENGTH:
            raise LocalProtocolError("file key needs a 64-byte seed and a 32-byte X25519 key")
        self._mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed)
        self._x25519 = x25519.X25519PrivateKey.from_private_bytes(x25519_private)
        self._public = FilePublicKey(self._mlkem.public_key(), self._x25519.public_key())

    @classmethod
    def generate(cls) -> FilePrivateKey:
        """A new random file key pair."""
        return cls(
            mlkem.MLKEM768PrivateKey.generate().private_bytes_raw(),
            x25519.X25519PrivateKey.generate().private_bytes_raw(),
        )

    @classmethod
    def decode(cls, data: bytes) -> FilePrivateKey:
        """Parse an encoded file private key (as kept inside the keystore).

        Raises:
            DecodeError: not a file private key, or a malformed one.
        """
        reader = Reader(encoding.decode(Kind.FILE_PRIVATE_KEY, data), "file private key")
        mlkem_seed = reader.fixed(MLKEM768_SEED_LENGTH, "ML-KEM-768 seed")
        x25519_raw = reader.fixed(X25519_KEY_LENGTH, "X25519 key")
        reader.end()
        return cls(mlkem_seed, x25519_raw)

    def encode(self) -> bytes:
        """The secret key material, type-tagged. Only the keystore should call this."""
        return encoding.encode(
            Kind.FILE_PRIVATE_KEY,
            self._mlkem.private_bytes_raw() + self._x25519.private_bytes_raw(),
        )

    def public_key(self) -> FilePublicKey:
        """The public half."""
        return self._public

    def hpke_key(self) -> hpke.MLKEM768X25519PrivateKey:
        """The key as HPKE's ``MLKEM768_X25519`` recipient private key."""
        return hpke.MLKEM768X25519PrivateKey(self._mlkem, self._x25519)

    def __repr__(self) -> str:
        return f"FilePrivateKey(public={self._public.fingerprint()[:8].hex()})"


class KeyBundle:
    """A file public key signed by the account identity that owns it.

    Decoding does not verify: :attr:`username`, :attr:`identity` and
    :attr:`created` are claims until :meth:`verify` succeeds, and the file key
    is only handed out by :meth:`verify`.
    """

    def __init__(
        self,
        username: str,
        identity: IdentityPublicKey,
        file_key: FilePublicKey,
        created: int,
        signature: bytes,
    ) -> None:
        self.username = username  # the account name the owner claims
        self.identity = identity  # the signer; compare with the pinned identity
        self.created = created  # unix seconds, set by the owner
        self._file_key = file_key  # released only by verify()
        self._signature = signature  # hybrid signature over _signed_part()

    @classmethod
    def create(
        cls,
        identity_key: IdentityPrivateKey,
        username: str,
        file_key: FilePublicKey,
        created: int,
    ) -> KeyBundle:
        """Sign ``file_key`` as ``username``'s file key.

        Args:
            identity_key: the account identity that vouches for the key.
            username: the account name (1 to 255 UTF-8 bytes).
            file_key: the public file key to publish.
            created: unix seconds, from the caller's clock.

        Raises:
            LocalProtocolError: the username or ``created`` is out of range.
        """
        _check_username(username, LocalProtocolError)
        if not 0 <= created <= MAX_CREATED:
            raise LocalProtocolError("key bundle creation time out of range")
        identity = identity_key.public_key()
        signed = _signed_part(username, identity, file_key, created)
        signature = identity_key.sign(signed, context=BUNDLE_SIGNATURE_CONTEXT)
        return cls(username, identity, file_key, created, signature)

    @classmethod
    def decode(cls, data: bytes) -> KeyBundle:
        """Parse an encoded key bundle without verifying it.

        Raises:
            DecodeError: not a key bundle, or a malformed one.
        """
        reader = Reader(encoding.decode(Kind.KEY_BUNDLE, data), "key bundle")
        username = reader.text("username")
        _check_username(username, DecodeError)
        identity = IdentityPublicKey.decode(reader.vec16("identity"))
        file_key = FilePublicKey.decode(reader.vec16("file key"))
        created = reader.u64("created")
        signature = reader.vec16("signature")
        reader.end()
        return cls(username, identity, file_key, created, signature)

    def encode(self) -> bytes:
        """The canonical, type-tagged encoding (what the server stores)."""
        signed = _signed_part(self.username, self.identity, self._file_key, self.created)
        return signed + encoding.vec16(self._signature)

    def verify(self, expected_identity: IdentityPublicKey) -> FilePublicKey:
        """Check the bundle was signed by ``expected_identity`` and return its file key.

        Args:
            expected_identity: the identity the caller has pinned for this user,
                never the one inside the bundle.

        Raises:
            BadSignature: the bundle is of another identity, or its signature
                does not verify.
        """
        if self.identity != expected_identity:
            raise BadSignature("key bundle is signed by another identity")
        signed = _signed_part(self.username, self.identity, self._file_key, self.created)
        try:
            expected_identity.verify(self._signature, signed, context=BUNDLE_SIGNATURE_CONTEXT)
        except BadSignature:
            raise BadSignature("key bundle signature does not verify") from None
        return self._file_key

    def __repr__(self) -> str:
        return f"KeyBundle({self.username!r}, {self.identity!r}, created={self.created})"


def _check_username(username: str, error: type[Exception]) -> None:
    try:
        length = len(username.encode("utf-8"))
    except UnicodeEncodeError:
        raise error("key bundle username is not valid Unicode") from None
    if not 0 < length <= MAX_USERNAME_LENGTH:
        raise error("key bundle username must be 1 to 255 bytes")


def _signed_part(
    username: str, identity: IdentityPublicKey, file_key: FilePublicKey, created: int
) -> bytes:
    return encoding.encode(
        Kind.KEY_BUNDLE,
        encoding.text(username)
        + encoding.vec16(identity.encode())
        + encoding.vec16(file_key.encode())
        + encoding.u64(created),
    )
