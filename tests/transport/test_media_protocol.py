"""The media packets and MediaProtocol, with bytes and a fake clock: no sockets, no codec."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.crypto.handshake import CallKeys
from pqcall.crypto.sframe import Header
from pqcall.crypto.sframe_context import RATCHET_BITS, SFrameReceiver, SFrameSender
from pqcall.exceptions import LocalProtocolError
from pqcall.transport.adaptation import (
    ADAPTATION_HOLD_S,
    CALM_COMPLEXITY,
    STARTUP_EXPECTED_LOSS_PERCENT,
    SenderAdaptation,
)
from pqcall.transport.media_config import ProtocolSettings
from pqcall.transport.media_events import (
    AdaptationChanged,
    AudioReceived,
    MediaEvent,
    MediaState,
    MediaTimedOut,
    PeerHungUp,
    PeerMuted,
    ReportReceived,
    RttMeasured,
)
from pqcall.transport.media_packets import (
    AudioPacket,
    HangupReason,
    MediaPacket,
    MutePacket,
    PacketType,
    PingPacket,
    PongPacket,
    ReceiverReport,
    parse_control_packets,
    parse_packet,
)
from pqcall.transport.media_protocol import (
    CALLEE_SENDER_ID,
    CALLER_SENDER_ID,
    HANGUP_REPEAT_INTERVAL_S,
    HANGUP_REPEATS,
    MAX_PONG_HOLD_S,
    MEDIA_CIPHER_SUITE,
    MEDIA_METADATA,
    MUTE_REPEATS,
    MediaProtocol,
)
from tests.utils import handshake_pair

RUN = handshake_pair()
CALLER_KEYS: CallKeys = RUN.caller.keys
CALLEE_KEYS: CallKeys = RUN.callee.keys
FRAME_S = 0.020
FRAME_SAMPLES = 960


# the encoder these tests assume: 80-byte frames at 20 ms in 80-byte padding multiples
BASE_SETTINGS = ProtocolSettings(
    frame_ms=20, frame_bytes=80, pad_to=80, fec=True, base_expected_loss_percent=0, complexity=10
)


def make(
    keys: CallKeys, first_seq: int = 0, first_timestamp: int = 0, **changes: Any
) -> MediaProtocol:
    """A protocol with :data:`BASE_SETTINGS` but for ``changes``."""
    settings = replace(BASE_SETTINGS, **changes)
    return MediaProtocol(keys, settings, first_seq=first_seq, first_timestamp=first_timestamp)


def pair(**kwargs: Any) -> tuple[MediaProtocol, MediaProtocol]:
    """A started caller and callee with the same settings."""
    caller = make(CALLER_KEYS, **kwargs)
    callee = make(CALLEE_KEYS, **kwargs)
    caller.start(now=0.0)
    callee.start(now=0.0)
    return caller, callee


def drain(protocol: MediaProtocol) -> list[MediaEvent]:
    events = []
    while (event := protocol.next_event()) is not None:
        events.append(event)
    return events


def deliver(src: MediaProtocol, dst: MediaProtocol, now: float) -> list[bytes]:
    """Send everything ``src`` has queued to ``dst``; return the datagrams."""
    datagrams = src.datagrams_to_send(now)
    for datagram in datagrams:
        dst.receive_datagram(datagram, now)
    return datagrams


def frame(seq: int, size: int = 60) -> bytes:
    return bytes([seq % 256]) * size


E = TypeVar("E")


def of_type(events: Iterable[MediaEvent], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


# the protocol


def test_sender_ids_follow_the_roles():
    caller, callee = pair()
    caller_datagram = caller.datagrams_to_send(0.0)[0]  # the first ping
    callee_datagram = callee.datagrams_to_send(0.0)[0]
    assert Header.parse(caller_datagram)[0].kid >> RATCHET_BITS == CALLER_SENDER_ID
    assert Header.parse(callee_datagram)[0].kid >> RATCHET_BITS == CALLEE_SENDER_ID


def test_audio_is_numbered_and_delivered():
    caller, callee = pair(first_seq=65534, first_timestamp=2**32 - FRAME_SAMPLES)
    deliver(caller, callee, 0.0)
    drain(callee)
    sent = [caller.send_audio(frame(i), now=i * FRAME_S) for i in range(3)]
    deliver(caller, callee, 0.06)
    received = of_type(drain(callee), AudioReceived)
    assert [(p.seq, p.timestamp) for p in sent] == [(65534, 2**32 - 960), (65535, 0), (0, 960)]
    assert received == [AudioReceived(p.seq, p.timestamp, p.payload, None) for p in sent]
    assert callee.stats.audio_received == 3
    assert caller.stats.audio_sent == 3


def test_control_packets_are_as_large_as_audio():
    caller, _ = pair()
    for i in range(10):  # past counter 8, where the SFrame header grows by a byte
        caller.send_audio(frame(i, 73), now=0.0)
    caller.datagrams_to_send(0.0)
    caller.send_audio(frame(10, 73), now=0.0)
    caller.set_muted(True, now=0.0)
    caller.handle_timer(now=1.0)  # ping and report
    sizes = {len(d) for d in caller.datagrams_to_send(1.0)}
    assert len(sizes) == 1
    assert caller.packet_bytes == 80  # 7-byte header + 73-byte frame, one pad_to


def test_packet_budget_rounds_down_to_the_padding():
    protocol = make(CALLER_KEYS, frame_bytes=80, pad_to=80)
    assert protocol.packet_bytes == 80
    assert protocol.adaptation.frame_bytes == 73
    assert protocol.adaptation.bitrate_bps(20) == 29_200
    small = make(CALLER_KEYS, frame_ms=10, frame_bytes=40, pad_to=80)
    assert small.adaptation.frame_bytes == 40  # never above the configured bitrate
    unpadded = make(CALLER_KEYS, frame_bytes=80, pad_to=0)
    assert unpadded.packet_bytes == 87
    assert unpadded.adaptation.frame_bytes == 80


def test_ping_pong_measures_rtt_without_the_hold_time():
    caller, callee = pair()
    ping = caller.datagrams_to_send(0.0)
    callee.receive_datagram(ping[0], now=0.010)
    pong = [d for d in callee.datagrams_to_send(0.015)]  # held 5 ms (its own ping too)
    for datagram in pong:
        caller.receive_datagram(datagram, now=0.030)
    (rtt,) = of_type(drain(caller), RttMeasured)
    assert (rtt.rtt_s, rtt.ping_sent_at, rtt.hold_s) == pytest.approx((0.025, 0.0, 0.005))
    # the same pong again is not a new measurement (replayed in SFrame, dropped)
    caller.receive_datagram(pong[-1], now=0.031)
    assert drain(caller) == []


def test_pong_rides_in_the_next_control_datagram():
    caller, callee = pair()
    callee.datagrams_to_send(0.0)  # the callee's own first ping goes alone
    deliver(caller, callee, 0.010)  # the caller's first ping
    assert callee.datagrams_to_send(0.020) == []  # its pong waits
    callee.handle_timer(1.0)  # a second on: ping and report are due
    (datagram,) = callee.datagrams_to_send(1.0)
    caller.receive_datagram(datagram, now=1.012)
    events = drain(caller)
    (rtt,) = of_type(events, RttMeasured)
    assert rtt.hold_s == pytest.approx(0.990)
    assert rtt.rtt_s == pytest.approx(0.022)
    assert len(of_type(events, ReportReceived)) == 1
    assert caller.stats.control_received == 3  # ping, report and pong in one datagram


def test_a_pong_goes_alone_when_nothing_else_is_due_soon():
    caller, callee = pair(ping_interval_s=5.0, report_interval_s=5.0)
    callee.datagrams_to_send(0.0)
    deliver(caller, callee, 0.5)
    assert callee.get_timer() == pytest.approx(0.5 + MAX_PONG_HOLD_S)
    callee.handle_timer(1.5)
    (datagram,) = callee.datagrams_to_send(1.5)
    caller.receive_datagram(datagram, now=1.6)
    (rtt,) = of_type(drain(caller), RttMeasured)
    assert rtt.hold_s == pytest.approx(MAX_PONG_HOLD_S)
    assert rtt.rtt_s == pytest.approx(0.6)


def test_control_packets_split_to_keep_the_packet_size():
    caller, _ = pair(frame_bytes=13, pad_to=20)  # 20-byte packets: one ping or report each
    caller.handle_timer(1.0)
    caller.set_muted(True, now=1.0)
    caller.handle_timer(1.0)
    datagrams = caller.datagrams_to_send(1.0)
    assert [[type(p) for p in _open(d)] for d in datagrams] == [
        [PingPacket],
        [PingPacket],
        [ReceiverReport, MutePacket],
    ]
    assert len({len(d) for d in datagrams}) == 1


def test_pong_for_unknown_ping_is_counted():
    caller, _ = pair()
    sender = SFrameSender(MEDIA_CIPHER_SUITE, CALLEE_KEYS.send_key, CALLEE_SENDER_ID)
    forged = sender.protect(PongPacket(99, 0, 0).serialize(), MEDIA_METADATA, now=0.0)
    caller.receive_datagram(forged, now=0.01)
    assert caller.stats.unmatched_pongs == 1
    assert drain(caller) == []


def test_timers_are_drift_free():
    caller, _ = pair(ping_interval_s=1.0, report_interval_s=0.5, media_timeout_s=10.0)
    assert caller.get_timer() == 0.5
    caller.handle_timer(0.52)  # late by 20 ms: the next report stays on the grid
    assert caller.get_timer() == 1.0
    (datagram,) = caller.datagrams_to_send(0.52)  # both in one datagram
    assert [type(p) for p in _open(datagram)] == [PingPacket, ReceiverReport]


def _open(datagram: bytes) -> list[MediaPacket]:
    """The packets of a datagram the caller sent (a fresh receiver: no replay state)."""
    receiver = SFrameReceiver(MEDIA_CIPHER_SUITE, CALLER_KEYS.send_key, CALLER_SENDER_ID)
    payload = receiver.unprotect(datagram, MEDIA_METADATA, now=0.0)
    assert payload is not None
    if payload[0] in (PacketType.AUDIO, PacketType.AUDIO_REDUNDANT):
        return [parse_packet(payload)]
    return list(parse_control_packets(payload))


def run_audio(
    caller: MediaProtocol,
    callee: MediaProtocol,
    frames: int,
    start: float = 0.0,
    lost: Iterable[int] = (),
    size: int = 60,
) -> float:
    """Send ``frames`` audio frames caller -> callee, losing the ``lost`` ones; run the timers."""
    lost = set(lost)
    now = start
    for i in range(frames):
        now = start + i * FRAME_S
        for protocol in (caller, callee):
            timer = protocol.get_timer()
            if timer is not None and timer <= now:
                protocol.handle_timer(now)
        deliver(callee, caller, now)
        deliver(caller, callee, now)  # control packets, pongs included
        caller.send_audio(frame(i, size), now)
        (audio,) = caller.datagrams_to_send(now)
        if i not in lost:
            callee.receive_datagram(audio, now)
    return now


def test_receiver_report_counts_loss_and_jitter():
    caller, callee = pair(report_interval_s=1.0)
    lost = {10, 11, 20, 30, 40}
    run_audio(caller, callee, 50, lost=lost)  # frames 0..49 in the first second
    callee.handle_timer(1.0)
    deliver(callee, caller, 1.0)
    reports = [e.report for e in of_type(drain(caller), ReportReceived)]
    assert reports[-1].cumulative_lost == 5
    assert reports[-1].highest_seq == 49
    assert reports[-1].fraction_lost == 5 * 256 // 50
    assert reports[-1].jitter == 0  # a perfectly paced fake network


def test_loss_raises_fec_then_it_returns_to_normal():
    caller, callee = pair()
    drain(caller)
    # 10 % loss for 3 s: reports at 1, 2 s show it
    run_audio(caller, callee, 150, lost=range(0, 150, 10))
    changes = [e.adaptation for e in of_type(drain(caller), AdaptationChanged)]
    assert changes, "reports with loss must change the encoder"
    assert not changes[-1].redundancy  # the encoder has FEC: it gets the budget
    assert 8 <= changes[-1].expected_loss_percent <= 12
    assert changes[-1].complexity == 10
    assert changes[-1].frame_bytes == 73  # packet size unchanged
    # no loss for ADAPTATION_HOLD_S: back to the configured state
    end = run_audio(caller, callee, int((ADAPTATION_HOLD_S + 2) / FRAME_S), start=3.0)
    assert end > 3.0 + ADAPTATION_HOLD_S
    assert of_type(drain(caller), AdaptationChanged)[-1].adaptation == SenderAdaptation(
        False, 0, 73, CALM_COMPLEXITY
    )


def test_fec_is_planned_for_loss_until_the_first_report():
    caller, callee = pair()
    # before any report: FEC planned for some loss, at the configured complexity
    assert caller.adaptation == SenderAdaptation(False, STARTUP_EXPECTED_LOSS_PERCENT, 73, 10)
    drain(caller)
    # a loss-free first second: the first report puts the plan on measurement
    run_audio(caller, callee, 50)
    callee.handle_timer(1.0)
    deliver(callee, caller, 1.0)
    assert of_type(drain(caller), ReportReceived)
    # and a clean path gets the calm complexity
    assert caller.adaptation == SenderAdaptation(False, 0, 73, CALM_COMPLEXITY)
    # the configured expected loss is a floor the startup plan never lowers
    assert make(CALLER_KEYS, base_expected_loss_percent=25).adaptation == (
        SenderAdaptation(False, 25, 73, 10)
    )
    # a configured complexity below the calm one is kept
    low = make(CALLER_KEYS, complexity=3)
    assert low.adaptation.complexity == 3
    with pytest.raises(LocalProtocolError, match="complexity"):
        make(CALLER_KEYS, complexity=11)


def test_startup_plan_follows_the_first_report_with_loss():
    caller, callee = pair()
    run_audio(caller, callee, 50, lost=range(1, 50, 3))  # a third lost
    callee.handle_timer(1.0)
    deliver(callee, caller, 1.0)
    (report,) = [e.report for e in of_type(drain(caller), ReportReceived)]
    assert report.fraction_lost > 0
    assert caller.adaptation.expected_loss_percent == math.ceil(100 * report.loss_fraction)
    assert caller.adaptation.expected_loss_percent > STARTUP_EXPECTED_LOSS_PERCENT
    assert caller.adaptation.complexity == 10  # loss: the full complexity stays


def test_without_fec_loss_turns_on_redundancy_of_constant_size():
    caller, callee = pair(fec=False)
    assert not caller.adaptation.redundancy
    run_audio(caller, callee, 60, lost=range(0, 60, 5), size=73)
    adaptation = caller.adaptation
    assert adaptation.redundancy
    assert adaptation.frame_bytes == (80 - 7 - 4) // 2
    # the first packet after the switch still holds a full frame: no copy; then copies
    now = 1.3
    caller.send_audio(frame(1000, 73), now)
    caller.send_audio(frame(1001, 34), now)
    caller.send_audio(frame(1002, 34), now)
    datagrams = caller.datagrams_to_send(now)
    packets = [p for d in datagrams for p in _open(d)]
    audio = [p for p in packets if isinstance(p, AudioPacket)]
    assert [p.redundant for p in audio] == [None, None, frame(1001, 34)]
    assert len({len(d) for d in datagrams}) == 1
    for datagram in datagrams:
        callee.receive_datagram(datagram, now)
    received = of_type(drain(callee), AudioReceived)
    assert received[-1].redundant == frame(1001, 34)
    assert caller.stats.redundant_sent == 1


def test_forced_redundancy_and_its_limits():
    caller, _ = pair(redundancy=True)
    assert caller.adaptation == SenderAdaptation(True, 0, 34, 10)  # no startup FEC alongside
    with pytest.raises(LocalProtocolError, match="two audio frames do not fit"):
        make(CALLER_KEYS, frame_bytes=10, pad_to=16, redundancy=True)
    never = make(CALLER_KEYS, redundancy=False, fec=False)
    never.start(0.0)
    assert not never.adaptation.redundancy


def test_redundant_copy_of_another_frame_is_discarded():
    _, callee = pair()
    sender = SFrameSender(MEDIA_CIPHER_SUITE, CALLER_KEYS.send_key, CALLER_SENDER_ID)
    packet = AudioPacket(5, 4800, b"new", b"old", 2 * FRAME_SAMPLES)
    callee.receive_datagram(sender.protect(packet.serialize(), MEDIA_METADATA, now=0.0), 0.0)
    assert of_type(drain(callee), AudioReceived) == [AudioReceived(5, 4800, b"new", None)]
    assert callee.stats.redundant_discarded == 1


def test_replayed_datagram_is_delivered_once():
    caller, callee = pair()
    caller.send_audio(frame(0), 0.0)
    datagrams = deliver(caller, callee, 0.0)
    for datagram in datagrams:
        callee.receive_datagram(datagram, 0.1)
    assert len(of_type(drain(callee), AudioReceived)) == 1
    assert callee.stats.sframe.replayed == len(datagrams)


def test_authenticated_but_malformed_inner_packet_is_counted():
    _, callee = pair()
    sender = SFrameSender(MEDIA_CIPHER_SUITE, CALLER_KEYS.send_key, CALLER_SENDER_ID)
    callee.receive_datagram(sender.protect(b"\x7fjunk", MEDIA_METADATA, now=0.0), 0.0)
    callee.receive_datagram(sender.protect(b"\x01\x00", MEDIA_METADATA, now=0.0), 0.0)
    wrong_label = sender.protect(AudioPacket(0, 0, b"x").serialize(), b"other", now=0.0)
    callee.receive_datagram(wrong_label, 0.0)
    stats = callee.stats
    assert (stats.malformed, stats.sframe.auth_failed, stats.dropped) == (2, 1, 3)
    assert callee.dropped == 3
    assert drain(callee) == []


def test_garbage_never_raises_and_is_counted():
    _, callee = pair()
    rng = random.Random(1)
    garbage = [rng.randbytes(rng.randrange(0, 120)) for _ in range(200)]
    garbage += [Header(kid=0, ctr=rng.randrange(2**40)).serialize() + rng.randbytes(96)] * 50
    for datagram in garbage:
        callee.receive_datagram(datagram, 0.0)
    assert callee.stats.dropped == callee.dropped == len(garbage)
    assert drain(callee) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=150))
def test_receive_datagram_accepts_any_bytes(data):
    _, callee = pair()
    callee.receive_datagram(data, 0.0)
    assert callee.stats.dropped == 1


def test_mute_is_repeated_and_stale_copies_do_not_undo_a_newer_change():
    caller, callee = pair()
    deliver(caller, callee, 0.0)
    caller.set_muted(True, now=0.0)
    caller.handle_timer(0.0)
    muted_copy = caller.datagrams_to_send(0.0)
    assert len(muted_copy) == 1
    caller.set_muted(False, now=0.05)  # replaces the pending mute copies
    unmute = []
    for t in (0.05, 0.151, 0.251):
        caller.handle_timer(t)
        unmute += caller.datagrams_to_send(t)
    assert len(unmute) == MUTE_REPEATS
    for datagram in unmute + muted_copy:  # the old "muted" arrives last
        callee.receive_datagram(datagram, 0.3)
    assert of_type(drain(callee), PeerMuted) == []  # never muted as far as it knows
    assert not callee.is_peer_muted
    caller.set_muted(True, now=0.4)
    caller.handle_timer(0.4)
    deliver(caller, callee, 0.4)
    assert of_type(drain(callee), PeerMuted) == [PeerMuted(True)]
    assert callee.is_peer_muted and caller.is_muted
    # copies due at once (a late timer) go once
    caller.set_muted(False, now=0.5)
    caller.handle_timer(0.8)
    (late,) = caller.datagrams_to_send(0.8)
    assert _open(late) == [MutePacket(False, 4)]


def test_hangup_is_sent_several_times_then_ends():
    caller, callee = pair()
    deliver(caller, callee, 0.0)
    caller.hangup(now=1.0, reason=HangupReason.SHUTDOWN)
    assert caller.state is MediaState.HANGING_UP
    with pytest.raises(LocalProtocolError, match="hanging up"):
        caller.send_audio(b"x", 1.0)
    copies = caller.datagrams_to_send(1.0)
    while (timer := caller.get_timer()) is not None:
        caller.handle_timer(timer)
        copies += caller.datagrams_to_send(timer)
    assert len(copies) == HANGUP_REPEATS
    assert timer is None and caller.is_ended
    # the peer ends on the first copy it gets (here the last: the others were lost)
    callee.receive_datagram(copies[-1], 1.0 + HANGUP_REPEATS * HANGUP_REPEAT_INTERVAL_S)
    assert of_type(drain(callee), PeerHungUp) == [PeerHungUp(HangupReason.SHUTDOWN)]
    assert callee.is_ended and callee.get_timer() is None
    callee.receive_datagram(copies[0], 2.0)
    assert callee.stats.ignored == 1


def test_media_timeout_ends_a_silent_call():
    caller, callee = pair(media_timeout_s=2.0)
    deliver(callee, caller, 1.5)  # the callee's first ping at 1.5 s keeps the call alive
    caller.handle_timer(2.0)
    assert not caller.is_ended
    caller.handle_timer(3.4)
    assert not caller.is_ended
    timer = caller.get_timer()
    assert timer is not None and timer <= 3.5
    caller.handle_timer(3.5)
    assert of_type(drain(caller), MediaTimedOut) == [MediaTimedOut(2.0)]
    assert caller.is_ended


def test_misuse_before_start():
    protocol = make(CALLER_KEYS)
    with pytest.raises(LocalProtocolError, match="awaiting start"):
        protocol.send_audio(b"x", 0.0)
    protocol.receive_datagram(b"anything", 0.0)
    assert protocol.stats.ignored == 1
    assert protocol.get_timer() is None
    protocol.start(0.0)
    with pytest.raises(LocalProtocolError, match="already started"):
        protocol.start(0.0)
    with pytest.raises(LocalProtocolError, match="must not be empty"):
        protocol.send_audio(b"", 0.0)
