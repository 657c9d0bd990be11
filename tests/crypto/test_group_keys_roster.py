"""Group-call rosters: digest, hybrid signatures, the group code, and checking others' views."""

from __future__ import annotations

import re

import pytest

from pqcall.crypto.group_keys import (
    MAX_MEMBERS,
    Roster,
    check_roster,
    group_code,
    sign_roster,
    verify_roster,
)
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import LocalProtocolError
from tests.utils import ALICE, BOB, MALLORY

CAROL = IdentityPrivateKey.generate()
PRIVATE = {"alice": ALICE, "bob": BOB, "carol": CAROL}
IDENTITIES = {name: key.public_key() for name, key in PRIVATE.items()}
CALL = b"\x12" * 16


def roster(generation: int = 3, **extra: IdentityPrivateKey) -> Roster:
    identities = dict(IDENTITIES)
    identities.update({name: key.public_key() for name, key in extra.items()})
    return Roster.of(CALL, generation, identities)


def test_member_order_does_not_matter():
    members = [(name, key.fingerprint()) for name, key in IDENTITIES.items()]
    forward = Roster(CALL, 3, tuple(members))
    backward = Roster(CALL, 3, tuple(reversed(members)))
    assert forward == backward
    assert forward.names == ("alice", "bob", "carol")
    assert forward.digest() == backward.digest() and len(forward.digest()) == 64
    assert group_code(forward) == group_code(backward)


def test_group_code_is_four_groups_of_three_digits():
    assert re.fullmatch(r"\d{3} \d{3} \d{3} \d{3}", group_code(roster()))


def test_every_member_signs_and_verifies_the_same_roster():
    ours = roster()
    for name, key in PRIVATE.items():
        assert verify_roster(IDENTITIES[name], ours, sign_roster(key, ours))


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(lambda: roster(mallory=MALLORY), id="injected-member"),
        pytest.param(
            lambda: Roster.of(CALL, 3, {**IDENTITIES, "bob": MALLORY.public_key()}),
            id="swapped-identity",
        ),
        pytest.param(lambda: roster(generation=4), id="next-generation"),
        pytest.param(lambda: Roster.of(b"other", 3, IDENTITIES), id="other-call"),
        pytest.param(
            lambda: Roster.of(CALL, 3, {k: v for k, v in IDENTITIES.items() if k != "carol"}),
            id="hidden-member",
        ),
    ],
)
def test_a_changed_roster_changes_digest_code_and_signatures(changed):
    honest, other = roster(), changed()
    assert other.digest() != honest.digest()
    assert group_code(other) != group_code(honest)
    signature = sign_roster(ALICE, honest)
    assert not verify_roster(IDENTITIES["alice"], other, signature)
    # and a signature over the other view does not verify over the honest one
    assert not verify_roster(IDENTITIES["bob"], honest, sign_roster(BOB, other))


def test_a_signature_verifies_only_with_its_signers_key():
    signature = sign_roster(ALICE, roster())
    assert not verify_roster(IDENTITIES["bob"], roster(), signature)
    assert not verify_roster(IDENTITIES["alice"], roster(), b"not a signature")
    # a signature over the digest for another purpose is no roster signature
    other_purpose = ALICE.sign(roster().digest(), context=b"pqcall call offer")
    assert not verify_roster(IDENTITIES["alice"], roster(), other_purpose)


def test_check_roster_notices_a_server_injected_member():
    # the server shows alice a roster with mallory in it; bob and carol see the real one
    alice_view = roster(mallory=MALLORY)
    honest = roster()
    signatures = {
        "bob": sign_roster(BOB, honest),
        "carol": sign_roster(CAROL, honest),
        "mallory": sign_roster(MALLORY, alice_view),
    }
    identities = {**IDENTITIES, "mallory": MALLORY.public_key()}
    seen = check_roster(alice_view, our_name="alice", identities=identities, signatures=signatures)
    assert seen.mismatched == ("bob", "carol") and seen.confirmed == ("mallory",)
    assert not seen.agreed
    # bob, holding the honest roster, notices alice's signature over hers does not match
    bob_seen = check_roster(
        honest,
        our_name="bob",
        identities=IDENTITIES,
        signatures={"alice": sign_roster(ALICE, alice_view), "carol": signatures["carol"]},
    )
    assert bob_seen.mismatched == ("alice",) and bob_seen.confirmed == ("carol",)


def test_check_roster_agrees_when_everyone_signed_and_waits_for_the_rest():
    ours = roster()
    everyone = {name: sign_roster(key, ours) for name, key in PRIVATE.items()}
    seen = check_roster(ours, our_name="alice", identities=IDENTITIES, signatures=everyone)
    assert seen.agreed and seen.confirmed == ("bob", "carol")
    partial = check_roster(
        ours, our_name="alice", identities=IDENTITIES, signatures={"bob": everyone["bob"]}
    )
    assert partial.missing == ("carol",) and not partial.agreed
    # a handshake that authenticated another identity than the roster names is a mismatch
    swapped = {**IDENTITIES, "carol": MALLORY.public_key()}
    assert check_roster(
        ours, our_name="alice", identities=swapped, signatures=everyone
    ).mismatched == ("carol",)


@pytest.mark.parametrize(
    ("call_id", "generation", "members", "message"),
    [
        pytest.param(b"", 0, [("a", bytes(32))], "group call id must be 1 to 64 bytes", id="id"),
        pytest.param(CALL, -1, [("a", bytes(32))], "roster generation must be 0 to", id="gen"),
        pytest.param(CALL, 0, [], "a roster has 1 to 20 members", id="empty"),
        pytest.param(
            CALL,
            0,
            [(f"m{i}", bytes(32)) for i in range(MAX_MEMBERS + 1)],
            "a roster has 1 to 20 members",
            id="too-many",
        ),
        pytest.param(CALL, 0, [("", bytes(32))], "member name must be 1 to 64 bytes", id="name"),
        pytest.param(CALL, 0, [("a", bytes(31))], "fingerprint of 'a' must be 32", id="fp"),
        pytest.param(
            CALL, 0, [("a", bytes(32)), ("a", b"\x01" * 32)], "names each member once", id="dup"
        ),
    ],
)
def test_invalid_rosters_are_refused(call_id, generation, members, message):
    with pytest.raises(LocalProtocolError, match=message):
        Roster(call_id, generation, tuple(members))
