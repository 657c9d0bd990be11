"""Call statistics and the G.107 E-model, against hand-computed values."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqcall.exceptions import LocalProtocolError
from pqcall.media import emodel
from pqcall.media.jitter import JitterBuffer, JitterBufferStats
from pqcall.media.stats import (
    BITRATE_BUCKETS_PER_S,
    BITRATE_WINDOW_S,
    IPV4_UDP_OVERHEAD_BYTES,
    IPV6_UDP_OVERHEAD_BYTES,
    MIN_AUDIO_LEVEL_DBFS,
    BitrateMeter,
    CallStats,
    SequenceTracker,
)

FRAME_SAMPLES = 960


def playout(**counts: float) -> JitterBufferStats:
    """Jitter-buffer counters: zero unless given."""
    fields: dict[str, float] = dict.fromkeys(JitterBufferStats.__dataclass_fields__, 0)
    fields.update(frame_ms=20, **counts)
    return JitterBufferStats(**fields)  # type: ignore[arg-type]


# RFC 3550 interarrival jitter (section 6.4.1)


def test_interarrival_jitter_matches_hand_computed_series():
    stats = CallStats()
    # sent every 20 ms (960 units); transit differences D = +5, -7, +2, 0 ms
    arrivals = [0.100, 0.125, 0.138, 0.160, 0.180]
    # J in timestamp units, J += (|D| - J) / 16, with |D| = 240, 336, 96, 0:
    #   15, 15 + 321/16 = 35.0625, 35.0625 + 60.9375/16 = 38.87109375,
    #   38.87109375 * 15/16 = 36.441650390625; ms = units / 48
    expected_units = [0.0, 15.0, 35.0625, 38.87109375, 36.441650390625]
    for index, (at, units) in enumerate(zip(arrivals, expected_units, strict=True)):
        stats.record_received(index, index * FRAME_SAMPLES, 100, at)
        assert stats.snapshot(at).jitter_ms == pytest.approx(units / 48, abs=1e-9)


def test_jitter_spans_timestamp_wraparound_and_ignores_arrival_order_of_seq():
    stats = CallStats()
    start = 2**32 - FRAME_SAMPLES
    stats.record_received(10, start, 100, 1.000)
    stats.record_received(11, 0, 100, 1.020)  # timestamp wrapped: still 20 ms later
    assert stats.snapshot(1.02).jitter_ms == pytest.approx(0.0, abs=1e-9)


def test_jitter_restarts_with_a_restarted_sender():
    stats = CallStats()
    for index in range(10):
        stats.record_received(index, index * FRAME_SAMPLES, 100, 1.0 + index * 0.02)
    # new sender: far sequence numbers and an unrelated timestamp origin
    stats.record_received(30_000, 7, 100, 1.3)
    stats.record_received(30_001, 7 + FRAME_SAMPLES, 100, 1.32)
    assert stats.snapshot(1.4).jitter_ms == pytest.approx(0.0, abs=1e-9)


# RFC 3550 loss (appendix A.1 and A.3)


def test_loss_counts_across_sequence_wraparound():
    stats = CallStats()
    seqs = [s % 65536 for s in range(65530, 65546) if s % 65536 not in (65533, 2, 5)]
    for index, seq in enumerate(seqs):
        stats.record_received(seq, index * FRAME_SAMPLES, 100, index * 0.02)
    snapshot = stats.snapshot(1.0)
    assert (snapshot.packets_received, snapshot.packets_lost) == (13, 3)
    assert snapshot.loss_percent == pytest.approx(100 * 3 / 16)


def test_reordering_across_wraparound_is_not_loss():
    tracker = SequenceTracker()
    for seq in (65534, 0, 65535, 1):
        assert tracker.update(seq)
    assert (tracker.expected, tracker.received, tracker.lost) == (4, 4, 0)


def test_duplicates_count_as_received_and_loss_never_goes_negative():
    tracker = SequenceTracker()
    for seq in (1, 2, 2, 2, 3):
        tracker.update(seq)
    assert (tracker.expected, tracker.received, tracker.lost) == (3, 5, 0)


def test_sender_restart_keeps_earlier_counts():
    tracker = SequenceTracker()
    for seq in (100, 101, 103):  # 102 lost
        tracker.update(seq)
    assert not tracker.update(20_000)  # a jump: held back until confirmed
    assert tracker.update(20_001)  # confirmed: a new stream starts here
    tracker.update(20_002)
    assert tracker.restarts == 1
    assert (tracker.expected, tracker.received, tracker.lost) == (4 + 2, 3 + 2, 1)


# bitrate, RTT, level


def test_bitrates_include_ip_and_udp_headers_over_the_window():
    stats = CallStats()
    for index in range(150):  # 50 packets/s of 100 bytes for 3 s
        at = 0.005 + index * 0.02
        stats.record_sent(100, at)
        stats.record_received(index, index * FRAME_SAMPLES, 100, at)
    snapshot = stats.snapshot(3.0)
    # window [1.0, 3.0): 100 packets of 100 + 28 bytes in 2 s
    expected_kbps = 100 * (100 + IPV4_UDP_OVERHEAD_BYTES) * 8 / 2 / 1000
    assert expected_kbps == 51.2
    assert snapshot.tx_kbps == pytest.approx(expected_kbps)
    assert snapshot.rx_kbps == pytest.approx(expected_kbps)
    assert snapshot.packets_sent == snapshot.packets_received == 150
    # the window slides: 2 s after the last packet the rate is 0
    assert stats.snapshot(5.1).tx_kbps == 0.0


def test_bitrate_is_right_before_the_window_is_full():
    stats = CallStats()
    assert stats.snapshot(0.0).tx_kbps == 0.0
    for index in range(25):  # the first half second of a call: 50 packets/s of 100 bytes
        stats.record_sent(100, 0.005 + index * 0.02)
    # buckets [0, 0.5) are complete: 25 packets of 128 bytes in 0.5 s, not spread over 2 s
    assert stats.snapshot(0.5).tx_kbps == pytest.approx(25 * 128 * 8 / 0.5 / 1000)
    assert stats.snapshot(0.05).tx_kbps == 0.0  # no complete bucket yet


def reference_kbps(sizes: list[tuple[float, int]], now: float) -> float:
    """The bitrate by its definition: complete buckets of the window before ``now``."""
    current = math.floor(now * BITRATE_BUCKETS_PER_S)
    if not sizes or current <= (first := math.floor(sizes[0][0] * BITRATE_BUCKETS_PER_S)):
        return 0.0
    span = BITRATE_WINDOW_S * BITRATE_BUCKETS_PER_S
    total = sum(
        size
        for at, size in sizes
        if current - span <= math.floor(at * BITRATE_BUCKETS_PER_S) < current
    )
    return total * 8 / (min(span, current - first) / BITRATE_BUCKETS_PER_S) / 1000.0


@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 0.02, 0.02, 0.02, 0.1, 1.5, 3.0]), st.integers(0, 1500)),
        max_size=300,
    ),
    st.floats(0.0, 4.0),
)
def test_bitrate_meter_keeps_its_definition(steps, ahead):
    # with ``now`` never going back, the running total gives the definition's sum
    meter, sizes, now = BitrateMeter(), [], 10.0
    for step, size in steps:
        now += step
        meter.add(size, now)
        sizes.append((now, size))
        assert meter.kbps(now) == pytest.approx(reference_kbps(sizes, now))
    assert meter.kbps(now + ahead) == pytest.approx(reference_kbps(sizes, now + ahead))


def test_bitrate_meter_survives_a_clock_that_went_back():
    meter = BitrateMeter()
    meter.add(1000, 1.05)  # bucket 10, the first
    meter.add(1000, 0.95)  # bucket 9, after a later one
    # both buckets are complete at 1.15 s, over the 0.1 s since the first
    assert meter.kbps(1.15) == pytest.approx(2000 * 8 / 0.1 / 1000)
    assert meter.kbps(1.25) == pytest.approx(2000 * 8 / 0.2 / 1000)


def test_bitrate_overhead_is_configurable_for_ipv6():
    stats = CallStats(overhead_bytes=IPV6_UDP_OVERHEAD_BYTES)
    for index in range(150):
        stats.record_sent(100, 0.005 + index * 0.02)
    assert stats.snapshot(3.0).tx_kbps == pytest.approx(100 * 148 * 8 / 2 / 1000)


def test_rtt_latest_and_smoothed():
    stats = CallStats()
    assert stats.snapshot(0.0).rtt_ms is None
    stats.record_pong(1.0, 1.1)
    stats.record_pong(2.0, 2.25, peer_hold_s=0.05)  # 200 ms once the hold is removed
    stats.record_pong(3.0, 2.9)  # negative: ignored
    snapshot = stats.snapshot(3.0)
    assert snapshot.rtt_latest_ms == pytest.approx(200.0)
    assert snapshot.rtt_ms == pytest.approx(100.0 + (200.0 - 100.0) / 8)


@pytest.mark.parametrize(
    ("rms", "dbfs"),
    [
        pytest.param(1.0, 0.0, id="full-scale"),
        pytest.param(0.5, 20 * math.log10(0.5), id="half"),
        pytest.param(0.0, MIN_AUDIO_LEVEL_DBFS, id="silence"),
        pytest.param(1e-9, MIN_AUDIO_LEVEL_DBFS, id="below-floor"),
    ],
)
def test_audio_level_in_dbfs(rms, dbfs):
    stats = CallStats()
    assert stats.snapshot(0.0).audio_level_dbfs is None
    stats.record_audio_level(rms)
    assert stats.snapshot(0.0).audio_level_dbfs == pytest.approx(dbfs)
    assert stats.snapshot(0.0).input_level_dbfs is None
    stats.record_input_level(rms)
    assert stats.snapshot(0.0).input_level_dbfs == pytest.approx(dbfs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda s: s.record_audio_level(-0.1), "RMS level", id="rms"),
        pytest.param(lambda s: s.record_audio_level(math.nan), "RMS level", id="nan"),
        pytest.param(lambda s: s.record_sent(-1, 0.0), "datagram size", id="size"),
        pytest.param(lambda s: s.record_received(70_000, 0, 10, 0.0), "out of range", id="seq"),
    ],
)
def test_bad_arguments_are_rejected(call, message):
    with pytest.raises(LocalProtocolError, match=message):
        call(CallStats())


# the snapshot


def test_snapshot_takes_playout_counters_and_is_json_ready():
    stats = CallStats()
    stats.record_pong(0.0, 0.040)
    counters = playout(
        played=90,
        fec_recovered=4,
        redundancy_recovered=1,
        concealed=5,
        concealment_events=5,
        late_dropped=2,
        duplicates=3,
        buffered_delay_ms=40.0,
        target_delay_ms=40.0,
    )
    snapshot = stats.snapshot(1.0, playout=counters, packets_rejected=7)
    assert (snapshot.packets_late, snapshot.packets_duplicate) == (2, 3)
    assert snapshot.packets_rejected == 7
    assert snapshot.concealed_ms == 100.0
    assert (snapshot.fec_recovered, snapshot.fec_recovered_ms) == (4, 80.0)
    assert snapshot.redundancy_recovered == 1
    assert snapshot.jitter_buffer_ms == snapshot.jitter_buffer_target_ms == 40.0
    # E-model inputs: RTT/2 + jitter buffer + one frame; loss heard = 5 of 100
    assert snapshot.one_way_delay_ms == pytest.approx(20.0 + 40.0 + 20.0)
    assert snapshot.effective_loss_percent == pytest.approx(5.0)
    # five single-frame runs: slightly less bursty than random (BurstR < 1)
    burst = emodel.burst_ratio(100, 5, 5)
    assert burst == pytest.approx(1 / (5 / 95 + 5 / 5))
    assert snapshot.r_factor == pytest.approx(emodel.r_factor(80.0, 5.0, burst_ratio=burst))
    assert snapshot.mos == pytest.approx(emodel.mos_from_r(snapshot.r_factor))
    data = snapshot.as_dict()
    assert set(data) >= {
        "packets_sent",
        "packets_received",
        "packets_lost",
        "packets_late",
        "packets_duplicate",
        "packets_rejected",
        "loss_percent",
        "jitter_ms",
        "rtt_ms",
        "jitter_buffer_ms",
        "concealed_ms",
        "fec_recovered",
        "tx_kbps",
        "rx_kbps",
        "audio_level_dbfs",
        "input_level_dbfs",
        "mos",
        "r_factor",
    }
    assert json.loads(json.dumps(data)) == data


def test_snapshot_fed_by_a_jitter_buffer():
    buffer = JitterBuffer()
    stats = CallStats()
    for index in range(100):
        at = 0.005 + index * 0.02
        if index != 50:
            arrival = buffer.push(index, index * FRAME_SAMPLES, b"x" * 80, at)
            stats.record_received(arrival.seq, arrival.timestamp, 92, arrival.arrival_time)
        buffer.pop(0.02 + index * 0.02)
    snapshot = stats.snapshot(2.0, playout=buffer.snapshot())
    assert (snapshot.packets_received, snapshot.packets_lost) == (99, 1)
    assert snapshot.fec_recovered == 1
    assert snapshot.concealed_ms == 20.0  # the slot waited for before FEC
    assert snapshot.jitter_ms == pytest.approx(0.0, abs=1e-6)
    assert snapshot.effective_loss_percent == pytest.approx(1.0)  # 1 of 100 slots
    assert 4.2 < snapshot.mos < 4.3


def test_rating_follows_its_inputs_from_snapshot_to_snapshot():
    stats = CallStats()
    stats.record_pong(0.0, 0.100)
    counters = playout(played=100, buffered_delay_ms=40.0)
    first = stats.snapshot(1.0, playout=counters)
    assert stats.snapshot(1.1, playout=counters).r_factor == first.r_factor
    stats.record_pong(1.0, 1.300)  # the smoothed RTT moves: so does the delay, so does R
    moved = stats.snapshot(1.4, playout=counters)
    assert moved.one_way_delay_ms > first.one_way_delay_ms
    assert moved.r_factor == emodel.r_factor(moved.one_way_delay_ms, 0.0)
    lossy = stats.snapshot(1.5, playout=playout(played=90, concealed=10, concealment_events=5))
    burst = emodel.burst_ratio(100, 10, 5)
    assert lossy.r_factor == emodel.r_factor(lossy.one_way_delay_ms, 10.0, burst_ratio=burst)


def test_perfect_conditions_give_mos_near_the_top_of_the_scale():
    stats = CallStats()
    stats.record_pong(0.0, 0.020)
    snapshot = stats.snapshot(1.0, playout=playout(played=1000, buffered_delay_ms=20.0))
    assert snapshot.effective_loss_percent == 0.0
    assert 4.3 <= snapshot.mos <= 4.5


# the E-model (ITU-T G.107)


def test_default_connection_rates_93_2():
    # G.107 section 7.7: all defaults give R = 93.2
    assert emodel.r_factor(0.0, 0.0) == pytest.approx(93.2, abs=0.01)
    assert emodel.simultaneous_impairment(0.0) == pytest.approx(1.41, abs=0.01)
    assert emodel.BASIC_RATIO == pytest.approx(94.77, abs=0.01)


@pytest.mark.parametrize(
    ("r", "mos"),
    [
        # MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6, worked by hand
        pytest.param(50.0, 1 + 1.75 - 0.175, id="R50"),  # 50*(-10)*50*7e-6 = -0.175
        pytest.param(80.0, 1 + 2.8 + 0.224, id="R80"),  # 80*20*20*7e-6 = 0.224
        pytest.param(93.2, 1 + 3.262 + 0.147285824, id="R93.2"),  # 93.2*33.2*6.8*7e-6
        pytest.param(0.0, 1.0, id="R0"),
        pytest.param(-5.0, 1.0, id="negative"),
        pytest.param(100.0, 4.5, id="R100"),
        pytest.param(120.0, 4.5, id="above-100"),
    ],
)
def test_r_to_mos_per_g107_annex_b(r, mos):
    assert emodel.mos_from_r(r) == pytest.approx(mos, abs=1e-12)


def test_effective_equipment_impairment_by_hand():
    # Ie = 0, Bpl = 25.1, Ppl = 10 %, random: 95 * 10 / (10 + 25.1)
    assert emodel.effective_equipment_impairment(10.0) == pytest.approx(950 / 35.1)
    # bursty (BurstR = 2): 95 * 10 / (5 + 25.1)
    assert emodel.effective_equipment_impairment(10.0, 2.0) == pytest.approx(950 / 30.1)


def test_mos_decreases_monotonically_with_loss():
    values = [emodel.mos_from_r(emodel.r_factor(40.0, loss / 2)) for loss in range(0, 101)]
    assert all(a > b for a, b in itertools.pairwise(values))


def test_mos_decreases_monotonically_with_delay():
    values = [emodel.mos_from_r(emodel.r_factor(float(d), 1.0)) for d in range(0, 801, 5)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[0] > 4.2 > 3.0 > values[-1]


def test_bursty_loss_rates_worse_than_random_loss():
    assert emodel.burst_ratio(1000, 100, 90) == pytest.approx(1.0)  # p = 0.1, q = 0.9
    assert emodel.burst_ratio(1000, 100, 10) == pytest.approx(9.0)  # 1 / (10/900 + 0.1)
    assert emodel.burst_ratio(1000, 0, 0) == 1.0
    random_loss = emodel.r_factor(60.0, 5.0, burst_ratio=1.0)
    bursty_loss = emodel.r_factor(60.0, 5.0, burst_ratio=9.0)
    assert bursty_loss < random_loss
