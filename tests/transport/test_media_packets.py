"""Media packets: their bytes, round trips and every malformed shape (no protocol, no crypto)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.media_packets import (
    AudioPacket,
    HangupPacket,
    HangupReason,
    MediaPacket,
    MutePacket,
    PingPacket,
    PongPacket,
    ReceiverReport,
    parse_control_packets,
    parse_packet,
)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(AudioPacket(0, 0, b"\x01"), id="audio-minimal"),
        pytest.param(AudioPacket(65535, 2**32 - 1, b"opus" * 20), id="audio-max-fields"),
        pytest.param(AudioPacket(7, 6720, b"new", b"old", 960), id="audio-redundant"),
        pytest.param(PingPacket(2**32 - 1, 2**64 - 1), id="ping"),
        pytest.param(PongPacket(3, 123_456, 2_000), id="pong"),
        pytest.param(ReceiverReport(12, 70_000, 480, 255), id="report"),
        pytest.param(MutePacket(True, 65535), id="mute"),
        pytest.param(MutePacket(False, 0), id="unmute"),
        pytest.param(HangupPacket(HangupReason.NORMAL), id="hangup"),
        pytest.param(HangupPacket(200), id="hangup-unknown-reason"),
    ],
)
def test_packet_round_trip(packet):
    data = packet.serialize()
    assert parse_packet(data) == packet
    assert type(packet).parse(data) == packet


def test_audio_layout_is_documented():
    # 01 | seq | timestamp | payload, and 02 | seq | timestamp | offset | length | red | payload
    assert AudioPacket(0x0102, 0x03040506, b"P").serialize() == bytes.fromhex("01 0102 03040506 50")
    assert AudioPacket(1, 2, b"P", b"RR", 960).serialize() == bytes.fromhex(
        "02 0001 00000002 03c0 0002 5252 50"
    )
    assert AudioPacket(1, 2, b"P", b"RR", 960).size == 7 + 4 + 2 + 1


def test_report_units():
    report = ReceiverReport(cumulative_lost=5, highest_seq=10, jitter=480, fraction_lost=64)
    assert report.jitter_ms == 10.0
    assert report.loss_fraction == 0.25


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "media packet is empty", id="empty"),
        pytest.param(b"\x7f", "media packet has unknown type 0x7f", id="unknown-type"),
        pytest.param(b"\x01\x00\x01\x00\x00", "audio packet has truncated header", id="short"),
        pytest.param(
            bytes(7).replace(b"\x00", b"\x01", 1), "audio packet has empty payload", id="a0"
        ),
        pytest.param(
            bytes.fromhex("02 0001 00000002 03"),
            "audio packet has truncated redundancy header",
            id="red-header",
        ),
        pytest.param(
            bytes.fromhex("02 0001 00000002 0000 0001 52 50"),
            "audio packet has zero redundant timestamp offset",
            id="red-offset",
        ),
        pytest.param(
            bytes.fromhex("02 0001 00000002 03c0 0000 50"),
            "audio packet has empty redundant payload",
            id="red-empty",
        ),
        pytest.param(
            bytes.fromhex("02 0001 00000002 03c0 0005 5252"),
            "audio packet has truncated redundant payload",
            id="red-truncated",
        ),
        pytest.param(
            bytes.fromhex("02 0001 00000002 03c0 0002 5252"),
            "audio packet has empty payload",
            id="red-no-primary",
        ),
        pytest.param(b"\x10" + bytes(11), "ping packet is truncated", id="ping-short"),
        pytest.param(b"\x10" + bytes(13), "ping packet has trailing data", id="ping-long"),
        pytest.param(b"\x11" + bytes(15), "pong packet is truncated", id="pong-short"),
        pytest.param(b"\x12" + bytes(14), "report packet has trailing data", id="report-long"),
        pytest.param(b"\x13\x02\x00\x01", "mute packet has invalid flag 0x02", id="mute-flag"),
        pytest.param(b"\x14", "hangup packet is truncated", id="hangup-short"),
    ],
)
def test_malformed_packets_name_the_defect(data, message):
    with pytest.raises(DecodeError) as raised:
        parse_packet(data)
    assert str(raised.value) == message


def test_control_packets_back_to_back():
    packets: list[MediaPacket] = [
        PingPacket(1, 2),
        ReceiverReport(3, 4, 5, 6),
        PongPacket(7, 8, 9),
        HangupPacket(0),
    ]
    data = b"".join(p.serialize() for p in packets)
    assert parse_control_packets(data) == packets
    with pytest.raises(DecodeError, match=r"^pong packet is truncated$"):
        parse_control_packets(data[:13] + data[27:-3])
    with pytest.raises(DecodeError, match=r"^media packet has unknown type 0x01$"):
        parse_control_packets(data[:13] + AudioPacket(0, 0, b"x").serialize())
    with pytest.raises(DecodeError, match=r"^media packet is empty$"):
        parse_control_packets(b"")


def test_audio_packet_rejects_bad_fields():
    with pytest.raises(LocalProtocolError, match="16 bits"):
        AudioPacket(65536, 0, b"x")
    with pytest.raises(LocalProtocolError, match="must not be empty"):
        AudioPacket(0, 0, b"")
    with pytest.raises(LocalProtocolError, match="offset"):
        AudioPacket(0, 0, b"x", b"y", 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_packet_raises_only_decode_error(data):
    try:
        packet = parse_packet(data)
    except DecodeError:
        return
    assert packet.serialize() == data
