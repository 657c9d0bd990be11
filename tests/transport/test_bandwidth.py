"""Bandwidth adaptation on synthetic round trips and reports (pure: no socket, no clock)."""

from __future__ import annotations

import itertools

import pytest

from pqcall.transport.adaptation import AdaptationPolicy, EncoderMode
from pqcall.transport.bandwidth import (
    FAILED_PROBE_BACKOFF_S,
    LADDER_KBPS,
    PROBE_HOLD_S,
    BandwidthController,
    packet_bytes,
)
from pqcall.transport.media_events import AudioReceived
from pqcall.transport.media_packets import AUDIO_HEADER_LENGTH, AudioPacket, ReceiverReport
from tests.transport.test_media_protocol import deliver, pair

FRAME_BYTES = 99  # the default cap: 39.6 kbit/s at 20 ms
BASE_RTT_S = 0.01


def report(highest_seq: int, lost: int = 0, fraction: int = 0) -> ReceiverReport:
    return ReceiverReport(
        cumulative_lost=lost, highest_seq=highest_seq, jitter=0, fraction_lost=fraction
    )


class Link:
    """A link of ``capacity_bps`` fed at the controller's rate: queue, round trips, reports."""

    def __init__(self, controller: BandwidthController, capacity_bps: float) -> None:
        self.controller = controller
        self.capacity_bps = capacity_bps
        self.backlog_bits = 0.0
        self.delivered_seq = 0  # the highest sequence number the peer reports
        self.changes: list[tuple[float, int]] = []

    def run(self, start: float, seconds: float, queue_s: float = 0.2) -> float:
        """Advance in 20 ms steps: a packet in, the link drains; a ping and a report each second."""
        controller = self.controller
        now = start
        while now < start + seconds - 1e-9:
            bits = controller.wire_bps(controller.frame_bytes, controller.frames_per_packet) * 0.02
            if self.backlog_bits / self.capacity_bps <= queue_s:  # drop-tail
                self.backlog_bits += bits
            self.backlog_bits = max(0.0, self.backlog_bits - self.capacity_bps * 0.02)
            now += 0.02
            step = round(now / 0.02)
            if step % 50 == 0:
                queueing = self.backlog_bits / self.capacity_bps
                if controller.rtt_measured(BASE_RTT_S + queueing, now):
                    self.changes.append((now, controller.frame_bytes))
            if step % 50 == 25:
                # packets delivered in the second: what the capacity let through
                rate_bps = controller.wire_bps(controller.frame_bytes, controller.frames_per_packet)
                self.delivered_seq += int(50 * min(self.capacity_bps, rate_bps) / rate_bps)
                if controller.report_received(report(self.delivered_seq), now):
                    self.changes.append((now, controller.frame_bytes))
        return now

    @property
    def queueing_s(self) -> float:
        return self.backlog_bits / self.capacity_bps


def test_ladder_goes_down_from_the_configured_frame():
    controller = BandwidthController(FRAME_BYTES, 20)
    assert controller.frame_bytes == FRAME_BYTES and not controller.is_limited
    # the wire rate: header, frame, IP/UDP and SFrame, 50 packets a second
    assert controller.wire_bps(FRAME_BYTES) == pytest.approx((7 + 99 + 50) * 8 * 50)
    assert min(LADDER_KBPS) * 20 // 8 == 15  # the lowest rung: 6 kbit/s, 15 bytes
    # two frames a packet: one packet's headers for two frames, 25 packets a second
    assert controller.wire_bps(40, 2) == pytest.approx((7 + 4 + 80 + 50) * 8 * 25)


def test_a_report_round_trip_counts_only_with_loss_towards_a_full_queue():
    controller = BandwidthController(FRAME_BYTES, 20)
    for seq in range(200):
        controller.audio_sent(seq, seq * 0.02)
    # the reports' own baseline: one naming a packet sent 20 ms before
    assert not controller.report_received(report(24), 0.5)
    # reports naming packets sent 300 ms earlier: no loss, no decrease (not exact: no growth)
    assert not controller.report_received(report(60), 1.5)
    assert not controller.report_received(report(110), 2.5)
    assert not controller.is_limited
    # with 20 % loss, two standing round trips are a full queue
    assert controller.report_received(report(160, lost=10, fraction=51), 3.5)
    assert controller.is_limited


def test_no_queueing_keeps_the_full_rate():
    controller = BandwidthController(FRAME_BYTES, 20)
    for second in range(30):
        assert not controller.rtt_measured(BASE_RTT_S + 0.003 * (second % 3), float(second))
        assert not controller.report_received(report(50 * second), second + 0.5)
    assert controller.frame_bytes == FRAME_BYTES


def test_jitter_is_not_a_queue_a_queue_persists():
    controller = BandwidthController(FRAME_BYTES, 20)
    controller.rtt_measured(BASE_RTT_S, 0.0)
    # single pings up (jitter), two at 70 ms: nothing
    assert not controller.rtt_measured(BASE_RTT_S + 0.15, 1.0)
    assert not controller.rtt_measured(BASE_RTT_S, 2.0)
    assert not controller.rtt_measured(BASE_RTT_S + 0.07, 3.0)
    assert not controller.rtt_measured(BASE_RTT_S + 0.07, 4.0)
    assert controller.rtt_measured(BASE_RTT_S + 0.07, 5.0)  # three in a row: a queue
    assert controller.is_limited


def test_two_pings_through_a_full_queue_are_enough():
    controller = BandwidthController(FRAME_BYTES, 20)
    controller.rtt_measured(BASE_RTT_S, 0.0)
    assert not controller.rtt_measured(BASE_RTT_S + 0.2, 1.0)
    assert controller.rtt_measured(BASE_RTT_S + 0.2, 2.0)


