"""The call handshake: agreement, authentication, and the man-in-the-middle attacks it stops."""

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.crypto import encoding
from pqcall.crypto.handshake import (
    CLOCK_SKEW_S,
    OFFER_MAX_AGE_S,
    CalleeHandshake,
    CallerHandshake,
    Role,
    State,
)
from pqcall.crypto.handshake_messages import HANDSHAKE_VERSION, Answer, Confirm, Offer
from pqcall.crypto.pinning import KeyChanged, MemoryPinStorage, PinStore
from pqcall.exceptions import DecodeError, HandshakeFailed, LocalProtocolError, PqcallError
from tests.utils import ALICE, BOB, MALLORY, handshake_pair, keys_of

NOW = 0.0  # the fake clock of both sides, Unix seconds (tests/utils.py's handshake_pair too)


def caller_for(their_identity=BOB, **kw):
    args = {
        "call_id": b"call-1",
        "our_name": "alice",
        "our_identity": ALICE,
        "their_name": "bob",
        "their_identity": their_identity.public_key(),
    }
    args.update(kw)
    return CallerHandshake(**args)


def callee_for(identity=BOB, name="bob", call_id=b"call-1"):
    return CalleeHandshake(call_id=call_id, our_name=name, our_identity=identity)


def test_both_sides_agree():
    caller_keys, callee_keys = keys_of(handshake_pair())
    assert caller_keys.send_key == callee_keys.receive_key
    assert caller_keys.receive_key == callee_keys.send_key
    assert caller_keys.send_key != caller_keys.receive_key
    assert caller_keys.sas == callee_keys.sas
    assert len(caller_keys.sas) == 7 and caller_keys.sas.replace(" ", "").isdigit()
    assert caller_keys.transcript_hash == callee_keys.transcript_hash
    assert caller_keys.export(b"control") == callee_keys.export(b"control")
    assert caller_keys.export(b"control") != caller_keys.export(b"other")
    assert caller_keys.role is Role.CALLER and callee_keys.role is Role.CALLEE
    assert caller_keys.their_identity == BOB.public_key()
    assert callee_keys.their_identity == ALICE.public_key()
    assert callee_keys.their_name == "alice"


def test_every_call_has_fresh_keys():
    first, _ = keys_of(handshake_pair())
    second, _ = keys_of(handshake_pair())
    assert first.send_key != second.send_key
    assert first.transcript_hash != second.transcript_hash


def test_secrets_not_in_repr():
    keys, _ = keys_of(handshake_pair())
    text = repr(keys)
    assert keys.send_key.hex() not in text and "send_key" not in text


def test_callee_sees_caller_before_answering():
    caller = caller_for()
    callee = callee_for()
    offer = callee.receive_offer(caller.offer(now=NOW), now=NOW)
    assert offer.caller_name == "alice"
    assert offer.caller_identity == ALICE.public_key()
    assert callee.state is State.CALLEE_EXPECT_DECISION


# --- a man in the middle ------------------------------------------------------


def test_substituted_callee_key_is_detected_by_the_real_callee():
    # the server gave Alice Mallory's key for "bob" and relays Alice's offer to Bob
    caller = caller_for(their_identity=MALLORY)
    with pytest.raises(HandshakeFailed, match="alice was given a different identity key for you"):
        callee_for().receive_offer(caller.offer(now=NOW), now=NOW)


def test_full_mitm_with_swapped_keys_gives_different_sas():
    # the server swapped both keys; Mallory runs one handshake with each victim
    alice_side = handshake_pair(caller_identity=ALICE, callee_identity=MALLORY)
    bob_side = handshake_pair(caller_identity=MALLORY, callee_identity=BOB)
    assert alice_side.caller.keys.sas != bob_side.callee.keys.sas
    # and Bob's pin of Alice catches the new key for "alice"
    pins = PinStore(MemoryPinStorage())
    pins.check("alice", ALICE.public_key())
    result = pins.check("alice", bob_side.callee.keys.their_identity)
    assert isinstance(result, KeyChanged)


def test_answer_from_a_substituted_callee_is_refused():
    # Mallory answers Alice's offer with her own identity
    caller = caller_for()
    offer = caller.offer(now=NOW)
    mallory = callee_for(identity=MALLORY)
    # Mallory cannot even accept the offer (made for Bob's key) ...
    with pytest.raises(HandshakeFailed):
        mallory.receive_offer(offer, now=NOW)
    # ... and an answer made for another offer is refused by Alice
    other = handshake_pair(caller_identity=ALICE, callee_identity=MALLORY)
    with pytest.raises(HandshakeFailed, match="bob answered with an unexpected identity key"):
        caller.receive_answer(other.answer)
    assert caller.state is State.FAILED


OFFER_FIELDS: dict[str, Any] = {
    "call_id": b"call-2",
    "caller_name": "carol",
    "callee_name": "bobby",
    "caller_identity": MALLORY.public_key(),
    "callee_fingerprint": MALLORY.public_key().fingerprint(),
    "x25519_public": bytes(range(32)),
    "mlkem_public": bytes(1184),
    "sas_commitment": bytes(32),
    "offered_at_ms": 1,
}


