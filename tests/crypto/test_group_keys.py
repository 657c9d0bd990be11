"""Group-call keys: sender keys, their encoding and KIDs, the pairwise channel, the key ring.

Real crypto throughout: the pairwise channels come from real hybrid handshakes
(tests/utils.py), the frames from real SFrame senders; time is a number.
"""

from __future__ import annotations

import pytest

from pqcall.crypto import encoding
from pqcall.crypto.group_keys import (
    GENERATION_BITS,
    MAX_GENERATIONS_HELD,
    OVERLAP_S,
    REORDER_WINDOW,
    STALE_AFTER_S,
    SWITCH_AFTER_S,
    GroupKeyring,
    GroupKid,
    PairwiseChannel,
    SenderKey,
    decode_sender_key,
    encode_sender_key,
    open_sender_key,
    packet_kid,
    parse_kid,
    seal_sender_key,
    sframe_sender_id,
)
from pqcall.crypto.group_keys_sender import GROUP_CIPHER_SUITE
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.sframe_context import RATCHET_BITS, SFrameReceiver
from pqcall.exceptions import DecodeError, LocalProtocolError, RemoteProtocolError, SealRejected
from tests.utils import ALICE, BOB, MALLORY, handshake_pair, keys_of

CAROL = IdentityPrivateKey.generate()


def channels(
    a: str = "alice", b: str = "bob", call_id: bytes = b"group-1"
) -> tuple[PairwiseChannel, PairwiseChannel]:
    """Both ends of a pairwise channel over a real handshake between ``a`` and ``b``."""
    ids = {"alice": ALICE, "bob": BOB, "carol": CAROL, "mallory": MALLORY}
    run = handshake_pair(call_id, a, ids[a], b, ids[b])
    a_keys, b_keys = keys_of(run)
    return (
        PairwiseChannel.from_call_keys(a_keys, our_name=a, peer_name=b),
        PairwiseChannel.from_call_keys(b_keys, our_name=b, peer_name=a),
    )


# sender keys and their encoding


def test_sender_key_encoding_round_trips():
    key = SenderKey.new(7, 300)
    encoded = encode_sender_key(key)
    assert len(encoded) == 42
    assert encoded[:4] == b"PQ\x01\x40"
    decoded = decode_sender_key(encoded)
    assert decoded == key and decoded.same_as(key)
    assert "secret" not in repr(key) and key.secret.hex() not in repr(key)


def test_new_sender_keys_are_random():
    assert SenderKey.new(1, 0).secret != SenderKey.new(1, 0).secret


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "not a pqcall group sender key", id="empty"),
        pytest.param(b"PQ\x02\x40" + bytes(38), "unsupported group sender key version 2", id="v2"),
        pytest.param(
            b"PQ\x01\x03" + bytes(38), "expected group sender key, got signature", id="kind"
        ),
        pytest.param(
            b"PQ\x01\x40" + bytes(37), "group sender key has truncated secret", id="short"
        ),
        pytest.param(b"PQ\x01\x40" + bytes(39), "group sender key has 1 trailing bytes", id="long"),
    ],
)
def test_sender_key_decoding_is_strict(data, message):
    with pytest.raises(DecodeError, match=f"^{message}$"):
        decode_sender_key(data)


@pytest.mark.parametrize(
    ("sender_id", "generation", "secret", "message"),
    [
        pytest.param(-1, 0, bytes(32), "group sender id must be 0 to 65535", id="id-negative"),
        pytest.param(65536, 0, bytes(32), "group sender id must be 0 to 65535", id="id-big"),
        pytest.param(1, 2**32, bytes(32), "sender key generation must be 0 to", id="gen-big"),
        pytest.param(1, 0, bytes(31), "sender key secret must be 32 bytes", id="secret"),
    ],
)
def test_sender_key_refuses_out_of_range_values(sender_id, generation, secret, message):
    with pytest.raises(LocalProtocolError, match=message):
        SenderKey(sender_id, generation, secret)