def test_a_decrease_aims_under_the_delivered_rate():
    controller = BandwidthController(FRAME_BYTES, 20)
    controller.rtt_measured(BASE_RTT_S, 0.0)
    # the peer's reports: 30 packets a second arrived (a 37 kbit/s link)
    controller.report_received(report(100), 1.0)
    controller.report_received(report(130), 2.0)
    delivered = controller.delivered_bps
    assert delivered is not None
    assert delivered == pytest.approx(30 * (7 + 99 + 50) * 8)
    assert not controller.rtt_measured(BASE_RTT_S + 0.2, 2.2)  # pings through a full queue
    assert controller.rtt_measured(BASE_RTT_S + 0.2, 2.5)
    assert (
        controller.wire_bps(controller.frame_bytes, controller.frames_per_packet)
        <= 0.85 * delivered
    )


def test_narrow_link_drains_then_probes_back_when_it_widens():
    controller = BandwidthController(FRAME_BYTES, 20)
    link = Link(controller, capacity_bps=48_000)
    controller.rtt_measured(BASE_RTT_S, 0.0)
    now = link.run(0.0, 2.0)
    # a 48 kbit/s link under a 62 kbit/s call: lowered within 3 s, queue drained within 5 s
    assert controller.is_limited
    assert controller.wire_bps(controller.frame_bytes, controller.frames_per_packet) < 48_000
    now = link.run(now, 3.0)
    assert link.queueing_s < 0.1
    # the link widens: the rate comes back to the top, a rung at a time
    link.capacity_bps = 1_000_000
    now = link.run(now, 25.0)
    assert controller.frame_bytes == FRAME_BYTES
    assert not controller.is_limited


def test_a_failed_probe_is_not_retried_at_once():
    controller = BandwidthController(FRAME_BYTES, 20)
    link = Link(controller, capacity_bps=40_000)
    controller.rtt_measured(BASE_RTT_S, 0.0)
    now = link.run(0.0, 15.0)
    assert controller.wire_bps(controller.frame_bytes, controller.frames_per_packet) < 40_000
    window = FAILED_PROBE_BACKOFF_S - PROBE_HOLD_S
    first = controller.frame_bytes
    link.run(now, window)
    rungs = [first, *(rung for at, rung in link.changes if at > now)]
    decreases = sum(after < before for before, after in itertools.pairwise(rungs))
    assert decreases <= 1  # one failed probe in the backoff window at most
    assert link.queueing_s < 0.1


def test_policy_pads_each_rung_to_its_own_size_and_drops_redundancy():
    policy = AdaptationPolicy(
        frame_bytes=FRAME_BYTES,
        packet_bytes=AUDIO_HEADER_LENGTH + FRAME_BYTES,
        redundancy=None,
        fec=True,
        base_expected_loss_percent=0,
        complexity=10,
        frame_ms=20,
    )
    policy.report_received(report(50), 1.0)
    assert policy.adaptation.packet_bytes == 0  # the configured size
    policy.rtt_measured(BASE_RTT_S, 1.5)
    assert not policy.rtt_measured(BASE_RTT_S + 0.2, 2.0)
    assert policy.rtt_measured(BASE_RTT_S + 0.2, 2.5)
    limited = policy.adaptation
    assert limited.frame_bytes < FRAME_BYTES
    # two frames a packet on a rung: the AUDIO_PAIR form's size
    assert limited.frames_per_packet == 2
    assert limited.packet_bytes == AUDIO_HEADER_LENGTH + 4 + 2 * limited.frame_bytes
    assert limited.bitrate_bps(20) == limited.frame_bytes * 400
    assert limited.mode in (EncoderMode.CLEAN, EncoderMode.FEC)


def test_pair_packet_round_trips_and_is_two_frames_to_the_receiver():
    first, second = b"\x11" * 30, b"\x22" * 31
    packet = AudioPacket(5, 4800, second, first, 960, pair=True)
    data = packet.serialize()
    assert data[0] == 0x04  # AUDIO_PAIR
    assert AudioPacket.parse(data) == packet
    assert len(data) == packet_bytes(31, 2) - 1  # two lengths differ by a byte here

    caller, callee = pair()
    # a queue in the caller's round trips puts it on a rung: two frames a packet
    policy = caller._policy  # the protocol's own policy, fed as its pongs would
    policy.rtt_measured(0.01, 0.5)
    policy.rtt_measured(0.3, 1.0)
    assert policy.rtt_measured(0.3, 1.5)
    caller._adapted()
    assert caller.adaptation.frames_per_packet == 2
    now = 2.0
    deliver(caller, callee, now)  # the control packets due at the start
    while callee.next_event() is not None:
        pass
    callee_events = []
    first_seq = -1
    for index in range(10):
        sent = caller.send_audio(bytes([index + 1]) * 20, now)
        first_seq = sent.seq if first_seq < 0 else first_seq
        datagrams = deliver(caller, callee, now)
        assert len(datagrams) == index % 2  # every other frame waits for the next
        while (event := callee.next_event()) is not None:
            callee_events.append(event)
        now += 0.02
    audio = [e for e in callee_events if isinstance(e, AudioReceived)]
    # ten frames in five packets, each frame its own event, in order, none a copy
    assert [e.seq for e in audio] == [first_seq + i for i in range(10)]
    assert [e.timestamp - audio[0].timestamp for e in audio] == [i * 960 for i in range(10)]
    assert all(e.redundant is None for e in audio)
    assert [e.payload for e in audio] == [bytes([i + 1]) * 20 for i in range(10)]
    # and the receiver reports none of them lost
    report = callee._reception.report(now + 1.0)
    assert report.fraction_lost == 0 and report.highest_seq == first_seq + 9
