"""Wire formats of the three handshake messages (docs/protocol.md#handshake).

Each message is a frozen dataclass with ``parse`` (strict: any defect raises
:class:`~pqcall.exceptions.DecodeError` naming it) and ``serialize``. What the
fields mean and how they are checked is in :mod:`pqcall.crypto.handshake`.

The offer opens with the handshake version (:data:`HANDSHAKE_VERSION`, under
the caller's signature, so it cannot be downgraded); version 2 added the
caller's clock reading ``offered_at_ms`` so a replayed old offer is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from pqcall.crypto import encoding, keyschedule
from pqcall.crypto.encoding import Kind, Reader
from pqcall.crypto.identity import FINGERPRINT_LENGTH, IdentityPublicKey
from pqcall.exceptions import DecodeError

X25519_PUBLIC_LENGTH = 32
X25519_PRIVATE_LENGTH = 32
MLKEM768_PUBLIC_LENGTH = 1184
MLKEM768_SEED_LENGTH = 64
MLKEM768_CIPHERTEXT_LENGTH = 1088
NONCE_LENGTH = 32
COMMITMENT_LENGTH = 32
HANDSHAKE_VERSION = 2
"""Version of the handshake messages; 1 had no ``offered_at_ms`` in the offer."""


@dataclass(frozen=True, slots=True)
class Offer:
    """Message 1, caller to callee."""

    call_id: bytes
    """Server-assigned id of the call."""
    offered_at_ms: int
    """The caller's wall clock when it made the offer, in Unix milliseconds."""
    caller_name: str
    """Username of the caller."""
    callee_name: str
    """Username of the callee."""
    caller_identity: IdentityPublicKey
    """The caller's long-term identity."""
    callee_fingerprint: bytes
    """Fingerprint of the identity the caller believes the callee has."""
    x25519_public: bytes
    """The caller's ephemeral X25519 public key."""
    mlkem_public: bytes
    """The caller's ephemeral ML-KEM-768 encapsulation key."""
    sas_commitment: bytes
    """Hash commitment to the SAS nonce revealed in the confirm."""
    signature: bytes
    """The caller's hybrid signature over everything above."""

    def signed_part(self) -> bytes:
        """The bytes the caller signs."""
        return (
            encoding.u8(HANDSHAKE_VERSION)
            + encoding.vec16(self.call_id)
            + encoding.u64(self.offered_at_ms)
            + encoding.text(self.caller_name)
            + encoding.text(self.callee_name)
            + encoding.vec16(self.caller_identity.encode())
            + self.callee_fingerprint
            + self.x25519_public
            + self.mlkem_public
            + self.sas_commitment
        )

    def serialize(self) -> bytes:
        """Encode as a type-tagged message."""
        return encoding.encode(
            Kind.HANDSHAKE_OFFER, self.signed_part() + encoding.vec16(self.signature)
        )

    @classmethod
    def parse(cls, data: bytes) -> Offer:
        """Parse an offer. Raises DecodeError if malformed."""
        reader = Reader(encoding.decode(Kind.HANDSHAKE_OFFER, data), "handshake offer")
        version = reader.u8("handshake version")
        if version != HANDSHAKE_VERSION:
            raise DecodeError(f"unsupported handshake version {version}")
        offer = cls(
            call_id=reader.vec16("call id"),
            offered_at_ms=reader.u64("offer time"),
            caller_name=reader.text("caller name"),
            callee_name=reader.text("callee name"),
            caller_identity=IdentityPublicKey.decode(reader.vec16("caller identity")),
            callee_fingerprint=reader.fixed(FINGERPRINT_LENGTH, "callee fingerprint"),
            x25519_public=reader.fixed(X25519_PUBLIC_LENGTH, "X25519 key"),
            mlkem_public=reader.fixed(MLKEM768_PUBLIC_LENGTH, "ML-KEM key"),
            sas_commitment=reader.fixed(COMMITMENT_LENGTH, "SAS commitment"),
            signature=reader.vec16("signature"),
        )
        reader.end()
        return offer


@dataclass(frozen=True, slots=True)
class Answer:
    """Message 2, callee to caller."""

    callee_identity: IdentityPublicKey
    """The callee's long-term identity."""
    x25519_public: bytes
    """The callee's ephemeral X25519 public key."""
    mlkem_ciphertext: bytes
    """ML-KEM-768 ciphertext to the caller's ephemeral key."""
    signature: bytes
    """The callee's signature over the transcript hash of offer and signed part."""
    confirm_mac: bytes
    """Key confirmation: MAC under the callee's confirm key."""

    def signed_part(self) -> bytes:
        """The answer's own fields covered by the transcript hash the callee signs."""
        return (
            encoding.vec16(self.callee_identity.encode())
            + self.x25519_public
            + self.mlkem_ciphertext
        )

    def serialize(self) -> bytes:
        """Encode as a type-tagged message."""
        return encoding.encode(
            Kind.HANDSHAKE_ANSWER,
            self.signed_part() + encoding.vec16(self.signature) + self.confirm_mac,
        )

    @classmethod
    def parse(cls, data: bytes) -> Answer:
        """Parse an answer. Raises DecodeError if malformed."""
        reader = Reader(encoding.decode(Kind.HANDSHAKE_ANSWER, data), "handshake answer")
        answer = cls(
            callee_identity=IdentityPublicKey.decode(reader.vec16("callee identity")),
            x25519_public=reader.fixed(X25519_PUBLIC_LENGTH, "X25519 key"),
            mlkem_ciphertext=reader.fixed(MLKEM768_CIPHERTEXT_LENGTH, "ML-KEM ciphertext"),
            signature=reader.vec16("signature"),
            confirm_mac=reader.fixed(keyschedule.MAC_LENGTH, "confirm MAC"),
        )
        reader.end()
        return answer


@dataclass(frozen=True, slots=True)
class Confirm:
    """Message 3, caller to callee."""

    sas_nonce: bytes
    """The nonce committed to in the offer."""
    confirm_mac: bytes
    """Key confirmation: MAC under the caller's confirm key."""

    def serialize(self) -> bytes:
        """Encode as a type-tagged message."""
        return encoding.encode(Kind.HANDSHAKE_CONFIRM, self.sas_nonce + self.confirm_mac)

    @classmethod
    def parse(cls, data: bytes) -> Confirm:
        """Parse a confirm. Raises DecodeError if malformed."""
        reader = Reader(encoding.decode(Kind.HANDSHAKE_CONFIRM, data), "handshake confirm")
        confirm = cls(
            sas_nonce=reader.fixed(NONCE_LENGTH, "SAS nonce"),
            confirm_mac=reader.fixed(keyschedule.MAC_LENGTH, "confirm MAC"),
        )
        reader.end()
        return confirm
