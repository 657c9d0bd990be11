"""The relay's bind, challenge, answer and ack datagrams: round trips, MACs, the exact
defect of a bad one, and the phone's counter."""

from __future__ import annotations

import dataclasses

import pytest

from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.relay_wire import (
    ACK_MAGIC,
    ACK_REFUSED_VERSION,
    ANSWER_LENGTH,
    BIND_LENGTH,
    BIND_MAGIC,
    CHALLENGE_LENGTH,
    RelayAck,
    RelayAnswer,
    RelayBind,
    RelayChallenge,
    RelayTarget,
    bind_version,
    grant_keys,
    is_relay_ack,
)

TOKEN = bytes(range(16))
KEYS = grant_keys(TOKEN)
RELAY = ("192.0.2.9", 5001)
NONCE = bytes(range(100, 116))


def test_grant_keys_are_derived_and_the_secret_never_appears_on_the_wire():
    other = grant_keys(bytes(16))
    assert len(KEYS.grant_id) == 16 and len(KEYS.key) == 32
    assert KEYS.grant_id != other.grant_id and KEYS.key != other.key
    assert KEYS.grant_id not in (TOKEN, KEYS.key[:16])
    target = RelayTarget(RELAY, TOKEN)
    assert TOKEN not in target.bind
    assert "key" not in repr(KEYS) and TOKEN.hex() not in repr(target)


def test_bind_round_trip_and_mac():
    data = RelayBind(KEYS.grant_id, 7).serialize(KEYS.key)
    assert len(data) == BIND_LENGTH == 45
    assert data[:5] == b"PQRB\x02" and data[5:21] == KEYS.grant_id
    assert data[21:29] == (7).to_bytes(8, "big")
    parsed = RelayBind.parse(data)
    assert (parsed.grant_id, parsed.counter) == (KEYS.grant_id, 7)
    assert parsed.is_authentic(KEYS.key)
    assert not parsed.is_authentic(grant_keys(bytes(16)).key)
    for i in range(len(data)):  # any flipped bit: a parse error or a MAC that fails
        flipped = data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
        try:
            assert not RelayBind.parse(flipped).is_authentic(KEYS.key)
        except DecodeError:
            pass


def test_target_binds_with_a_growing_counter_shared_by_its_copies():
    target = RelayTarget(RELAY, TOKEN)
    counters = [RelayBind.parse(target.bind).counter for _ in range(3)]
    assert counters == [1, 2, 3]
    copy = RelayTarget(("127.0.0.1", 5001), target.token, target.sequence)
    assert RelayBind.parse(copy.bind).counter == 4
    assert RelayBind.parse(dataclasses.replace(target).bind).counter == 5
    assert RelayBind.parse(RelayTarget(RELAY, TOKEN).bind).counter == 1  # a new grant use


def test_challenge_answer_round_trip():
    challenge = RelayChallenge(NONCE).serialize(KEYS)
    assert len(challenge) == CHALLENGE_LENGTH == 37 < BIND_LENGTH  # no amplification
    assert RelayChallenge.parse(challenge, KEYS) == RelayChallenge(NONCE)
    target = RelayTarget(RELAY, TOKEN)
    reply = target.answer(challenge, RELAY)
    assert reply is not None and len(reply) == ANSWER_LENGTH == 53
    parsed = RelayAnswer.parse(reply)
    assert (parsed.grant_id, parsed.nonce) == (KEYS.grant_id, NONCE)
    assert parsed.is_authentic(KEYS.key)
    assert not dataclasses.replace(parsed, nonce=bytes(16)).is_authentic(KEYS.key)


def test_the_phone_answers_only_authentic_challenges_of_its_relay():
    target = RelayTarget(RELAY, TOKEN)
    challenge = RelayChallenge(NONCE).serialize(KEYS)
    assert target.answer(challenge, ("192.0.2.10", 5001)) is None  # not from the relay
    forged = RelayChallenge(NONCE).serialize(grant_keys(bytes(16)))
    assert target.answer(forged, RELAY) is None  # another grant's key
    assert target.answer(challenge[:-1] + bytes([challenge[-1] ^ 1]), RELAY) is None
    assert target.answer(b"\x90" * CHALLENGE_LENGTH, RELAY) is None  # media
    with pytest.raises(DecodeError, match="relay challenge does not authenticate"):
        RelayChallenge.parse(forged, KEYS)


@pytest.mark.parametrize("is_peer_bound", [False, True])
def test_ack_round_trip(is_peer_bound):
    data = RelayAck(is_peer_bound).serialize()
    assert data == ACK_MAGIC + bytes([is_peer_bound])
    assert RelayAck.parse(data) == RelayAck(is_peer_bound)


def test_refusal_names_the_version():
    refusal = RelayAck.refusal()
    assert refusal == ACK_MAGIC + bytes([ACK_REFUSED_VERSION])
    with pytest.raises(DecodeError, match="the relay refused our bind: it speaks bind version 2"):
        RelayAck.parse(refusal)


def test_bind_versions():
    assert bind_version(BIND_MAGIC + TOKEN) == 1
    assert bind_version(RelayTarget(RELAY, TOKEN).bind) == 2
    assert bind_version(BIND_MAGIC + b"\x03" + bytes(40)) == 3
    assert bind_version(BIND_MAGIC) is None
    assert bind_version(b"PQRA\x01") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"XXXX" + bytes(41), "not a relay bind"),
        (BIND_MAGIC + b"\x02" + bytes(39), "relay bind must be 45 bytes, got 44"),
        (BIND_MAGIC + b"\x01" + bytes(40), "relay bind has version 1, not 2"),
    ],
)
def test_bad_bind_is_rejected(data, message):
    with pytest.raises(DecodeError, match=message):
        RelayBind.parse(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PQRB" + bytes(1), "not a relay ack"),
        (ACK_MAGIC + b"\x01\x00", "relay ack must be 5 bytes, got 6"),
        (ACK_MAGIC + b"\x07", "relay ack has an unknown state 0x07"),
    ],
)
def test_bad_ack_is_rejected(data, message):
    with pytest.raises(DecodeError, match=message):
        RelayAck.parse(data)


def test_token_must_be_16_bytes():
    with pytest.raises(LocalProtocolError, match="relay token must be 16 bytes, got 3"):
        RelayTarget(RELAY, b"abc")
    with pytest.raises(LocalProtocolError, match="relay bind counter out of range"):
        RelayBind(KEYS.grant_id, 2**64).serialize(KEYS.key)


def test_is_relay_ack_checks_source_length_and_magic():
    ack = RelayAck(True).serialize()
    assert is_relay_ack(ack, RELAY, RELAY)
    assert not is_relay_ack(ack, ("192.0.2.8", 5001), RELAY)
    assert not is_relay_ack(ack, RELAY, None)
    assert not is_relay_ack(ack + b"media", RELAY, RELAY)