@pytest.mark.parametrize("field", sorted(OFFER_FIELDS))
def test_any_substituted_offer_field_breaks_the_offer(field):
    caller = caller_for()
    offer = Offer.parse(caller.offer(now=NOW))
    tampered = replace(offer, **{field: OFFER_FIELDS[field]}).serialize()
    callee = CalleeHandshake(
        call_id=OFFER_FIELDS["call_id"] if field == "call_id" else b"call-1",
        our_name="bobby" if field == "callee_name" else "bob",
        our_identity=BOB,
    )
    with pytest.raises(HandshakeFailed):
        callee.receive_offer(tampered, now=NOW)
    assert callee.state is State.FAILED


def test_substituted_caller_ephemeral_with_valid_resignature_is_caught_by_pin():
    # Mallory replaces Alice's keys and signs with her own identity
    honest = Offer.parse(caller_for().offer(now=NOW))
    mallory_caller = caller_for(our_identity=MALLORY)
    forged = Offer.parse(mallory_caller.offer(now=NOW))
    assert forged.caller_name == honest.caller_name == "alice"
    callee = callee_for()
    received = callee.receive_offer(forged.serialize(), now=NOW)
    pins = PinStore(MemoryPinStorage())
    pins.check("alice", ALICE.public_key())
    assert isinstance(pins.check("alice", received.caller_identity), KeyChanged)


ANSWER_FIELDS: dict[str, Any] = {
    "callee_identity": MALLORY.public_key(),
    "x25519_public": bytes(range(1, 33)),
    "mlkem_ciphertext": bytes(1088),
    "signature": MALLORY.sign(b"x", context=b"pqcall call answer"),
    "confirm_mac": bytes(32),
}


@pytest.mark.parametrize("field", sorted(ANSWER_FIELDS))
def test_any_substituted_answer_field_is_refused(field):
    caller = caller_for()
    callee = callee_for()
    callee.receive_offer(caller.offer(now=NOW), now=NOW)
    answer = Answer.parse(callee.answer())
    tampered = replace(answer, **{field: ANSWER_FIELDS[field]}).serialize()
    with pytest.raises(HandshakeFailed):
        caller.receive_answer(tampered)
    assert caller.state is State.FAILED


def test_confirm_with_another_nonce_is_refused():
    caller, callee = caller_for(), callee_for()
    callee.receive_offer(caller.offer(now=NOW), now=NOW)
    confirm = Confirm.parse(caller.receive_answer(callee.answer()))
    tampered = replace(confirm, sas_nonce=bytes(32)).serialize()
    with pytest.raises(HandshakeFailed, match="SAS nonce does not match its commitment"):
        callee.receive_confirm(tampered)


def test_confirm_with_bad_mac_is_refused():
    caller, callee = caller_for(), callee_for()
    callee.receive_offer(caller.offer(now=NOW), now=NOW)
    confirm = Confirm.parse(caller.receive_answer(callee.answer()))
    tampered = replace(confirm, confirm_mac=bytes(32)).serialize()
    with pytest.raises(HandshakeFailed, match="confirm key confirmation failed"):
        callee.receive_confirm(tampered)


def test_confirm_from_another_call_is_refused():
    old = handshake_pair()
    caller, callee = caller_for(), callee_for()
    callee.receive_offer(caller.offer(now=NOW), now=NOW)
    callee.answer()
    with pytest.raises(HandshakeFailed):
        callee.receive_confirm(old.confirm)


def test_replayed_answer_is_refused():
    old = handshake_pair()
    caller = caller_for()
    caller.offer(now=NOW)
    with pytest.raises(HandshakeFailed, match="answer signature does not verify"):
        caller.receive_answer(old.answer)


def test_offer_for_another_call_or_user():
    offer = caller_for().offer(now=NOW)
    with pytest.raises(HandshakeFailed, match="offer is for another call"):
        callee_for(call_id=b"call-9").receive_offer(offer, now=NOW)
    with pytest.raises(HandshakeFailed, match="offer is for another user"):
        callee_for(name="bobby").receive_offer(offer, now=NOW)


def test_reflected_messages_are_refused():
    caller, callee = caller_for(), callee_for()
    offer = caller.offer(now=NOW)
    with pytest.raises(HandshakeFailed, match="malformed answer: expected handshake answer"):
        caller.receive_answer(offer)
    callee.receive_offer(offer, now=NOW)
    answer = callee.answer()
    with pytest.raises(HandshakeFailed, match="malformed confirm"):
        callee.receive_confirm(answer)


# --- API misuse ---------------------------------------------------------------


