"""Who is in a group call, verified: the roster, its signatures, and the group code.

Each phone builds its own :class:`Roster` from the members the server lists
*and the identities its own pairwise handshakes authenticated* (never from the
server's word alone), signs the roster's digest with its hybrid identity
(Ed25519 + ML-DSA-65), sends the signature to every member over the pairwise
channels, and checks theirs against its own roster (:func:`check_roster`).
Members who see the same call see the same roster, so every signature
verifies; a member the server added for some phones only, or a swapped
identity, makes the digests differ, so signatures fail on every phone that
sees a different roster, and the group code differs too.

Digest and code (docs/protocol.md#group-calls-keys)::

    digest = SHA-512 over length-prefixed parts: "pqcall v1 group roster", call_id,
             u32 generation, u16 count, then per member (sorted by name) text(name) ‖ fingerprint
    signature = hybrid signature of digest, context "pqcall group roster"
    code   = like a safety-number half: s = u16 version ‖ "pqcall v1 group code" ‖ digest,
             5200 times s = SHA-512(s ‖ digest); four 5-byte chunks, each mod 1000
             → "ddd ddd ddd ddd"

The roster's ``generation`` is the roster epoch: it grows by one on every
join and leave (each of which also rotates every member's sender key), so
the code changes whenever the membership does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes

from pqcall.crypto import encoding, keyschedule
from pqcall.crypto.handshake_keys import MAX_CALL_ID_LENGTH, MAX_USERNAME_LENGTH
from pqcall.crypto.identity import (
    FINGERPRINT_LENGTH,
    IdentityPrivateKey,
    IdentityPublicKey,
)
from pqcall.exceptions import BadSignature, LocalProtocolError

MAX_MEMBERS: Final = 20  # people in one group call
MAX_ROSTER_GENERATION: Final = 0xFFFF_FFFF
SIGNATURE_CONTEXT: Final = b"pqcall group roster"
LABEL_ROSTER: Final = b"pqcall v1 group roster"
LABEL_GROUP_CODE: Final = b"pqcall v1 group code"
GROUP_CODE_VERSION: Final = 1
GROUP_CODE_ITERATIONS: Final = 5200  # as safety numbers: grinding an identity costs this much more
GROUP_CODE_CHUNKS: Final = 4
DIGITS_PER_CHUNK: Final = 3
BYTES_PER_CHUNK: Final = 5


@dataclass(frozen=True, slots=True)
class Roster:
    """The members of a group call at one roster generation, sorted by name.

    Members are given in any order and kept sorted, so two phones that agree
    on the set agree on the roster.

    Raises:
        LocalProtocolError: an empty or oversized roster, a repeated name, a
            name or call id of the wrong length, or a fingerprint not 32 bytes.
    """

    call_id: bytes
    """The group call's id (as the handshakes use it: bytes)."""
    generation: int
    """The roster epoch: one more on every join and leave."""
    members: tuple[tuple[str, bytes], ...]
    """(username, identity fingerprint) of every member, ourselves included."""

    def __post_init__(self) -> None:
        if not 0 < len(self.call_id) <= MAX_CALL_ID_LENGTH:
            raise LocalProtocolError(f"group call id must be 1 to {MAX_CALL_ID_LENGTH} bytes")
        if not 0 <= self.generation <= MAX_ROSTER_GENERATION:
            raise LocalProtocolError(f"roster generation must be 0 to {MAX_ROSTER_GENERATION}")
        members = tuple(sorted((name, bytes(fp)) for name, fp in self.members))
        if not 0 < len(members) <= MAX_MEMBERS:
            raise LocalProtocolError(f"a roster has 1 to {MAX_MEMBERS} members")
        for name, fingerprint in members:
            if not 0 < len(name.encode("utf-8")) <= MAX_USERNAME_LENGTH:
                raise LocalProtocolError(f"member name must be 1 to {MAX_USERNAME_LENGTH} bytes")
            if len(fingerprint) != FINGERPRINT_LENGTH:
                raise LocalProtocolError(f"fingerprint of {name!r} must be 32 bytes")
        names = [name for name, _fp in members]
        if len(set(names)) != len(names):
            raise LocalProtocolError("a roster names each member once")
        object.__setattr__(self, "members", members)

    @classmethod
    def of(
        cls, call_id: bytes, generation: int, identities: Mapping[str, IdentityPublicKey]
    ) -> Roster:
        """The roster of these members' authenticated identities."""
        members = tuple((name, key.fingerprint()) for name, key in identities.items())
        return cls(call_id, generation, members)

    @property
    def names(self) -> tuple[str, ...]:
        """The members' names, sorted."""
        return tuple(name for name, _fp in self.members)

    def fingerprint_of(self, name: str) -> bytes | None:
        """The fingerprint the roster gives ``name``, or None if not a member."""
        return dict(self.members).get(name)

    def digest(self) -> bytes:
        """SHA-512 over the call id, generation and members (64 bytes)."""
        parts = [
            LABEL_ROSTER,
            self.call_id,
            encoding.u32(self.generation),
            encoding.u16(len(self.members)),
        ]
        parts += [encoding.text(name) + fingerprint for name, fingerprint in self.members]
        return keyschedule.transcript_hash(*parts)


