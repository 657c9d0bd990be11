"""Regenerate group-keys-v1.json: frozen outputs of the group-call key formats.

Run only when a format or derivation changes on purpose (and bump the file's
version): `python tests/vectors/make_group_keys_vectors.py`. Inputs are fixed
bytes; every output below is deterministic except the roster signature
(ML-DSA signs with fresh randomness), which is kept to check it still verifies.
"""

import json
from pathlib import Path

from pqcall.crypto.group_keys import (
    PairwiseChannel,
    Roster,
    SenderKey,
    encode_sender_key,
    group_code,
    sframe_sender_id,
    sign_roster,
)
from pqcall.crypto.group_keys_sender import GROUP_CIPHER_SUITE
from pqcall.crypto.handshake import CallKeys, Role
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.sframe_context import SFrameSender

SECRET = bytes(range(32))
EXPORTER = bytes(range(100, 132))
CALL_ID = b"frozen-group-call"
alice = IdentityPrivateKey(bytes([1]) * 32, bytes([2]) * 32)
bob = IdentityPrivateKey(bytes([3]) * 32, bytes([4]) * 32)

key = SenderKey(7, 300, SECRET)
sender = SFrameSender(GROUP_CIPHER_SUITE, key.base_key(), sframe_sender_id(7, 300))
call_keys = CallKeys(
    call_id=CALL_ID,
    role=Role.CALLER,
    their_name="bob",
    their_identity=bob.public_key(),
    sas="000 000",
    transcript_hash=bytes(64),
    send_key=bytes(32),
    receive_key=bytes(32),
    exporter_secret=EXPORTER,
)
channel = PairwiseChannel.from_call_keys(call_keys, our_name="alice", peer_name="bob")
roster = Roster.of(CALL_ID, 3, {"alice": alice.public_key(), "bob": bob.public_key()})

vectors = {
    "source": "pqcall, docs/protocol.md#group-calls-keys; make_group_keys_vectors.py",
    "alice_seeds": (bytes([1]) * 32).hex() + (bytes([2]) * 32).hex(),
    "bob_seeds": (bytes([3]) * 32).hex() + (bytes([4]) * 32).hex(),
    "sender_id": 7,
    "generation": 300,
    "secret": SECRET.hex(),
    "encoded_sender_key": encode_sender_key(key).hex(),
    "base_key": key.base_key().hex(),
    "frame_payload": b"frozen frame".hex(),
    "frame_packet": sender.protect(b"frozen frame", now=0.0).hex(),
    "call_id": CALL_ID.hex(),
    "exporter_secret": EXPORTER.hex(),
    "sealed_alice_to_bob": channel.seal(encode_sender_key(key)).hex(),
    "roster_generation": 3,
    "roster_digest": roster.digest().hex(),
    "group_code": group_code(roster),
    "alice_roster_signature": sign_roster(alice, roster).hex(),
}
path = Path(__file__).parent / "group-keys-v1.json"
path.write_text(json.dumps(vectors, indent=1) + "\n")
