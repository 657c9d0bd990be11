"""Safety numbers: a stable code per pair of users, compared out of band.

Like Signal's safety numbers: each user's half is an iterated SHA-512 of a
version, their identity key and their username, shown as 30 digits; the number
for a pair is both halves, lower one first, so both users see the same 60
digits. It changes exactly when one of the two identity keys (or names)
changes, so comparing it once, in person or over a trusted channel, proves
there is no key substitution by the server; the per-call SAS proves the same
for a single call.

The iteration count makes it expensive to search for a second identity key
whose half collides with someone's in the shown digits.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from pqcall.crypto import encoding
from pqcall.crypto.identity import IdentityPublicKey

SAFETY_NUMBER_VERSION = 1
SAFETY_NUMBER_ITERATIONS = 5200
DIGITS_PER_CHUNK = 5
CHUNKS_PER_HALF = 6
BYTES_PER_CHUNK = 5
LABEL = b"pqcall v1 safety number"


def _half(name: str, identity: IdentityPublicKey) -> str:
    key = identity.encode()
    state = encoding.u16(SAFETY_NUMBER_VERSION) + LABEL + key + encoding.text(name)
    for _ in range(SAFETY_NUMBER_ITERATIONS):
        digest = hashes.Hash(hashes.SHA512())
        digest.update(state + key)
        state = digest.finalize()
    chunks = []
    for i in range(CHUNKS_PER_HALF):
        raw = state[i * BYTES_PER_CHUNK : (i + 1) * BYTES_PER_CHUNK]
        chunks.append(f"{int.from_bytes(raw, 'big') % 10**DIGITS_PER_CHUNK:05d}")
    return "".join(chunks)


def safety_number(
    our_name: str,
    our_identity: IdentityPublicKey,
    their_name: str,
    their_identity: IdentityPublicKey,
) -> str:
    """The safety number of two users: 60 digits in twelve groups of five.

    Symmetric: both users compute the same string.
    """
    halves = sorted((_half(our_name, our_identity), _half(their_name, their_identity)))
    digits = "".join(halves)
    return " ".join(digits[i : i + DIGITS_PER_CHUNK] for i in range(0, len(digits), 5))