def sign_roster(identity_private_key: IdentityPrivateKey, roster: Roster) -> bytes:
    """Our hybrid signature over the roster's digest."""
    return identity_private_key.sign(roster.digest(), context=SIGNATURE_CONTEXT)


def verify_roster(identity_public_key: IdentityPublicKey, roster: Roster, signature: bytes) -> bool:
    """Whether ``signature`` is this identity's signature over this very roster."""
    try:
        identity_public_key.verify(signature, roster.digest(), context=SIGNATURE_CONTEXT)
    except BadSignature:
        return False
    return True


def group_code(roster: Roster) -> str:
    """The roster's short code: 12 digits as four groups of three, the same on every phone."""
    digest = roster.digest()
    state = encoding.u16(GROUP_CODE_VERSION) + LABEL_GROUP_CODE + digest
    for _ in range(GROUP_CODE_ITERATIONS):
        h = hashes.Hash(hashes.SHA512())
        h.update(state + digest)
        state = h.finalize()
    chunks = []
    for i in range(GROUP_CODE_CHUNKS):
        raw = state[i * BYTES_PER_CHUNK : (i + 1) * BYTES_PER_CHUNK]
        chunks.append(f"{int.from_bytes(raw, 'big') % 10**DIGITS_PER_CHUNK:03d}")
    return " ".join(chunks)


@dataclass(frozen=True, slots=True)
class RosterCheck:
    """What the other members' signatures say about our roster."""

    confirmed: tuple[str, ...]
    """Members whose signature over our roster verified with the identity it names."""
    missing: tuple[str, ...]
    """Members we have no signature from yet, or no authenticated identity (no handshake yet)."""
    mismatched: tuple[str, ...]
    """Members whose signature does not verify over our roster, or whose identity is not the
    one our roster names: they see another roster (a member added or hidden for some
    phones, a swapped identity). Warn everyone."""

    @property
    def agreed(self) -> bool:
        """Whether every other member confirmed our roster."""
        return not self.missing and not self.mismatched


def check_roster(
    roster: Roster,
    *,
    our_name: str,
    identities: Mapping[str, IdentityPublicKey],
    signatures: Mapping[str, bytes],
) -> RosterCheck:
    """Check the other members' signatures against our own roster.

    Args:
        roster: the roster we built and signed.
        our_name: our name (not checked).
        identities: each member's identity as its pairwise handshake authenticated it.
        signatures: each member's roster signature as received (names outside the
            roster are ignored).
    """
    confirmed, missing, mismatched = [], [], []
    for name, fingerprint in roster.members:
        if name == our_name:
            continue
        identity = identities.get(name)
        signature = signatures.get(name)
        if identity is None or signature is None:
            missing.append(name)
        elif identity.fingerprint() != fingerprint:
            mismatched.append(name)
        elif verify_roster(identity, roster, signature):
            confirmed.append(name)
        else:
            mismatched.append(name)
    return RosterCheck(tuple(confirmed), tuple(missing), tuple(mismatched))
