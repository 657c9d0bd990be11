"""Media packets: their bytes, round trips and every malformed shape (no protocol, no crypto)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport import control_packets
from pqcall.transport.media_packets import (
    VOICE_DISGUISED,
    AudioPacket,
    FlagsPacket,
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
        pytest.param(FlagsPacket(VOICE_DISGUISED, 65535), id="flags-disguised"),
        pytest.param(FlagsPacket(0xFE, 0), id="flags-unknown-bits"),
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


# FLAGS: the voice-disguise bit (issue 23)


def test_flags_layout_and_the_disguise_bit():
    assert FlagsPacket(VOICE_DISGUISED, 0x0102).serialize() == bytes.fromhex("16 01 0102")
    assert FlagsPacket(VOICE_DISGUISED | 0x80, 0).voice_disguised
    assert not FlagsPacket(0x80, 0).voice_disguised  # a bit this side does not know
    with pytest.raises(DecodeError, match="flags packet"):
        parse_packet(bytes.fromhex("16 01"))
    with pytest.raises(LocalProtocolError):
        FlagsPacket(0x100, 0)


def _run(caller, callee, until: float) -> list[bytes]:
    """Drive both sides' timers to ``until`` (10 ms steps), delivering both ways."""
    sent: list[bytes] = []
    t = 0.0
    while t <= until:
        for src, dst in ((caller, callee), (callee, caller)):
            src.handle_timer(t)
            datagrams = src.datagrams_to_send(t)
            for datagram in datagrams:
                dst.receive_datagram(datagram, t)
            if src is caller:
                sent += datagrams
        t = round(t + 0.01, 2)
    return sent


def _started(disguised: bool):
    from tests.transport.test_media_protocol import CALLEE_KEYS, CALLER_KEYS, make

    caller, callee = make(CALLER_KEYS), make(CALLEE_KEYS)
    if disguised:
        caller.set_voice_disguised(True, 0.0)  # before the start: announced at it
    caller.start(now=0.0)
    callee.start(now=0.0)
    return caller, callee


def test_the_peer_learns_the_voice_is_disguised_in_a_datagram_of_its_own():
    from tests.transport.test_media_protocol import _open

    caller, callee = _started(disguised=True)
    sent = _run(caller, callee, 3.5)
    assert callee.is_peer_voice_disguised
    assert not caller.is_peer_voice_disguised  # the callee never said so
    flags = [d for d in sent if any(isinstance(p, FlagsPacket) for p in _open(d))]
    assert len(flags) == 5  # the copies at 0, 0.1, 0.2, 1 and 3 s
    assert all(_open(d) == [FlagsPacket(VOICE_DISGUISED, 1)] for d in flags)  # alone
    assert callee.stats.control_received >= 5 and caller.stats.control_sent >= 5
    caller.set_voice_disguised(False, 4.0)
    caller.handle_timer(4.0)
    for datagram in caller.datagrams_to_send(4.0):
        callee.receive_datagram(datagram, 4.0)
    assert not callee.is_peer_voice_disguised
    for datagram in flags:  # stale copies (replayed too: SFrame drops them) change nothing
        callee.receive_datagram(datagram, 4.1)
    assert not callee.is_peer_voice_disguised


def test_without_a_disguise_no_flags_are_sent():
    from tests.transport.test_media_protocol import _open

    caller, callee = _started(disguised=False)
    sent = _run(caller, callee, 3.5)
    assert not any(isinstance(p, FlagsPacket) for d in sent for p in _open(d))
    assert not callee.is_peer_voice_disguised


def test_a_peer_without_flags_drops_them_counted_and_keeps_the_rest(monkeypatch):
    """An older peer (its parser knows no FLAGS) drops only the flags' datagrams."""
    caller, callee = _started(disguised=True)
    caller.set_muted(True, 0.0)  # announced at the start too: at the same moments
    monkeypatch.delitem(control_packets._CONTROL_PARSERS, 0x16)
    monkeypatch.delitem(control_packets._CONTROL_LENGTHS, 0x16)
    _run(caller, callee, 0.5)
    assert callee.is_peer_muted  # the mute copies came through
    assert not callee.is_peer_voice_disguised
    assert callee.stats.malformed == 3  # the flags copies at 0, 0.1 and 0.2 s, counted