def test_base_key_is_bound_to_sender_and_generation():
    secret = bytes(range(32))
    base = SenderKey(1, 5, secret).base_key()
    assert len(base) == 32
    assert base != SenderKey(2, 5, secret).base_key()
    assert base != SenderKey(1, 5 + 2**GENERATION_BITS, secret).base_key()  # same KID bits


# KIDs


@pytest.mark.parametrize(
    ("sender_id", "generation"),
    [(0, 0), (1, 0), (3, 7), (19, 255), (19, 256), (65535, 2**32 - 1)],
)
def test_kid_carries_sender_and_generation(sender_id, generation):
    for step in (0, 1, 15, 16, 17):
        kid = sframe_sender_id(sender_id, generation) << RATCHET_BITS | step % 2**RATCHET_BITS
        assert parse_kid(kid) == GroupKid(sender_id, generation % 256, step % 16)


def test_packet_kid_reads_a_real_packet_across_ratchets():
    ring = GroupKeyring(9, now=0.0, first_generation=258)
    first = ring.protect(b"frame", now=0.0)
    assert packet_kid(first) == GroupKid(9, 2, 0)
    ring.sender().ratchet()
    ring.sender().ratchet()
    assert packet_kid(ring.protect(b"frame", now=0.1)) == GroupKid(9, 2, 2)


def test_kid_parsing_refuses_a_non_group_kid():
    with pytest.raises(DecodeError, match=r"^KID names a group sender id above 65535$"):
        parse_kid(1 << (16 + GENERATION_BITS + RATCHET_BITS))
    with pytest.raises(DecodeError, match=r"^SFrame header is empty$"):
        packet_kid(b"")


# the pairwise channel


def test_channel_round_trips_both_ways():
    ab, ba = channels()
    for i in range(3):
        assert ba.open(ab.seal(b"to bob %d" % i)) == b"to bob %d" % i
        assert ab.open(ba.seal(b"to alice %d" % i)) == b"to alice %d" % i
    assert ab.messages_sealed == 3
    sealed = ab.seal(b"x")
    assert sealed[:4] == b"PQ\x01\x41" and len(sealed) == 4 + 8 + 1 + 16


def test_channel_refuses_replays():
    ab, ba = channels()
    sealed = ab.seal(b"key")
    ba.open(sealed)
    with pytest.raises(SealRejected, match=r"^sealed message from 'alice' was replayed$"):
        ba.open(sealed)


def test_channel_accepts_small_reordering_and_refuses_more():
    ab, ba = channels()
    sealed = [ab.seal(b"m%d" % i) for i in range(REORDER_WINDOW + 3)]
    ba.open(sealed[REORDER_WINDOW + 1])
    assert ba.open(sealed[1]) == b"m1"  # REORDER_WINDOW behind: still accepted
    with pytest.raises(SealRejected, match=r"^sealed message from 'alice' arrived too late$"):
        ba.open(sealed[0])


@pytest.mark.parametrize(
    "offset", [5, 11, 12, 20, -1], ids=["version", "counter", "ct", "mid", "tag"]
)
def test_channel_refuses_tampering(offset):
    ab, ba = channels()
    sealed = bytearray(ab.seal(encode_sender_key(SenderKey.new(1, 0))))
    sealed[offset] ^= 0x01
    with pytest.raises(SealRejected, match=r"^sealed message from 'alice' does not authenticate$"):
        ba.open(bytes(sealed))
    ab.seal(b"the channel still works")


def test_channel_refuses_malformed_input():
    _, ba = channels()
    with pytest.raises(DecodeError, match=r"^expected group sealed message, got group sender key$"):
        ba.open(encode_sender_key(SenderKey.new(1, 0)))
    with pytest.raises(DecodeError, match=r"^group sealed message has truncated ciphertext$"):
        ba.open(encoding.encode(encoding.Kind.GROUP_SEALED_MESSAGE, bytes(8 + 15)))


