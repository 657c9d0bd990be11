"""Frozen transcript of our own handshake (tests/vectors/handshake-v2.json).

These fail if the wire format or the key schedule changes by accident: a
deliberate change needs a new protocol version and new vectors.
"""

import json
from pathlib import Path

from pqcall.crypto import keyschedule
from pqcall.crypto.handshake import CalleeHandshake
from pqcall.crypto.handshake_messages import HANDSHAKE_VERSION, Answer, Confirm
from pqcall.crypto.identity import IdentityPrivateKey

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "handshake-v2.json").read_text())


def identity(field: str) -> IdentityPrivateKey:
    seeds = bytes.fromhex(VECTORS[field])
    return IdentityPrivateKey(seeds[:32], seeds[32:])


def test_recorded_offer_is_accepted():
    callee = CalleeHandshake(
        call_id=VECTORS["call_id"].encode(), our_name="bob", our_identity=identity("bob_seeds")
    )
    offer = callee.receive_offer(bytes.fromhex(VECTORS["offer"]), now=VECTORS["offered_at"])
    assert VECTORS["handshake_version"] == HANDSHAKE_VERSION
    assert offer.offered_at_ms == VECTORS["offered_at"] * 1000
    assert offer.caller_name == "alice"
    assert offer.caller_identity == identity("alice_seeds").public_key()


def test_recorded_answer_signature_and_confirm_commitment():
    offer = bytes.fromhex(VECTORS["offer"])
    answer = Answer.parse(bytes.fromhex(VECTORS["answer"]))
    signed = keyschedule.transcript_hash(offer, answer.signed_part())
    answer.callee_identity.verify(answer.signature, signed, context=b"pqcall call answer")
    assert answer.callee_identity == identity("bob_seeds").public_key()
    confirm = Confirm.parse(bytes.fromhex(VECTORS["confirm"]))
    commitment = keyschedule.transcript_hash(keyschedule.LABEL_SAS_COMMIT, confirm.sas_nonce)
    assert commitment[:32].hex() in VECTORS["offer"]


def test_combiner_known_answer():
    vector = VECTORS["combiner"]
    inputs = {k: bytes.fromhex(v) for k, v in vector.items() if k != "call_secret"}
    assert keyschedule.combine(**inputs).hex() == vector["call_secret"]


def test_labeled_expand_known_answer():
    vector = VECTORS["expand"]
    okm = keyschedule.labeled_expand(
        bytes.fromhex(vector["prk"]),
        vector["label"].encode(),
        bytes.fromhex(vector["context"]),
        32,
    )
    assert okm.hex() == vector["okm"]
