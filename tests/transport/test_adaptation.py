"""Bursts: the receiver measures them, the report carries them, the policy answers them."""

import pytest

from pqcall.crypto.sframe_context import SFrameReceiver
from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.adaptation import (
    ADAPTATION_HOLD_S,
    BACKUP_COPIES,
    AdaptationPolicy,
    EncoderMode,
)
from pqcall.transport.audio_framer import backup_packet_bytes
from pqcall.transport.media_packets import (
    BurstReport,
    PingPacket,
    ReceiverReport,
    parse_control_packets,
)
from pqcall.transport.media_protocol import CALLEE_SENDER_ID, MEDIA_CIPHER_SUITE, MEDIA_METADATA
from pqcall.transport.reception import LOSS_GRACE_S, ReceptionReporter
from tests.transport.test_media_protocol import CALLEE_KEYS, deliver, pair

FRAME_S = 0.02
SAMPLES = 960


def receive(lost: set[int], count: int) -> ReceptionReporter:
    """A reporter that saw ``count`` packets at 20 ms, but for ``lost``; judged at the end."""
    reporter = ReceptionReporter()
    for seq in range(count):
        if seq not in lost:
            reporter.update(seq, seq * SAMPLES, seq * FRAME_S)
    return reporter


def test_burst_report_layout_and_mean():
    report = BurstReport(bursts=2, lost=6)
    assert report.serialize() == bytes.fromhex("15 0002 0006")
    assert parse_control_packets(report.serialize()) == [report]
    assert report.mean_burst_packets == 3.0
    assert BurstReport(0, 0).mean_burst_packets == 0.0


def test_burst_report_rejects_fewer_packets_than_bursts():
    with pytest.raises(DecodeError, match=r"^bursts packet has fewer lost packets than bursts$"):
        parse_control_packets(bytes.fromhex("15 0003 0002"))
    with pytest.raises(LocalProtocolError, match=r"^a burst holds at least one lost packet$"):
        BurstReport(3, 2)


def test_receiver_counts_runs_of_lost_packets():
    # a burst of 3, a single loss, a burst of 2: 6 lost in 3 runs
    reporter = receive({10, 11, 12, 20, 30, 31}, 50)
    bursts, report = reporter.reports(50 * FRAME_S + LOSS_GRACE_S)
    assert bursts == BurstReport(bursts=3, lost=6)
    assert isinstance(report, ReceiverReport) and report.fraction_lost > 0


def test_random_single_losses_are_bursts_of_one():
    reporter = receive({5, 15, 25, 35}, 50)
    bursts, _ = reporter.reports(50 * FRAME_S + LOSS_GRACE_S)
    assert bursts == BurstReport(bursts=4, lost=4)


def test_no_burst_report_for_a_loss_free_interval():
    reporter = receive(set(), 50)
    (report,) = reporter.reports(50 * FRAME_S + LOSS_GRACE_S)
    assert isinstance(report, ReceiverReport)


def test_a_run_is_judged_once_a_later_packet_has_been_here_its_grace():
    reporter = ReceptionReporter()
    for seq in (*range(10), 13):  # 10-12 lost
        reporter.update(seq, seq * SAMPLES, seq * FRAME_S)
    (early,) = reporter.reports(13 * FRAME_S + LOSS_GRACE_S / 2)  # 13 too recent: not judged
    assert isinstance(early, ReceiverReport) and early.fraction_lost == 0
    bursts, _ = reporter.reports(13 * FRAME_S + 2 * LOSS_GRACE_S)
    assert bursts == BurstReport(1, 3)
    (later,) = reporter.reports(1.0)  # counted once
    assert isinstance(later, ReceiverReport)


def policy(backup_bytes: int = 30) -> AdaptationPolicy:
    return AdaptationPolicy(
        frame_bytes=99,
        packet_bytes=106,
        redundancy=None,
        fec=True,
        base_expected_loss_percent=0,
        complexity=10,
        backup_bytes=backup_bytes,
    )


LOSSY = ReceiverReport(cumulative_lost=5, highest_seq=50, jitter=0, fraction_lost=25)
CLEAN = ReceiverReport(cumulative_lost=5, highest_seq=100, jitter=0, fraction_lost=0)


def mode_of(adaptation: AdaptationPolicy) -> EncoderMode:
    return adaptation.adaptation.mode