def test_channel_directions_and_calls_are_separate():
    ab, ba = channels()
    _, other_ba = channels(call_id=b"group-2")
    sealed = ab.seal(b"hello")
    with pytest.raises(SealRejected, match="does not authenticate"):
        ab.open(sealed)  # reflected back to its sender
    with pytest.raises(SealRejected, match="does not authenticate"):
        other_ba.open(sealed)  # the same pair in another handshake
    assert ba.open(sealed) == b"hello"


def test_channel_is_bound_to_the_peer_of_the_handshake():
    alice_keys, _ = keys_of(handshake_pair(b"group-1"))
    with pytest.raises(LocalProtocolError, match=r"^these call keys are for 'bob', not 'carol'$"):
        PairwiseChannel.from_call_keys(alice_keys, our_name="alice", peer_name="carol")
    # a third member's channel to bob cannot open what alice sealed to bob
    ab, _ = channels("alice", "bob")
    _, cb_bob_side = channels("carol", "bob")
    with pytest.raises(SealRejected):
        cb_bob_side.open(ab.seal(b"for bob"))


def test_sealed_sender_key_round_trips_and_tampering_is_refused():
    ab, ba = channels()
    key = SenderKey.new(4, 2)
    assert open_sender_key(ba, seal_sender_key(ab, key)).same_as(key)
    tampered = bytearray(seal_sender_key(ab, key))
    tampered[-20] ^= 0x80  # inside the encrypted secret
    with pytest.raises(SealRejected, match="does not authenticate"):
        open_sender_key(ba, bytes(tampered))
    with pytest.raises(DecodeError, match=r"^expected group sender key, got signature$"):
        open_sender_key(ba, ab.seal(ALICE.sign(b"x", context=b"c")))


# the key ring


class Group:
    """Members' key rings, with sender keys handed over as the real protocol does."""

    def __init__(self, names: list[str], *, now: float = 0.0) -> None:
        self.ids = {name: i + 1 for i, name in enumerate(names)}
        self.rings = {name: GroupKeyring(self.ids[name], now=now) for name in names}
        for name in names:
            self.give(name, self.rings[name].own_key, now=now)

    def give(self, sender: str, key: SenderKey, *, now: float, to: list[str] | None = None) -> None:
        for name, ring in self.rings.items():
            if name != sender and (to is None or name in to):
                assert ring.add_peer_key(key, now, owner=sender)


def test_every_member_opens_every_other_members_frames():
    group = Group(["alice", "bob", "carol"])
    for sender, ring in group.rings.items():
        packet = ring.protect(b"hello from " + sender.encode(), now=0.02)
        for name, other in group.rings.items():
            if name != sender:
                opened = other.unprotect(packet, 0.03)
                assert opened == (group.ids[sender], b"hello from " + sender.encode())
    assert group.rings["alice"].stats.accepted == 2


def test_replayed_frame_is_refused():
    group = Group(["alice", "bob"])
    packet = group.rings["alice"].protect(b"once", now=0.0)
    bob = group.rings["bob"]
    assert bob.unprotect(packet, 0.0) == (1, b"once")
    assert bob.unprotect(packet, 0.1) is None
    assert bob.stats.rejected == 1 and bob.stats.accepted == 1


def test_a_newcomer_cannot_open_frames_from_before_it_joined():
    group = Group(["alice", "bob"])
    alice = group.rings["alice"]
    old_frame = alice.protect(b"before dave", now=1.0)
    # dave joins: every member rotates; dave is given only the new generation
    dave = GroupKeyring(3, now=2.0)
    group.rings["dave"] = dave
    group.ids["dave"] = 3
    new_key = alice.rekey_for_join(now=2.0)
    assert new_key.generation == 1
    group.give("alice", new_key, now=2.0)
    assert dave.held_generations(1) == (1,)
    # until the switch alice still sends under generation 0: dave cannot open it
    still_old = alice.protect(b"during switch", now=2.5)
    assert dave.unprotect(old_frame, 2.5) is None
    assert dave.unprotect(still_old, 2.5) is None
    assert dave.stats.unknown_generation == 2
    # bob, who held generation 0, can
    assert group.rings["bob"].unprotect(still_old, 2.5) == (1, b"during switch")
    after = alice.protect(b"after switch", now=2.0 + SWITCH_AFTER_S)
    assert packet_kid(after).generation_low == 1
    assert dave.unprotect(after, 3.6) == (1, b"after switch")
    # and the key dave holds does not open a generation-0 frame either
    receiver = SFrameReceiver(GROUP_CIPHER_SUITE, new_key.base_key(), sframe_sender_id(1, 0))
    assert receiver.unprotect(old_frame, now=4.0) is None


