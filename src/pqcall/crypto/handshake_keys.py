"""What the call handshake checks and derives: limits, the key schedule's use, the call keys.

The pieces of :mod:`pqcall.crypto.handshake` that are not its state machines:
the size and age limits both sides check, the SAS commitment, deriving the
call secret and confirm MACs from the transcript (:func:`derive`) and the
:class:`CallKeys` a completed handshake gives (:func:`call_keys`), and the
caller's per-call ephemerals. Pure functions over bytes; no state, no clock
(``now`` is a parameter). Import the public names from
:mod:`pqcall.crypto.handshake`.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from pqcall.crypto import keyschedule
from pqcall.crypto.handshake_messages import COMMITMENT_LENGTH, NONCE_LENGTH, Offer
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.exceptions import HandshakeFailed, LocalProtocolError

MAX_CALL_ID_LENGTH = 64
MAX_USERNAME_LENGTH = 64
SAS_DIGITS = 6
MAX_RING_S = 600.0
"""The longest a server lets a call ring (``pqcall server --ring-timeout`` is at most this).

A callee that comes online while a call rings gets its offer then, so an offer
this old can still be a live call."""
CLOCK_SKEW_S = 120.0
"""How far the caller's and callee's wall clocks may disagree."""
OFFER_MAX_AGE_S = MAX_RING_S + CLOCK_SKEW_S
"""An offer made longer ago than this (by the caller's clock) is refused as stale."""
MS_PER_S = 1000

CONTEXT_OFFER = b"pqcall call offer"
CONTEXT_ANSWER = b"pqcall call answer"


class Role(enum.Enum):
    """Which side of the call we are."""

    CALLER = "caller"
    CALLEE = "callee"


def check_call_id(call_id: bytes) -> None:
    if not 0 < len(call_id) <= MAX_CALL_ID_LENGTH:
        raise LocalProtocolError(f"call id must be 1 to {MAX_CALL_ID_LENGTH} bytes")


def check_name(name: str) -> None:
    if not 0 < len(name.encode("utf-8")) <= MAX_USERNAME_LENGTH:
        raise LocalProtocolError(f"username must be 1 to {MAX_USERNAME_LENGTH} bytes")


def commitment(nonce: bytes) -> bytes:
    return keyschedule.transcript_hash(keyschedule.LABEL_SAS_COMMIT, nonce)[:COMMITMENT_LENGTH]


def check_fresh(offer: Offer, now: float) -> None:
    """Refuse an offer made too long ago or too far ahead by the caller's clock."""
    age_s = now - offer.offered_at_ms / MS_PER_S
    if age_s > OFFER_MAX_AGE_S:
        raise HandshakeFailed(
            f"stale offer: made {age_s:.0f} s ago (at most {OFFER_MAX_AGE_S:.0f} s): a replay"
        )
    if -age_s > CLOCK_SKEW_S:
        raise HandshakeFailed(
            f"offer dated {-age_s:.0f} s ahead of our clock (at most {CLOCK_SKEW_S:.0f} s):"
            " check the clocks"
        )


def format_sas(value: int) -> str:
    """Format a SAS number as two groups of three digits, e.g. ``"042 917"``."""
    digits = f"{value:0{SAS_DIGITS}d}"
    return f"{digits[:3]} {digits[3:]}"


@dataclass(frozen=True, slots=True)
class CallKeys:
    """What a completed handshake gives the call. Secrets are kept out of ``repr``."""

    call_id: bytes
    """Server-assigned id of the call."""
    role: Role
    """Our side of the call."""
    their_name: str
    """The peer's username."""
    their_identity: IdentityPublicKey
    """The peer's authenticated long-term identity."""
    sas: str
    """Short authentication string to read aloud, e.g. ``"042 917"``."""
    transcript_hash: bytes
    """SHA-512 over all three messages."""
    send_key: bytes = field(repr=False)
    """SFrame base key for the media we send."""
    receive_key: bytes = field(repr=False)
    """SFrame base key for the media we receive."""
    exporter_secret: bytes = field(repr=False)
    """Secret for :meth:`export`; never used directly."""

    def export(self, label: bytes, length: int = keyschedule.SECRET_LENGTH) -> bytes:
        """Derive a further key for another use in this call (like a TLS exporter)."""
        return keyschedule.labeled_expand(
            self.exporter_secret, keyschedule.LABEL_EXPORTER + b" " + label, b"", length
        )


@dataclass(frozen=True, slots=True)
class Secrets:
    """Secrets derived once the answer is known (internal)."""

    call_secret: bytes
    transcript: bytes
    confirm_caller: bytes
    confirm_callee: bytes


def derive(
    *,
    offer: Offer,
    offer_bytes: bytes,
    answer_signed_part: bytes,
    mlkem_ciphertext: bytes,
    mlkem_secret: bytes,
    x25519_secret: bytes,
    callee_x25519: bytes,
) -> Secrets:
    transcript = keyschedule.transcript_hash(offer_bytes, answer_signed_part)
    call_secret = keyschedule.combine(
        mlkem_secret=mlkem_secret,
        x25519_secret=x25519_secret,
        mlkem_ciphertext=mlkem_ciphertext,
        caller_x25519=offer.x25519_public,
        callee_x25519=callee_x25519,
        transcript=transcript,
    )
    length = keyschedule.SECRET_LENGTH
    return Secrets(
        call_secret=call_secret,
        transcript=transcript,
        confirm_caller=keyschedule.labeled_expand(
            call_secret, keyschedule.LABEL_CONFIRM_CALLER, transcript, length
        ),
        confirm_callee=keyschedule.labeled_expand(
            call_secret, keyschedule.LABEL_CONFIRM_CALLEE, transcript, length
        ),
    )


def call_keys(
    secrets: Secrets,
    *,
    role: Role,
    offer: Offer,
    full_transcript: bytes,
    their_name: str,
    their_identity: IdentityPublicKey,
) -> CallKeys:
    length = keyschedule.SECRET_LENGTH
    secret, transcript = secrets.call_secret, secrets.transcript
    caller_key = keyschedule.labeled_expand(
        secret, keyschedule.LABEL_MEDIA_CALLER, transcript, length
    )
    callee_key = keyschedule.labeled_expand(
        secret, keyschedule.LABEL_MEDIA_CALLEE, transcript, length
    )
    sas_raw = keyschedule.labeled_expand(secret, keyschedule.LABEL_SAS, full_transcript, 4)
    is_caller = role is Role.CALLER
    return CallKeys(
        call_id=offer.call_id,
        role=role,
        their_name=their_name,
        their_identity=their_identity,
        sas=format_sas(int.from_bytes(sas_raw, "big") % 10**SAS_DIGITS),
        transcript_hash=full_transcript,
        send_key=caller_key if is_caller else callee_key,
        receive_key=callee_key if is_caller else caller_key,
        exporter_secret=keyschedule.labeled_expand(
            secret, keyschedule.LABEL_EXPORTER, transcript, length
        ),
    )


@dataclass(frozen=True, slots=True)
class CallerEphemeral:
    """The caller's per-call secrets. Pass one only to reproduce a recorded transcript."""

    x25519_private: bytes = field(repr=False)
    """X25519 private key (32 bytes)."""
    mlkem_seed: bytes = field(repr=False)
    """ML-KEM-768 seed (64 bytes)."""
    sas_nonce: bytes = field(repr=False)
    """Nonce committed in the offer (32 bytes)."""

    @classmethod
    def generate(cls) -> CallerEphemeral:
        """Fresh random ephemerals."""
        return cls(
            x25519_private=x25519.X25519PrivateKey.generate().private_bytes_raw(),
            mlkem_seed=mlkem.MLKEM768PrivateKey.generate().private_bytes_raw(),
            sas_nonce=os.urandom(NONCE_LENGTH),
        )
