"""Regenerate handshake-v2.json: a frozen transcript of our own handshake.

Run only when the wire format or key schedule changes on purpose (and bump
HANDSHAKE_VERSION and this file's name): `python tests/vectors/make_handshake_vectors.py`.
Version 2 added the caller's clock reading to the offer (issue 20, finding 6).
"""

import json
from pathlib import Path

from pqcall.crypto import keyschedule
from pqcall.crypto.handshake import CalleeHandshake, CallerHandshake
from pqcall.crypto.handshake_messages import HANDSHAKE_VERSION
from pqcall.crypto.identity import IdentityPrivateKey

OFFERED_AT = 1_800_000_000.0  # the caller's clock, Unix seconds (2027-01-15)
alice = IdentityPrivateKey(bytes([1]) * 32, bytes([2]) * 32)
bob = IdentityPrivateKey(bytes([3]) * 32, bytes([4]) * 32)
caller = CallerHandshake(
    call_id=b"frozen-call",
    our_name="alice",
    our_identity=alice,
    their_name="bob",
    their_identity=bob.public_key(),
)
callee = CalleeHandshake(call_id=b"frozen-call", our_name="bob", our_identity=bob)
offer = caller.offer(now=OFFERED_AT)
callee.receive_offer(offer, now=OFFERED_AT)
answer = callee.answer()
confirm = caller.receive_answer(answer)
keys = callee.receive_confirm(confirm)

inputs = {
    "mlkem_secret": bytes(range(32)),
    "x25519_secret": bytes(range(32, 64)),
    "mlkem_ciphertext": bytes(range(200)) * 5 + bytes(88),
    "caller_x25519": bytes([7]) * 32,
    "callee_x25519": bytes([8]) * 32,
    "transcript": bytes([9]) * 64,
}
secret = keyschedule.combine(**inputs)
vectors = {
    "source": "pqcall, docs/protocol.md#handshake; regenerate with make_handshake_vectors.py",
    "alice_seeds": (bytes([1]) * 32).hex() + (bytes([2]) * 32).hex(),
    "bob_seeds": (bytes([3]) * 32).hex() + (bytes([4]) * 32).hex(),
    "handshake_version": HANDSHAKE_VERSION,
    "call_id": "frozen-call",
    "offered_at": OFFERED_AT,
    "offer": offer.hex(),
    "answer": answer.hex(),
    "confirm": confirm.hex(),
    "sas": keys.sas,
    "combiner": {k: v.hex() for k, v in inputs.items()} | {"call_secret": secret.hex()},
    "expand": {
        "prk": secret.hex(),
        "label": "media caller to callee",
        "context": (bytes([9]) * 64).hex(),
        "okm": keyschedule.labeled_expand(
            secret, b"media caller to callee", bytes([9]) * 64, 32
        ).hex(),
    },
}
path = Path(__file__).with_name(f"handshake-v{HANDSHAKE_VERSION}.json")
path.write_text(json.dumps(vectors, indent=1) + "\n")
print(f"wrote {path}")  # noqa: T201
