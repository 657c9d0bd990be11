"""Frozen outputs of the group-call key formats (tests/vectors/group-keys-v1.json).

These fail if an encoding or derivation changes by accident: a deliberate
change needs new vectors (tests/vectors/make_group_keys_vectors.py) and a new
file version.
"""

import json
from pathlib import Path

from pqcall.crypto.group_keys import (
    GroupKeyring,
    GroupKid,
    PairwiseChannel,
    Roster,
    SenderKey,
    decode_sender_key,
    encode_sender_key,
    group_code,
    open_sender_key,
    packet_kid,
    verify_roster,
)
from pqcall.crypto.handshake import CallKeys, Role
from pqcall.crypto.identity import IdentityPrivateKey

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "group-keys-v1.json").read_text())


def hexfield(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name])


def identity(field: str) -> IdentityPrivateKey:
    seeds = hexfield(field)
    return IdentityPrivateKey(seeds[:32], seeds[32:])


KEY = SenderKey(VECTORS["sender_id"], VECTORS["generation"], hexfield("secret"))


def test_recorded_sender_key_encoding_and_base_key():
    assert encode_sender_key(KEY) == hexfield("encoded_sender_key")
    assert decode_sender_key(hexfield("encoded_sender_key")).same_as(KEY)
    assert KEY.base_key() == hexfield("base_key")


def test_recorded_frame_opens_with_the_recorded_key():
    packet = hexfield("frame_packet")
    assert packet_kid(packet) == GroupKid(7, 300 % 256, 0)
    ring = GroupKeyring(1, now=0.0)
    assert ring.add_peer_key(KEY, 0.0)
    assert ring.unprotect(packet, 0.0) == (7, hexfield("frame_payload"))


def test_recorded_sealed_key_opens_on_bobs_side():
    bob_keys = CallKeys(
        call_id=hexfield("call_id"),
        role=Role.CALLEE,
        their_name="alice",
        their_identity=identity("alice_seeds").public_key(),
        sas="000 000",
        transcript_hash=bytes(64),
        send_key=bytes(32),
        receive_key=bytes(32),
        exporter_secret=hexfield("exporter_secret"),
    )
    channel = PairwiseChannel.from_call_keys(bob_keys, our_name="bob", peer_name="alice")
    assert open_sender_key(channel, hexfield("sealed_alice_to_bob")).same_as(KEY)


def test_recorded_roster_digest_code_and_signature():
    alice, bob = identity("alice_seeds"), identity("bob_seeds")
    roster = Roster.of(
        hexfield("call_id"),
        VECTORS["roster_generation"],
        {"bob": bob.public_key(), "alice": alice.public_key()},
    )
    assert roster.digest() == hexfield("roster_digest")
    assert group_code(roster) == VECTORS["group_code"]
    assert verify_roster(alice.public_key(), roster, hexfield("alice_roster_signature"))
