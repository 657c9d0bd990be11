"""Group-call keys: sender keys over pairwise post-quantum channels, rotation, roster checks.

The one import for group calls' cryptography; the parts live in four modules:

- :mod:`~pqcall.crypto.group_keys_sender`: :class:`SenderKey` (one member's
  random SFrame key per generation), its strict encoding, and the KID layout
  that carries sender id *and* generation;
- :mod:`~pqcall.crypto.group_keys_channel`: :class:`PairwiseChannel`, an AEAD
  channel per pair of members keyed from the 1:1 hybrid handshake
  (X25519 + ML-KEM-768, Ed25519 + ML-DSA-65), which carries sender keys and
  roster signatures through the server;
- :mod:`~pqcall.crypto.group_keys_ring`: :class:`GroupKeyring`, own keys and
  their rotation (join, leave, timer), others' keys by (sender id, generation),
  the overlap after which old generations are erased;
- :mod:`~pqcall.crypto.group_keys_roster`: :class:`Roster`, its signatures
  and the human-comparable :func:`group_code`.

How a member uses them (docs/protocol.md#group-calls-keys)::

    channel = PairwiseChannel.from_call_keys(keys, our_name="alice", peer_name="bob")
    ring = GroupKeyring(our_sender_id, now=now)
    send(bob, seal_sender_key(channel, ring.own_key))       # to every member
    ring.add_peer_key(open_sender_key(channel, sealed), now, owner="bob")
    packet = ring.protect(opus_frame, now=now)             # own frames
    sender_id, frame = ring.unprotect(packet, now) or ...  # others' frames
    key = ring.rekey_for_join(now=now)                     # then send `key` to everyone
    key = ring.rekey_for_leave(their_sender_id, now=now)   # to everyone who remains

Everything here is pure: no sockets, no clock (``now`` is a parameter);
randomness only where a key is drawn. What this design gives and loses
against MLS (RFC 9420) is in docs/threat-model.md; the choice is decision 0610.
"""

from __future__ import annotations

from pqcall.crypto.group_keys_channel import (
    REORDER_WINDOW,
    PairwiseChannel,
    open_sender_key,
    seal_sender_key,
)
from pqcall.crypto.group_keys_ring import (
    MAX_GENERATIONS_HELD,
    OVERLAP_S,
    ROTATE_AFTER_S,
    STALE_AFTER_S,
    SWITCH_AFTER_S,
    GroupKeyring,
    GroupReceiveStats,
)
from pqcall.crypto.group_keys_roster import (
    MAX_MEMBERS,
    Roster,
    RosterCheck,
    check_roster,
    group_code,
    sign_roster,
    verify_roster,
)
from pqcall.crypto.group_keys_sender import (
    GENERATION_BITS,
    GROUP_CIPHER_SUITE,
    MAX_SENDER_ID,
    GroupKid,
    SenderKey,
    decode_sender_key,
    encode_sender_key,
    packet_kid,
    parse_kid,
    sframe_sender_id,
)

__all__ = [
    "GENERATION_BITS",
    "GROUP_CIPHER_SUITE",
    "MAX_GENERATIONS_HELD",
    "MAX_MEMBERS",
    "MAX_SENDER_ID",
    "OVERLAP_S",
    "REORDER_WINDOW",
    "ROTATE_AFTER_S",
    "STALE_AFTER_S",
    "SWITCH_AFTER_S",
    "GroupKeyring",
    "GroupKid",
    "GroupReceiveStats",
    "PairwiseChannel",
    "Roster",
    "RosterCheck",
    "SenderKey",
    "check_roster",
    "decode_sender_key",
    "encode_sender_key",
    "group_code",
    "open_sender_key",
    "packet_kid",
    "parse_kid",
    "seal_sender_key",
    "sframe_sender_id",
    "sign_roster",
    "verify_roster",
]
