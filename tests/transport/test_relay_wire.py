"""The relay's bind and ack datagrams: round trips and the exact defect of a bad one."""

from __future__ import annotations

import pytest

from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.relay_wire import (
    ACK_MAGIC,
    BIND_MAGIC,
    RelayAck,
    RelayBind,
    RelayTarget,
    is_relay_ack,
)

TOKEN = bytes(range(16))
RELAY = ("192.0.2.9", 5001)


def test_bind_round_trip():
    data = RelayBind(TOKEN).serialize()
    assert data == b"PQRB" + TOKEN
    assert RelayBind.parse(data) == RelayBind(TOKEN)
    assert RelayTarget(RELAY, TOKEN).bind == data


@pytest.mark.parametrize("is_peer_bound", [False, True])
def test_ack_round_trip(is_peer_bound):
    data = RelayAck(is_peer_bound).serialize()
    assert data == b"PQRA" + bytes([is_peer_bound])
    assert RelayAck.parse(data) == RelayAck(is_peer_bound)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"PQRX" + TOKEN, "not a relay bind", id="magic"),
        pytest.param(BIND_MAGIC + TOKEN[:15], "relay bind must be 20 bytes, got 19", id="short"),
    ],
)
def test_bad_bind(data, message):
    with pytest.raises(DecodeError, match=f"^{message}$"):
        RelayBind.parse(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"PQRB\x01", "not a relay ack", id="magic"),
        pytest.param(ACK_MAGIC + b"\x01\x00", "relay ack must be 5 bytes, got 6", id="long"),
        pytest.param(ACK_MAGIC + b"\x07", "relay ack has an unknown state 0x07", id="state"),
    ],
)
def test_bad_ack(data, message):
    with pytest.raises(DecodeError, match=f"^{message}$"):
        RelayAck.parse(data)


def test_token_length_is_checked():
    with pytest.raises(LocalProtocolError, match=r"^relay token must be 16 bytes, got 3$"):
        RelayBind(b"abc")
    with pytest.raises(LocalProtocolError, match=r"^relay token must be 16 bytes, got 3$"):
        RelayTarget(RELAY, b"abc")


def test_an_ack_counts_only_from_the_relay():
    ack = RelayAck(True).serialize()
    assert is_relay_ack(ack, RELAY, RELAY)
    assert not is_relay_ack(ack, ("192.0.2.8", 5001), RELAY)
    assert not is_relay_ack(ack, RELAY, None)
    assert not is_relay_ack(ack + b"media", RELAY, RELAY)