def test_state_machine_refuses_misuse():
    run = handshake_pair()
    with pytest.raises(LocalProtocolError, match="cannot send an offer in state ESTABLISHED"):
        run.caller.offer(now=NOW)
    with pytest.raises(LocalProtocolError):
        run.caller.receive_answer(run.answer)
    with pytest.raises(LocalProtocolError):
        run.callee.receive_confirm(run.confirm)
    fresh = callee_for()
    with pytest.raises(LocalProtocolError, match="cannot answer in state CALLEE_EXPECT_OFFER"):
        fresh.answer()
    with pytest.raises(LocalProtocolError, match="no call keys in state CALLEE_EXPECT_OFFER"):
        _ = fresh.keys


def test_rejected_call_cannot_be_answered():
    caller, callee = caller_for(), callee_for()
    callee.receive_offer(caller.offer(now=NOW), now=NOW)
    callee.reject()
    with pytest.raises(LocalProtocolError):
        callee.answer()


def test_invalid_arguments():
    with pytest.raises(LocalProtocolError, match="call id must be 1 to 64 bytes"):
        caller_for(call_id=b"")
    with pytest.raises(LocalProtocolError, match="username must be 1 to 64 bytes"):
        caller_for(our_name="x" * 65)


# --- parsers ------------------------------------------------------------------


def test_messages_round_trip():
    run = handshake_pair()
    assert Offer.parse(run.offer).serialize() == run.offer
    assert Answer.parse(run.answer).serialize() == run.answer
    assert Confirm.parse(run.confirm).serialize() == run.confirm


@pytest.mark.parametrize(
    "parse",
    [
        pytest.param(Offer.parse, id="offer"),
        pytest.param(Answer.parse, id="answer"),
        pytest.param(Confirm.parse, id="confirm"),
    ],
)
def test_truncated_messages(parse):
    run = handshake_pair()
    data = {Offer.parse: run.offer, Answer.parse: run.answer, Confirm.parse: run.confirm}[parse]
    for cut in (5, len(data) // 2, len(data) - 1):
        with pytest.raises(DecodeError):
            parse(data[:cut])
    with pytest.raises(DecodeError, match="trailing bytes"):
        parse(data + b"\0")


@settings(max_examples=200)
@given(st.binary(max_size=3000), st.sampled_from([0x10, 0x11, 0x12]))
def test_parsers_raise_only_decode_error(body, kind):
    data = encoding.encode(encoding.Kind(kind), body)
    for parse in (Offer.parse, Answer.parse, Confirm.parse):
        for candidate in (data, body):
            try:
                parse(candidate)
            except DecodeError:
                pass


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_handshake_objects_raise_only_pqcall_errors_on_garbage(data):
    run = handshake_pair()
    message = data.draw(st.sampled_from([run.offer, run.answer, run.confirm]))
    index = data.draw(st.integers(0, len(message) - 1))
    garbled = message[:index] + bytes([message[index] ^ 0xFF]) + message[index + 1 :]
    caller, callee = caller_for(), callee_for()
    offer = caller.offer(now=NOW)
    try:
        callee.receive_offer(garbled, now=NOW)
    except PqcallError:
        pass
    try:
        caller.receive_answer(garbled)
    except PqcallError:
        pass
    del offer


# ---------------------------------------------------------------- freshness (issue 20, finding 6)


def test_an_offer_within_the_ring_window_is_accepted():
    offer = caller_for().offer(now=1000.0)
    late = 1000.0 + OFFER_MAX_AGE_S
    assert callee_for().receive_offer(offer, now=late).offered_at_ms == 1_000_000
    early = 1000.0 - CLOCK_SKEW_S  # the callee's clock is behind
    assert callee_for().receive_offer(offer, now=early).caller_name == "alice"


def test_a_stale_offer_is_refused_as_a_replay():
    offer = caller_for().offer(now=1000.0)
    callee = callee_for()
    with pytest.raises(HandshakeFailed) as refused:
        callee.receive_offer(offer, now=1000.0 + 3600)
    assert str(refused.value) == "stale offer: made 3600 s ago (at most 720 s): a replay"
    assert callee.state is State.FAILED


def test_an_offer_from_the_future_is_refused():
    offer = caller_for().offer(now=1000.0)
    with pytest.raises(HandshakeFailed) as refused:
        callee_for().receive_offer(offer, now=1000.0 - CLOCK_SKEW_S - 1)
    assert str(refused.value) == (
        "offer dated 121 s ahead of our clock (at most 120 s): check the clocks"
    )


def test_the_offer_time_is_signed():
    offer = Offer.parse(caller_for().offer(now=0.0))
    refreshed = replace(offer, offered_at_ms=3_600_000).serialize()
    with pytest.raises(HandshakeFailed, match="offer signature does not verify"):
        callee_for().receive_offer(refreshed, now=3600.0)


def test_a_version_1_offer_is_refused_by_its_version():
    body = encoding.decode(encoding.Kind.HANDSHAKE_OFFER, caller_for().offer(now=NOW))
    old = encoding.encode(encoding.Kind.HANDSHAKE_OFFER, bytes([1]) + body[1:])
    with pytest.raises(DecodeError, match="unsupported handshake version 1"):
        Offer.parse(old)
    assert HANDSHAKE_VERSION == 2