def test_a_leaver_cannot_open_frames_after_the_rekey():
    group = Group(["alice", "bob", "carol"])
    alice, carol = group.rings["alice"], group.rings["carol"]
    carol_was_given = alice.own_key
    assert carol.unprotect(alice.protect(b"carol is here", now=1.0), 1.0) is not None
    # carol leaves: alice and bob forget her and rotate; she is not given the new keys
    new_key = alice.rekey_for_leave(group.ids["carol"], now=2.0)
    group.give("alice", new_key, now=2.0, to=["bob"])
    assert alice.senders() == (2,)
    after = alice.protect(b"carol is gone", now=2.0 + SWITCH_AFTER_S)
    assert carol.unprotect(after, 4.0) is None
    assert group.rings["bob"].unprotect(after, 4.0) == (1, b"carol is gone")
    # check with the keys she held: generation 0 only, and it cannot open the new frame
    assert carol.held_generations(1) == (0,)
    for kid_generation in (0, 1):  # under its own KID or the new one
        held = SFrameReceiver(
            GROUP_CIPHER_SUITE,
            carol_was_given.base_key(),
            sframe_sender_id(1, kid_generation),
        )
        assert held.unprotect(after, now=4.0) is None


def test_old_generation_is_erased_after_the_overlap():
    group = Group(["alice", "bob"])
    alice, bob = group.rings["alice"], group.rings["bob"]
    late = alice.protect(b"generation 0", now=0.0)
    group.give("alice", alice.rotate(0.0), now=0.0)
    alice.activate_next(0.1)
    bob.unprotect(alice.protect(b"generation 1", now=0.1), 0.1)
    assert bob.held_generations(1) == (0, 1)
    assert bob.current_generation(1) == 1
    assert bob.get_timer() == pytest.approx(0.1 + OVERLAP_S)
    # a late frame of the old generation inside the overlap still plays
    assert bob.unprotect(late, 0.1 + OVERLAP_S - 0.01) == (1, b"generation 0")
    bob.handle_timer(0.1 + OVERLAP_S)
    assert bob.held_generations(1) == (1,)
    assert bob.stats.erased_generations == 1
    # and the erased key is never taken back
    assert not bob.add_peer_key(SenderKey(1, 0, bytes(32)), 3.0, owner="alice")
    assert bob.held_generations(1) == (1,)


def test_old_generation_of_a_silent_sender_goes_after_the_stale_limit():
    group = Group(["alice", "bob"])
    bob = group.rings["bob"]
    group.give("alice", group.rings["alice"].rotate(1.0), now=1.0)
    bob.handle_timer(1.0 + STALE_AFTER_S - 0.01)
    assert bob.held_generations(1) == (0, 1)
    bob.handle_timer(1.0 + STALE_AFTER_S)
    assert bob.held_generations(1) == (1,)


def test_a_late_key_of_an_older_generation_gets_only_the_overlap():
    bob = GroupKeyring(2, now=0.0)
    older = SenderKey.new(1, 4)
    sender = GroupKeyring(1, now=0.0, first_generation=5)
    assert bob.add_peer_key(sender.own_key, 0.0)
    assert bob.unprotect(sender.protect(b"x", now=0.0), 0.0) is not None
    assert not bob.add_peer_key(older, 1.0)  # below the authenticated generation
    # before anything authenticates, a late older key stays at most the stale limit
    carol = GroupKeyring(3, now=0.0)
    assert carol.add_peer_key(SenderKey.new(1, 5), 0.0)
    assert carol.add_peer_key(older, 1.0)
    assert carol.get_timer() == 1.0 + STALE_AFTER_S
    carol.handle_timer(1.0 + STALE_AFTER_S)
    assert carol.held_generations(1) == (5,)


