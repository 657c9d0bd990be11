"""Jitter buffer with a fake clock and scripted arrivals: no sockets, no audio."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.exceptions import LocalProtocolError
from pqcall.media.jitter import (
    MAX_CONCEALMENT_MS,
    MAX_QUEUED_PACKETS,
    MAX_TARGET_DELAY_MS,
    MIN_TARGET_DELAY_MS,
    JitterBuffer,
    PacketArrival,
    PacketFate,
    PlayoutAction,
    PlayoutDecision,
    PlayoutState,
)

FRAME_S = 0.020
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
PLAY = PlayoutAction.PLAY
CONCEAL = PlayoutAction.CONCEAL
SILENCE = PlayoutAction.SILENCE


def frame(seq: int) -> bytes:
    """A recognisable payload for frame ``seq``."""
    return b"frame-%d" % seq


@dataclass(frozen=True)
class Sent:
    """One packet as the network delivers it."""

    seq: int
    timestamp: int
    at: float
    redundant: bytes | None = None


def stream(
    count: int,
    *,
    first: int = 0,
    first_ts: int = 0,
    start: float = 0.005,
    lost: Iterable[int] = (),
    delay: dict[int, float] | None = None,
    redundancy: bool = False,
) -> list[Sent]:
    """``count`` frames sent every 20 ms from ``start``; ``lost``/``delay`` by index."""
    lost = set(lost)
    delay = delay or {}
    packets = []
    for index in range(count):
        if index in lost:
            continue
        seq = (first + index) % 65536
        packets.append(
            Sent(
                seq=seq,
                timestamp=(first_ts + index * FRAME_SAMPLES) % 2**32,
                at=start + index * FRAME_S + delay.get(index, 0.0),
                redundant=frame((seq - 1) % 65536) if redundancy and index else None,
            )
        )
    return packets


def ticks(start: float, count: int) -> list[float]:
    """Playout clock: ``count`` pops every 20 ms from ``start``."""
    return [start + k * FRAME_S for k in range(count)]


def run(
    buffer: JitterBuffer,
    packets: Sequence[Sent],
    pops: Sequence[float],
    *,
    arrivals: list[PacketArrival] | None = None,
    after_pop: Callable[[float], None] | None = None,
) -> list[PlayoutDecision]:
    """Push and pop in time order (a push at the same instant goes first)."""
    events = [(p.at, 0, n) for n, p in enumerate(packets)] + [(t, 1, -1) for t in pops]
    events.sort()
    decisions = []
    for at, kind, n in events:
        if kind == 1:
            decisions.append(buffer.pop(at))
            if after_pop is not None:
                after_pop(at)
            continue
        packet = packets[n]
        arrival = buffer.push(
            packet.seq, packet.timestamp, frame(packet.seq), at, redundant=packet.redundant
        )
        if arrivals is not None:
            arrivals.append(arrival)
    return decisions


def played(decisions: Iterable[PlayoutDecision]) -> list[int | None]:
    return [d.seq for d in decisions if d.action is PLAY]


def test_steady_stream_plays_every_frame_at_minimum_delay():
    buffer = JitterBuffer()
    decisions = run(buffer, stream(500), ticks(0.020, 500))
    assert [d.action for d in decisions] == [PLAY] * 500
    assert played(decisions) == list(range(500))
    assert [d.payload for d in decisions[:2]] == [frame(0), frame(1)]
    stats = buffer.snapshot()
    assert stats.played == 500
    assert stats.target_delay_ms == 20.0
    assert stats.buffered_delay_ms == 20.0
    assert stats.mean_delay_ms == pytest.approx(15.0)
    assert stats.concealed == stats.late_dropped == stats.shrink_dropped == 0


def test_single_loss_recovered_by_fec_when_next_packet_is_in_time():
    buffer = JitterBuffer(min_target_delay_ms=40)
    decisions = run(buffer, stream(30, lost=[10]), ticks(0.020, 30))
    recovered = [d for d in decisions if d.seq == 10]
    assert recovered == [PlayoutDecision(PlayoutAction.FEC, frame(11), 10)]
    assert played(decisions) == [s for s in range(29) if s != 10]
    stats = buffer.snapshot()
    assert (stats.fec_recovered, stats.concealed, stats.skipped) == (1, 0, 0)


def test_single_loss_conceals_when_next_packet_is_not_there_in_time():
    # one frame of buffering: packet 11 arrives after the slot of 10 has passed
    buffer = JitterBuffer(use_fec=False)
    decisions = run(buffer, stream(30, lost=[10]), ticks(0.020, 30))
    assert decisions[10] == PlayoutDecision(CONCEAL)
    assert decisions[11] == PlayoutDecision(PLAY, frame(11), 11, skipped=1)
    stats = buffer.snapshot()
    assert (stats.concealed, stats.skipped, stats.fec_recovered) == (1, 1, 0)
    assert stats.buffered_delay_ms == 20.0


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"use_fec": False}, id="fec-off"),
        pytest.param({"has_fec": lambda payload: False}, id="no-lbrr-in-packet"),
    ],
)
def test_single_loss_conceals_without_fec(options):
    buffer = JitterBuffer(min_target_delay_ms=40, **options)
    decisions = run(buffer, stream(30, lost=[10]), ticks(0.020, 30))
    assert [d for d in decisions if d.seq == 10] == [PlayoutDecision(CONCEAL, seq=10)]


def test_redundant_copy_recovers_a_lost_frame():
    buffer = JitterBuffer(min_target_delay_ms=40)
    decisions = run(buffer, stream(30, lost=[10], redundancy=True), ticks(0.020, 30))
    assert [d for d in decisions if d.seq == 10] == [
        PlayoutDecision(PlayoutAction.REDUNDANT, frame(10), 10)
    ]
    assert buffer.snapshot().redundancy_recovered == 1


def test_first_loss_grows_the_buffer_so_later_losses_use_fec_at_once():
    buffer = JitterBuffer()
    decisions = run(buffer, stream(100, lost=[10, 50]), ticks(0.020, 101))
    # first loss: found too late, so the slot is concealed while waiting; once
    # packet 11 shows 10 is lost, the buffer grows by a frame and uses its FEC
    assert decisions[10:13] == [
        PlayoutDecision(CONCEAL),
        PlayoutDecision(PlayoutAction.FEC, frame(11), 10),
        PlayoutDecision(PLAY, frame(11), 11),
    ]
    # second loss: the next packet is already queued, recovered in its own slot
    assert decisions[51] == PlayoutDecision(PlayoutAction.FEC, frame(51), 50)
    stats = buffer.snapshot()
    assert (stats.fec_recovered, stats.concealed) == (2, 1)
    assert stats.target_delay_ms == 40.0


def test_reorder_within_target_is_played_in_order():
    buffer = JitterBuffer(min_target_delay_ms=60)
    # 11 overtakes 10; 20 arrives after 21 and 22 but before its playout time
    packets = stream(40, delay={10: 0.015, 20: 0.041})
    decisions = run(buffer, packets, ticks(0.020, 40))
    assert played(decisions) == list(range(40 - 2))
    assert all(d.action is PLAY for d in decisions[2:])
    stats = buffer.snapshot()
    assert stats.concealed == stats.late_dropped == 0


def test_duplicates_are_counted_and_played_once():
    buffer = JitterBuffer()
    original = stream(30)
    again_soon = [replace(p, at=p.at + 0.001) for p in original]
    again_late = [replace(p, at=p.at + 0.100) for p in original[:5]]
    decisions = run(buffer, original + again_soon + again_late, ticks(0.020, 30))
    assert played(decisions) == list(range(30))
    assert buffer.snapshot().duplicates == 35


def test_late_packet_is_dropped_and_counted():
    buffer = JitterBuffer()
    arrivals: list[PacketArrival] = []
    decisions = run(buffer, stream(30, delay={10: 0.100}), ticks(0.020, 30), arrivals=arrivals)
    assert [a.fate for a in arrivals if a.seq == 10] == [PacketFate.LATE]
    # the slot of 10 was waited for, then recovered from 11's FEC: one frame of growth
    assert decisions[10:12] == [
        PlayoutDecision(CONCEAL),
        PlayoutDecision(PlayoutAction.FEC, frame(11), 10),
    ]
    assert played(decisions) == [s for s in range(29) if s != 10]
    stats = buffer.snapshot()
    assert stats.late_dropped == 1
    # the late arrival is evidence of jitter: the target now covers its 100 ms
    assert stats.target_delay_ms >= 100.0


def test_burst_loss_conceals_each_lost_frame_once():
    buffer = JitterBuffer(min_target_delay_ms=40)
    lost = range(10, 15)
    decisions = run(buffer, stream(60, lost=lost), ticks(0.020, 60))
    assert decisions[0] == PlayoutDecision(SILENCE)  # filling to two frames
    assert played(decisions) == [s for s in range(59) if s not in lost]
    seqs = [d.seq for d in decisions if d.seq is not None]
    assert seqs == sorted(seqs)
    stats = buffer.snapshot()
    # each lost frame is rendered (concealed/FEC) or passed over after waiting
    lost_slots = [d for d in decisions[1:] if d.action is not PLAY]
    assert len(lost_slots) == 5
    assert stats.concealment_events == 1
    assert stats.fec_recovered == 1  # the last lost frame, from packet 15
    assert stats.late_dropped == 0


def test_jitter_spike_raises_target_fast_and_settles_within_10_s():
    buffer = JitterBuffer()
    # 2 s steady; then a 300 ms stall: frames sent in it arrive together at its end
    stall_start, stall_end = 2.0, 2.3
    delay = {}
    for index in range(1000):
        sent = 0.005 + index * FRAME_S
        if stall_start <= sent < stall_end:
            delay[index] = stall_end - sent
    packets = stream(1000, delay=delay)  # 20 s
    pops = ticks(0.020, 1000)
    targets, levels, times = [], [], []

    def observe(at: float) -> None:
        stats = buffer.snapshot()
        times.append(at)
        targets.append(stats.target_delay_ms)
        levels.append(stats.buffered_delay_ms)

    run(buffer, packets, pops, after_pop=observe)
    after_spike = next(i for i, t in enumerate(times) if t > stall_end)
    # fast up: the flush raises the target at once, to absorb most of the stall
    assert targets[after_spike] >= 200.0
    # slow down: back to one frame within 10 s of the last late packet
    settled_target = max(i for i, t in enumerate(targets) if t != 20.0) + 1
    settled_level = max(i for i, level in enumerate(levels) if level != 20.0) + 1
    assert times[settled_target] - stall_end < 10.0
    assert times[settled_level] - stall_end < 10.0
    assert targets[-1] == levels[-1] == 20.0
    # and it did not settle instantly either (slow down)
    assert times[settled_target] - stall_end > 2.0


# playout phase: where packets land relative to the playout clock's ticks

STEADY_AFTER_S = 1.0  # the first second (filling, the first loss growing it) is start-up

PHASES = [
    pytest.param((0.0002, 0.0010), id="just-after-the-tick"),
    pytest.param((-0.0010, -0.0002), id="just-before-the-tick"),
    # the race: timer noise puts each packet on either side of the tick
    pytest.param((-0.0010, 0.0010), id="straddling-the-tick"),
    pytest.param((0.0095, 0.0105), id="half-a-frame-after"),
]


def lossy_stream_at_phase(
    phase: tuple[float, float], *, seed: int, count: int = 1500, loss: float = 0.10
) -> tuple[list[Sent], int]:
    """Frames sent every 20 ms, each arriving at a tick plus a random offset in ``phase``."""
    rng = random.Random(seed)
    packets, lost = [], 0
    for index in range(count):
        offset = rng.uniform(*phase)  # drawn for every frame, so the loss pattern is shared
        if rng.random() < loss:
            lost += 1
            continue
        packets.append(Sent(index, index * FRAME_SAMPLES, 0.100 + index * FRAME_S + offset))
    return packets, lost


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("use_fec", [True, False], ids=["fec", "no-fec"])
@pytest.mark.parametrize("seed", [1, 2])
def test_playout_phase_never_costs_received_frames(phase, use_fec, seed):
    # regression: the buffer shrank on its instantaneous level, so a packet that
    # came just before the tick looked like an extra frame and one that came just
    # after looked like an underrun: received frames were discarded, then concealed
    buffer = JitterBuffer(use_fec=use_fec)
    packets, lost = lossy_stream_at_phase(phase, seed=seed)
    steady: dict[str, float] = {}

    def note_start_up_end(at: float) -> None:
        if at >= STEADY_AFTER_S and not steady:
            steady.update(buffer.snapshot().as_dict())

    run(buffer, packets, ticks(0.100, 1510), after_pop=note_start_up_end)
    stats = buffer.snapshot()
    assert stats.shrink_dropped == steady["shrink_dropped"]  # none discarded for delay
    assert stats.late_dropped == 0
    # every lost frame is rendered once (recovered or concealed), few others are concealed
    rendered_lost = stats.concealed + stats.fec_recovered
    assert lost <= rendered_lost <= 1.1 * lost + 2
    if use_fec:
        assert stats.fec_recovered >= 0.75 * lost


def test_playout_phase_changes_only_the_delay():
    # the same losses at each phase: the same concealment, within a few frames
    outcomes = []
    for phase in PHASES:
        buffer = JitterBuffer()
        packets, _ = lossy_stream_at_phase(cast(tuple[float, float], phase.values[0]), seed=3)
        run(buffer, packets, ticks(0.100, 1510))
        stats = buffer.snapshot()
        outcomes.append((stats.concealed, stats.fec_recovered, stats.shrink_dropped))
    concealed = [c for c, _, _ in outcomes]
    recovered = [r for _, r, _ in outcomes]
    assert max(concealed) - min(concealed) <= 5
    assert max(recovered) - min(recovered) <= 5
    assert max(d for _, _, d in outcomes) <= 1  # at most the start-up backlog


def flood_in_window(n: int) -> int:
    return 11 + (n * 7919) % 99  # anywhere in the 2 s ahead of the playout point


def flood_far_future(n: int) -> int:
    return 5000 + (n * 7919) % 3000  # scattered jumps: never confirmed


def flood_far_future_in_order(n: int) -> int:
    return (30_000 + n) % 65536  # confirmed as a new stream, again and again


@pytest.mark.parametrize("cap", [16, MAX_QUEUED_PACKETS])
@pytest.mark.parametrize("pattern", [flood_in_window, flood_far_future, flood_far_future_in_order])
def test_flood_of_future_sequence_numbers_stays_under_the_cap(pattern, cap):
    buffer = JitterBuffer(max_queued_packets=cap)
    run(buffer, stream(10), ticks(0.020, 10))
    for n in range(20_000):
        seq = pattern(n)
        buffer.push(seq, seq * FRAME_SAMPLES, b"flood", 0.200)
        assert buffer.snapshot().queued_packets <= cap
    # the real stream plays again afterwards (after a reset, if one is needed)
    later = stream(300, first=10, first_ts=10 * FRAME_SAMPLES, start=0.205)
    decisions = run(buffer, later, ticks(0.220, 300))
    tail = [(d.seq, d.payload) for d in decisions[-10:] if d.seq is not None]
    first_seq = tail[0][0]
    assert tail == [(seq, frame(seq)) for seq in range(first_seq, first_seq + 10)]
    assert buffer.snapshot().queued_packets <= cap


def test_sender_restart_with_sequence_jump_resets_and_resumes():
    buffer = JitterBuffer()
    before = stream(50, first=100, first_ts=1_000_000)
    after = stream(50, first=40_000, first_ts=5_000, start=0.005 + 50 * FRAME_S)
    decisions = run(buffer, before + after, ticks(0.020, 100))
    assert played(decisions[:50]) == list(range(100, 150))
    # the first new packet is held for probation, the second confirms the restart
    assert decisions[50] == PlayoutDecision(CONCEAL)
    assert played(decisions[51:]) == list(range(40_001, 40_050))
    stats = buffer.snapshot()
    assert stats.resets == 1
    assert stats.stray_dropped == 1
    # a straggler of the old stream is late, and does not reset again
    fate = buffer.push(149, 1_000_000 + 49 * FRAME_SAMPLES, b"old", 2.1)
    assert fate.fate is PacketFate.LATE
    assert buffer.snapshot().resets == 1


def test_timestamp_going_backwards_resets_at_once():
    buffer = JitterBuffer()
    before = stream(50, first_ts=900_000)
    after = stream(50, first=50, first_ts=0, start=0.005 + 50 * FRAME_S)
    decisions = run(buffer, before + after, ticks(0.020, 100))
    assert played(decisions) == list(range(100))
    assert buffer.snapshot().resets == 1
    assert buffer.snapshot().stray_dropped == 0


def test_long_silence_does_not_grow_the_delay():
    buffer = JitterBuffer()
    talk = stream(50)
    # 5 s of nothing (mute or DTX); sequence numbers continue, timestamps follow time
    resume = stream(50, first=50, first_ts=300 * FRAME_SAMPLES, start=0.005 + 300 * FRAME_S)
    decisions = run(buffer, talk + resume, ticks(0.020, 350))
    gap = decisions[50:300]
    concealed = MAX_CONCEALMENT_MS // 20
    assert [d.action for d in gap] == [CONCEAL] * concealed + [SILENCE] * (250 - concealed)
    assert played(decisions[300:]) == list(range(50, 100))
    stats = buffer.snapshot()
    assert stats.buffered_delay_ms == stats.target_delay_ms == 20.0
    assert stats.resets == 0


def test_long_silence_with_sequence_numbers_counting_on():
    buffer = JitterBuffer()
    talk = stream(50)
    resume = stream(50, first=300, first_ts=300 * FRAME_SAMPLES, start=0.005 + 300 * FRAME_S)
    decisions = run(buffer, talk + resume, ticks(0.020, 350))
    assert decisions[300] == PlayoutDecision(PLAY, frame(300), 300, skipped=250)
    assert played(decisions[300:]) == list(range(300, 350))
    assert buffer.snapshot().buffered_delay_ms == 20.0


def test_sequence_and_timestamp_wraparound():
    buffer = JitterBuffer(min_target_delay_ms=40)
    first, first_ts = 65_500, 2**32 - 50 * FRAME_SAMPLES
    decisions = run(
        buffer,
        stream(100, first=first, first_ts=first_ts, lost=[40]),
        ticks(0.020, 101),
    )
    expected = [(first + i) % 65536 for i in range(100)]
    assert [d.seq for d in decisions if d.seq is not None] == expected
    assert next(d for d in decisions if d.seq == (first + 40) % 65536).action is PlayoutAction.FEC
    assert buffer.snapshot().resets == 0


def test_silence_before_the_first_packet():
    buffer = JitterBuffer()
    states = [buffer.state]
    assert buffer.pop(0.0) == PlayoutDecision(SILENCE)
    buffer.push(7, 0, b"x", 0.01)
    states.append(buffer.state)
    assert buffer.pop(0.02) == PlayoutDecision(PLAY, b"x", 7)
    states.append(buffer.state)
    assert states == [PlayoutState.AWAITING_PACKETS, PlayoutState.FILLING, PlayoutState.PLAYING]


def test_filling_waits_for_the_target_at_the_start_of_a_talk_spurt():
    buffer = JitterBuffer(min_target_delay_ms=60)
    decisions = run(buffer, stream(10), ticks(0.020, 10))
    assert [d.action for d in decisions[:2]] == [SILENCE, SILENCE]
    assert played(decisions) == list(range(8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"frame_ms": 25}, "frame duration must be one of", id="frame"),
        pytest.param(
            {"min_target_delay_ms": 100, "max_target_delay_ms": 50},
            "target delay bounds must satisfy",
            id="bounds",
        ),
        pytest.param({"max_queued_packets": 1}, "at least 2 packets", id="cap"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, message):
    with pytest.raises(LocalProtocolError, match=message):
        JitterBuffer(**kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param((65536, 0, b"x", 0.0), "sequence number must fit in 16 bits", id="seq"),
        pytest.param((0, 2**32, b"x", 0.0), "timestamp must fit in 32 bits", id="ts"),
        pytest.param((0, 0, b"", 0.0), "payload must not be empty", id="payload"),
    ],
)
def test_push_rejects_bad_arguments(args, message):
    with pytest.raises(LocalProtocolError, match=message):
        JitterBuffer().push(*args)


def test_clock_must_not_go_back():
    buffer = JitterBuffer()
    buffer.pop(1.0)
    with pytest.raises(LocalProtocolError, match="now must not go back"):
        buffer.push(0, 0, b"x", 0.5)


# property: any arrival order, loss and duplication of N packets


@st.composite
def arrival_patterns(draw):
    count = draw(st.integers(min_value=1, max_value=80))
    frame_ms = draw(st.sampled_from([10, 20, 40, 60]))
    first = draw(st.integers(min_value=0, max_value=65535))
    arrivals = []
    for index in range(count):
        fate = draw(st.sampled_from(["ok", "ok", "ok", "lost", "dup"]))
        if fate == "lost":
            continue
        copies = 2 if fate == "dup" else 1
        for _ in range(copies):
            delay = draw(st.floats(min_value=0.0, max_value=0.5))
            arrivals.append((index * frame_ms / 1000 + delay, index))
    phase = draw(st.floats(min_value=0.0, max_value=0.06))
    options = {
        "max_queued_packets": draw(st.integers(min_value=2, max_value=64)),
        "min_target_delay_ms": draw(st.sampled_from([0, 10, 40, 100])),
        "use_fec": draw(st.booleans()),
    }
    redundancy = draw(st.booleans())
    return count, frame_ms, first, arrivals, phase, options, redundancy


@settings(max_examples=300, deadline=None)
@given(arrival_patterns())
def test_property_playout_is_ordered_unique_capped_and_counted(pattern):
    count, frame_ms, first, arrivals, phase, options, redundancy = pattern
    cap = options["max_queued_packets"]
    buffer = JitterBuffer(frame_ms, **options)
    frame_s = frame_ms / 1000
    pops = [phase + k * frame_s for k in range(count + 60)]
    events = sorted([(at, 0, index) for at, index in arrivals] + [(t, 1, -1) for t in pops])
    samples = 48 * frame_ms
    decisions: list[PlayoutDecision] = []
    for at, kind, index in events:
        if kind == 1:
            decisions.append(buffer.pop(at))
        else:
            seq = (first + index) % 65536
            copy = frame((seq - 1) % 65536) if redundancy and index else None
            buffer.push(seq, index * samples, frame(seq), at, redundant=copy)
        assert buffer.snapshot().queued_packets <= cap

    stats = buffer.snapshot()
    # one decision per pop, each counted once
    assert len(decisions) == len(pops)
    assert (
        stats.played + stats.fec_recovered + stats.redundancy_recovered + stats.concealed
    ) + stats.silence == len(pops)
    # decisions with a sequence number: strictly increasing, gaps are the skips
    indexes = [(d.seq - first) % 65536 for d in decisions if d.seq is not None]
    skips = [d.skipped for d in decisions if d.seq is not None]
    assert indexes == sorted(set(indexes))
    for before, after, skipped in zip(indexes, indexes[1:], skips[1:], strict=False):
        assert after - before - 1 == skipped
    assert stats.skipped + stats.shrink_dropped == sum(d.skipped for d in decisions)
    # a frame is played only if it was sent, and its payload is its own
    for d in decisions:
        if d.action is PLAY or d.action is PlayoutAction.REDUNDANT:
            assert d.seq is not None
            assert d.payload == frame(d.seq)
        elif d.action is PlayoutAction.FEC:
            assert d.seq is not None
            assert d.payload == frame((d.seq + 1) % 65536)
    # every pushed packet is accounted for exactly once
    assert len(arrivals) == (
        stats.duplicates
        + stats.late_dropped
        + stats.stray_dropped
        + stats.overflow_dropped
        + stats.played
        + stats.shrink_dropped
        + stats.flushed
        + stats.queued_packets
    )
    assert stats.resets == 0


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            st.integers(min_value=0, max_value=65535),
            st.integers(min_value=0, max_value=2**32 - 1),
            st.floats(min_value=0.0, max_value=3.0),
        ),
        st.tuples(st.just("pop"), st.just(0), st.just(0), st.floats(min_value=0.0, max_value=0.1)),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(min_value=2, max_value=32))
def test_property_any_input_is_absorbed_within_bounds(ops, cap):
    # arbitrary sequence numbers, timestamps and gaps: never raises, never grows
    buffer = JitterBuffer(max_queued_packets=cap)
    now, pushes, pops = 0.0, 0, 0
    for kind, seq, timestamp, gap in ops:
        now += gap
        if kind == "push":
            buffer.push(seq, timestamp, b"p", now)
            pushes += 1
        else:
            buffer.pop(now)
            pops += 1
        stats = buffer.snapshot()
        assert stats.queued_packets <= cap
        assert MIN_TARGET_DELAY_MS <= stats.target_delay_ms <= MAX_TARGET_DELAY_MS
    stats = buffer.snapshot()
    rendered = stats.played + stats.fec_recovered + stats.redundancy_recovered + stats.concealed
    assert rendered + stats.silence == pops
    assert pushes == (
        stats.duplicates
        + stats.late_dropped
        + stats.stray_dropped
        + stats.overflow_dropped
        + stats.played
        + stats.shrink_dropped
        + stats.flushed
        + stats.queued_packets
    )