def feed(adaptation: AdaptationPolicy, bursts: BurstReport | None, now: float) -> bool:
    if bursts is not None:
        assert adaptation.take_bursts(bursts)
    return adaptation.report_received(LOSSY, now)


def test_bursty_loss_turns_backup_copies_on():
    ours = policy()
    assert mode_of(ours) is EncoderMode.FEC  # the startup plan
    assert feed(ours, BurstReport(bursts=2, lost=6), now=1.0)
    adaptation = ours.adaptation
    assert adaptation.mode is EncoderMode.BACKUP
    assert adaptation.backup_copies == BACKUP_COPIES
    assert adaptation.backup_bytes == 67  # three copies fill three packet sizes
    assert backup_packet_bytes(adaptation) <= 3 * 106
    assert adaptation.frame_bytes == 99  # the main frame keeps its bytes
    assert adaptation.expected_loss_percent == 0  # the copies replace FEC
    assert adaptation.complexity == 10


def test_random_loss_plans_fec_not_backup():
    ours = policy()
    feed(ours, BurstReport(bursts=5, lost=5), now=1.0)
    assert mode_of(ours) is EncoderMode.FEC
    assert ours.adaptation.backup_copies == 0


def test_backup_needs_a_sender_that_can_carry_copies():
    ours = policy(backup_bytes=0)
    feed(ours, BurstReport(bursts=2, lost=6), now=1.0)
    assert mode_of(ours) is EncoderMode.FEC


def test_backup_mode_has_hysteresis_and_ends_after_the_hold():
    ours = policy()
    feed(ours, BurstReport(bursts=2, lost=6), now=1.0)
    # mean over the window (9 lost in 5 runs: 1.8, then 10 in 7: 1.43) stays above the exit
    feed(ours, BurstReport(bursts=3, lost=3), now=2.0)
    feed(ours, BurstReport(bursts=2, lost=2), now=3.0)
    assert mode_of(ours) is EncoderMode.BACKUP
    feed(ours, BurstReport(bursts=6, lost=6), now=4.0)  # 16 in 13 runs: 1.23
    assert mode_of(ours) is EncoderMode.FEC
    feed(ours, BurstReport(bursts=1, lost=8), now=5.0)  # 21 in 12: 1.75, not yet 1.8
    assert mode_of(ours) is EncoderMode.FEC
    feed(ours, BurstReport(bursts=1, lost=9), now=6.0)  # 27 in 10 (window of 4)
    assert mode_of(ours) is EncoderMode.BACKUP
    assert ours.adaptation.mode.value == "backup"
    ours.report_received(CLEAN, now=7.0)
    assert ours.handle_timer(6.0 + ADAPTATION_HOLD_S)
    assert mode_of(ours) is EncoderMode.CLEAN
    assert ours.mean_burst_packets == 0.0


def test_forced_redundancy_is_not_overridden_by_bursts():
    ours = AdaptationPolicy(
        frame_bytes=99,
        packet_bytes=106,
        redundancy=True,
        fec=True,
        base_expected_loss_percent=0,
        complexity=10,
        backup_bytes=30,
    )
    feed(ours, BurstReport(bursts=2, lost=6), now=1.0)
    assert mode_of(ours) is EncoderMode.REDUNDANCY


def test_protocol_sends_the_burst_report_just_before_its_receiver_report():
    caller, callee = pair()
    deliver(caller, callee, 0.0)
    deliver(callee, caller, 0.0)  # the first pings
    for seq in range(40):
        caller.send_audio(bytes([seq]) * 60, now=seq * FRAME_S)
        datagrams = caller.datagrams_to_send(seq * FRAME_S)
        if seq not in (10, 11, 12):
            for datagram in datagrams:
                callee.receive_datagram(datagram, now=seq * FRAME_S)
    callee.handle_timer(1.0)
    (datagram,) = callee.datagrams_to_send(1.0)
    receiver = SFrameReceiver(MEDIA_CIPHER_SUITE, CALLEE_KEYS.send_key, CALLEE_SENDER_ID)
    payload = receiver.unprotect(datagram, MEDIA_METADATA, now=1.0)
    assert payload is not None
    packets = parse_control_packets(payload)
    assert [type(p) for p in packets] == [PingPacket, BurstReport, ReceiverReport]
    assert packets[1] == BurstReport(bursts=1, lost=3)
    before = caller.stats.control_received
    caller.receive_datagram(datagram, now=1.01)
    assert caller.stats.control_received == before + 2  # the burst report rides with its report