def test_own_key_switches_after_the_delay_and_old_own_key_is_dropped():
    ring = GroupKeyring(1, now=0.0, rotate_after_s=60.0)
    first = ring.own_key
    assert not ring.rotation_due(59.9) and ring.rotation_due(60.0)
    pending = ring.rotate(60.0)
    assert ring.pending_key is pending and ring.own_key is first
    assert not ring.rotation_due(61.0)
    assert ring.get_timer() == 60.0 + SWITCH_AFTER_S
    ring.handle_timer(60.0 + SWITCH_AFTER_S)
    assert ring.own_key is pending and ring.pending_key is None
    assert packet_kid(ring.protect(b"x", now=62.0)).generation_low == 1
    # two rotations before a switch: the second replaces the first
    a = ring.rotate(70.0)
    b = ring.rotate(70.5)
    assert (a.generation, b.generation) == (2, 3) and ring.pending_key is b


def test_generations_that_share_kid_bits_do_not_confuse_the_ring():
    bob = GroupKeyring(2, now=0.0)
    old = SenderKey.new(1, 0)
    sender = GroupKeyring(1, now=0.0, first_generation=2**GENERATION_BITS)
    assert bob.add_peer_key(old, 0.0)
    assert bob.add_peer_key(sender.own_key, 0.0)  # same low bits as generation 0
    assert bob.held_generations(1) == (2**GENERATION_BITS,)
    assert bob.unprotect(sender.protect(b"x", now=0.0), 0.0) == (1, b"x")


def test_conflicting_keys_are_refused():
    bob = GroupKeyring(2, now=0.0)
    key = SenderKey.new(1, 0)
    assert bob.add_peer_key(key, 0.0, owner="alice")
    assert not bob.add_peer_key(key, 0.0, owner="alice")  # a second copy
    with pytest.raises(RemoteProtocolError, match=r"^sender 1 gave two different keys for gen"):
        bob.add_peer_key(SenderKey.new(1, 0), 0.0, owner="alice")
    with pytest.raises(RemoteProtocolError, match=r"^sender id 1 belongs to 'alice'$"):
        bob.add_peer_key(SenderKey.new(1, 1), 0.0, owner="mallory")
    with pytest.raises(RemoteProtocolError, match=r"^sender id 2 is ours$"):
        bob.add_peer_key(SenderKey.new(2, 0), 0.0, owner="mallory")
    # an owner that moves to a new sender id leaves its old one
    assert bob.add_peer_key(SenderKey.new(5, 0), 0.0, owner="alice")
    assert bob.senders() == (5,) and bob.owner_of(5) == "alice"


def test_forgotten_sender_is_dropped():
    group = Group(["alice", "bob"])
    bob = group.rings["bob"]
    bob.forget_sender(1)
    assert bob.unprotect(group.rings["alice"].protect(b"x", now=0.0), 0.0) is None
    assert bob.stats.unknown_sender == 1 and bob.held_generations(1) == ()


def test_rotations_in_a_row_never_erase_the_generation_in_use():
    # joins and leaves in quick succession: alice draws keys faster than she switches
    group = Group(["alice", "bob"])
    alice, bob = group.rings["alice"], group.rings["bob"]
    assert bob.unprotect(alice.protect(b"g0", now=0.0), 0.0) is not None
    for _ in range(MAX_GENERATIONS_HELD + 2):
        group.give("alice", alice.rotate(0.1), now=0.1)
    assert alice.own_key.generation == 0
    assert bob.unprotect(alice.protect(b"still g0", now=0.2), 0.2) == (1, b"still g0")
    assert len(bob.held_generations(1)) <= MAX_GENERATIONS_HELD
    # and the key she switches to is held too
    assert bob.unprotect(alice.protect(b"g6", now=0.1 + SWITCH_AFTER_S), 2.0) == (1, b"g6")
